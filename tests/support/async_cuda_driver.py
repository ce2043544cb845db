"""Drives the native core's CUDA path against the asynchronous stand-in runtime
(tests/support/async_cudart.cpp), in a process of its own: the runtime is chosen once per
process, through FLASHTENSORS_CUDART.

    FLASHTENSORS_CUDART=libasync_cudart.so python async_cuda_driver.py SCENARIO DATA_FILE ROUNDS FIRST_SEED

Each round seeds the stand-in's delays and this script's plans with its own seed.
After every load: bit-exact bytes (and untouched bytes around them), nothing left
queued, no stream or event left alive, and no violation counted by the stand-in.
Prints "ok" when every round passed.
"""

import ctypes
import os
import random
import sys
import threading

from flashtensors import _native

C = cuda = None  # the core and the stand-in runtime, once main() has loaded them
FILL = 0xA5  # what cudaMalloc'ed memory holds before a load


class Buffer:
    """Device memory (cudaMalloc on `device`) or host memory (device -1), with the bytes
    it should hold: FILL, except where ops wrote."""

    def __init__(self, device: int, size: int):
        self.device, self.size = device, size
        if device < 0:
            self._host = ctypes.create_string_buffer(bytes([FILL]) * size, size)
            self.address = ctypes.addressof(self._host)
        else:
            p = ctypes.c_void_p()
            caller = current_device()
            assert cuda.cudaSetDevice(device) == 0 and cuda.cudaMalloc(ctypes.byref(p), size) == 0
            assert cuda.cudaSetDevice(caller) == 0
            self.address = p.value
        self.expected = bytearray([FILL]) * size

    def bytes(self) -> bytes:
        return ctypes.string_at(self.address, self.size)

    def free(self):
        if self.device >= 0:
            assert cuda.cudaFree(ctypes.c_void_p(self.address)) == 0


def current_device() -> int:
    d = ctypes.c_int()
    assert cuda.cudaGetDevice(ctypes.byref(d)) == 0
    return d.value


class Plan:
    """Read ops into buffers, and the bytes each buffer must hold afterwards."""

    def __init__(self, data: bytes):
        self.data, self.ops, self.buffers = data, [], []

    def buffer(self, device: int, size: int) -> Buffer:
        self.buffers.append(Buffer(device, size))
        return self.buffers[-1]

    def read(self, offset: int, length: int, buffer: Buffer, at: int):
        self.ops.append((0, offset, length, buffer.address + at, buffer.device))
        buffer.expected[at:at + length] = self.data[offset:offset + length]

    def check(self, what: str):
        for b in self.buffers:
            got = b.bytes()
            if got != b.expected:
                first = next(i for i in range(b.size) if got[i] != b.expected[i])
                raise AssertionError(f"{what}: {b.size}-byte buffer on device {b.device} differs at byte {first}")

    def free(self):
        for b in self.buffers:
            b.free()


def check_quiet(what: str):
    """Nothing queued, nothing leaked, nothing counted, no error left on our thread."""
    assert cuda.acu_violations() == 0, f"{what}: stand-in runtime violations:\n{cuda.acu_report().decode()}"
    assert cuda.acu_pending() == 0, f"{what}: {cuda.acu_pending()} operations still queued after the load returned"
    assert cuda.acu_live_streams() == 0, f"{what}: {cuda.acu_live_streams()} streams left alive"
    assert cuda.acu_live_events() == 0, f"{what}: {cuda.acu_live_events()} events left alive"
    assert cuda.cudaGetLastError() == 0, f"{what}: an error was left on the calling thread for torch to find"


def load(path, plan: Plan, threads: int, chunk: int, what: str, io: str = "auto"):
    caller = current_device()
    C.execute_plan([path], plan.ops, threads, chunk, io)
    check_quiet(what)
    assert current_device() == caller, f"{what}: the load changed the calling thread's device"
    plan.check(what)


PINNED_BLOCK = (16 << 20) + 2 * 4096  # csrc/pinned_pool.h, PinnedPool::kBlockBytes


def pinned_blocks_for(slices: int, chunk: int) -> int:
    per_block = PINNED_BLOCK // (chunk + 4096)
    return -(-slices // per_block)


def length_of_some_size(rng: random.Random, chunk: int) -> int:
    """Pieces of every size: tiny, around the block and chunk sizes, several chunks."""
    return rng.choice([1, rng.randint(1, 64), rng.randint(1, 4096), 4096, rng.randint(4097, chunk + 1),
                       chunk - 1, chunk, chunk + 1, rng.randint(chunk, 3 * chunk)])


def random_plan(rng: random.Random, data: bytes, chunk: int, layout: str) -> Plan:
    """Ops to device 0, device 1 and the host, at odd offsets and lengths. "packed":
    one buffer per target, as load_dict allocates; "each": a buffer per op, as
    load_into reads into existing tensors."""
    plan = Plan(data)
    pieces = []
    for _ in range(rng.randint(1, 24)):
        length = max(1, min(length_of_some_size(rng, chunk), len(data) // 2))
        offset = rng.randrange(0, len(data) - length + 1)
        if rng.random() < 0.3:
            offset = offset // 4096 * 4096
        pieces.append((rng.choice([0, 0, 1, -1]), offset, length))
    if layout == "each":
        for device, offset, length in pieces:
            at = rng.choice([0, rng.randrange(0, 64)])
            plan.read(offset, length, plan.buffer(device, at + length + rng.randrange(0, 64)), at)
        return plan
    for device in (-1, 0, 1):
        mine = [(o, n) for d, o, n in pieces if d == device]
        if not mine:
            continue
        gaps = [rng.choice([0, rng.randrange(1, 100)]) for _ in mine]
        buffer = plan.buffer(device, sum(n for _, n in mine) + sum(gaps) + 1)
        at = 0
        for (offset, length), gap in zip(mine, gaps):
            at += gap
            plan.read(offset, length, buffer, at)
            at += length
    return plan


# ---- Scenarios: each runs once per round ----

def ring_reuse(path, data, rng, seed):
    """Loads after the first reuse the pinned ring: no new cudaHostAlloc, same size."""
    chunk, threads = 1 << 16, 3
    size = len(data) // 2 + 4096 * 3
    for load_number in range(3):
        allocs, copies = cuda.acu_host_allocs(), cuda.acu_copies()
        plan = Plan(data)
        buffer = plan.buffer(0, size)
        plan.read(0, size // 2, buffer, 0)
        plan.read(size // 2, size - size // 2, buffer, size // 2)
        load(path, plan, threads, chunk, f"seed {seed} load {load_number}")
        if load_number:
            assert cuda.acu_host_allocs() == allocs, "a later load pinned memory again"
        assert cuda.acu_copies() - copies == -(-(size // 2) // chunk) + -(-(size - size // 2) // chunk)
        # Two staging slices per thread, each a chunk and a block (room to read a piece
        # from the block holding its start, so unaligned offsets stay O_DIRECT), carved
        # from the pool's blocks of one size.
        assert C.pinned_bytes() == pinned_blocks_for(2 * threads, chunk) * PINNED_BLOCK, C.pinned_bytes()
        plan.free()


def devices_and_host(path, data, rng, seed):
    """Two devices and the host in one plan, called from a thread whose current device
    is either device: the pinned ring must serve both (portable)."""
    assert cuda.cudaSetDevice(rng.choice([0, 1])) == 0
    plan = Plan(data)
    third = len(data) // 3 // 4096 * 4096
    for i, device in enumerate((0, 1, -1)):
        length = third if i < 2 else len(data) - 2 * third
        plan.read(i * third, length, plan.buffer(device, length), 0)
    load(path, plan, rng.randint(1, 8), 1 << 16, f"seed {seed}")
    plan.free()
    assert cuda.cudaSetDevice(0) == 0


def odd_lengths_and_offsets(path, data, rng, seed):
    plan = Plan(data)
    buffer = plan.buffer(0, 7100)
    plan.read(4096, 1000, buffer, 0)
    plan.read(3 * 4096, 5000, buffer, 2000)
    plan.read(rng.randrange(len(data) - 3), 3, plan.buffer(1, 5), 1)
    load(path, plan, rng.randint(1, 4), 4096, f"seed {seed}")
    plan.free()


def random_plans(path, data, rng, seed):
    """1 to 16 threads, chunks of one to several blocks, pieces of every size."""
    for n in range(3):
        chunk = 4096 * rng.choice([1, 2, 3, 16])
        threads = rng.randint(1, 16)
        layout = rng.choice(["packed", "each"])
        plan = random_plan(rng, data, chunk, layout)
        load(path, plan, threads, chunk, f"seed {seed} plan {n} ({layout}, {threads} threads, chunk {chunk})",
             io=rng.choice(["auto", "buffered"]))
        plan.free()


def concurrent_loads(path, data, rng, seed):
    """Two loads at once, from two threads: each gets a pinned ring of its own."""
    chunk = 4096 * rng.choice([1, 4])
    plans = [random_plan(rng, data, chunk, "packed") for _ in range(2)]
    n_threads = [rng.randint(1, 4) for _ in plans]
    failures = []

    def run(plan, threads):
        try:
            C.execute_plan([path], plan.ops, threads, chunk, "auto")
        except BaseException as e:  # reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=run, args=pt) for pt in zip(plans, n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    check_quiet(f"seed {seed}: concurrent loads")
    for n, plan in enumerate(plans):
        plan.check(f"seed {seed}: concurrent load {n}")
        plan.free()


def expect_failure(path, plan, threads, chunk, error, words, what):
    try:
        C.execute_plan([path], plan.ops, threads, chunk, "auto")
    except error as e:
        assert all(w in str(e) for w in words), f"{what}: {e}"
    else:
        raise AssertionError(f"{what}: the load did not fail")
    check_quiet(what)


def errors_mid_load(path, data, rng, seed):
    """A failing copy (at once, or later on its stream), a short read and a bad device,
    each in the middle of a load: the load raises only after every copy in flight has
    finished, releases every stream and event, and the next load works."""
    chunk, threads = 4096 * rng.choice([1, 4]), rng.randint(1, 8)
    copies = -(-len(data) // chunk)

    def whole_file_plan():
        plan = Plan(data)
        plan.read(0, len(data), plan.buffer(rng.choice([0, 1]), len(data)), 0)
        return plan

    for asynchronous, reported_by in ((0, "cudaMemcpyAsync"), (1, "Synchronize")):
        cuda.acu_fail_copy(rng.randrange(copies), asynchronous)
        plan = whole_file_plan()
        expect_failure(path, plan, threads, chunk, RuntimeError, ["illegal memory access", reported_by],
                       f"seed {seed}: failing copy (asynchronous={asynchronous})")
        plan.free()
    cuda.acu_fail_copy(-1, 0)

    plan = whole_file_plan()
    plan.read(len(data) - 10, 20, plan.buffer(-1, 20), 0)  # past the end of the file
    expect_failure(path, plan, threads, chunk, OSError, ["truncated"], f"seed {seed}: short read")
    plan.free()

    plan = Plan(data)
    buffer = plan.buffer(0, len(data))
    plan.read(0, len(data), buffer, 0)
    plan.ops.append((0, 0, 4096, buffer.address, 5))
    expect_failure(path, plan, threads, chunk, RuntimeError, ["cudaSetDevice"], f"seed {seed}: bad device")
    plan.free()

    plan = whole_file_plan()
    load(path, plan, threads, chunk, f"seed {seed}: the load after the errors")
    plan.free()


def pinning_fails(path, data, rng, seed):
    """cudaHostAlloc fails (the first or the second block of the ring): the load raises,
    no error is left on the calling thread (torch's) for its next cudaGetLastError to
    report as its own, and the next load works. Through flash.load_dict: FlashDeviceError."""
    from async_cuda_torch import pinning_failure_is_a_device_error

    C.release_pinned()
    cuda.acu_fail_host_alloc(rng.randrange(2))  # one thread, two slices: two blocks
    plan = Plan(data)
    plan.read(0, len(data), plan.buffer(0, len(data)), 0)
    expect_failure(path, plan, 2, 16 << 20, RuntimeError, ["cudaHostAlloc", "out of memory"],
                   f"seed {seed}: pinning fails")
    cuda.acu_fail_host_alloc(-1)
    load(path, plan, 2, 16 << 20, f"seed {seed}: the load after pinning failed")
    plan.free()
    C.release_pinned()
    pinning_failure_is_a_device_error(cuda, seed, check_quiet)


def one_ring_for_every_piece_size(path, data, rng, seed):
    """Local loads (16 MiB pieces, t threads) and remote ones (the same file over loopback
    HTTP, pieces of 8 MiB and less on up to 4t connections) taking turns reuse the blocks the
    first local load pinned: no cudaHostAlloc after it, the same pinned bytes."""
    from remote_servers import FaultServer

    C.release_pinned()
    threads = rng.randint(1, 6)
    pinned = None
    with FaultServer(os.path.dirname(path)) as server:
        url = f"{server.url}/{os.path.basename(path)}"
        for n in range(6):
            remote = n % 2 == 1
            plan = Plan(data)
            for _ in range(2 * threads):  # a piece each at least: every thread busy
                length = rng.randint(1, len(data) // 4)
                plan.read(rng.randrange(len(data) - length), length, plan.buffer(rng.choice([0, 1]), length), 0)
            allocs = cuda.acu_host_allocs()
            what = f"seed {seed} load {n} ({'remote' if remote else 'local'}, {threads} threads)"
            C.execute_plan([url if remote else path], plan.ops, threads, 16 << 20, "auto",
                           connections=rng.randint(1, 4 * threads) if remote else 0)
            check_quiet(what)
            plan.check(what)
            plan.free()
            if pinned is not None:
                assert cuda.acu_host_allocs() == allocs, f"{what}: pinned memory again"
                assert C.pinned_bytes() == pinned, (what, C.pinned_bytes(), pinned)
            pinned = C.pinned_bytes()


def pinned_on_the_target_device(path, data, rng, seed):
    """A load to device 1 alone, called from a thread whose current device is 0 (as
    torch's is by default): pinning the ring, and everything else, happens with device 1
    current; device 0 gets no context, and the caller's current device stays 0."""
    C.release_pinned()
    plan = Plan(data)
    length = rng.randint(1, len(data))
    plan.read(0, length, plan.buffer(1, length), 0)
    assert cuda.cudaSetDevice(0) == 0
    cuda.acu_reset_contexts()
    load(path, plan, rng.randint(1, 8), 4096 * rng.choice([1, 16]), f"seed {seed}: a load to device 1")
    plan.free()
    assert cuda.acu_contexts() == 0b10, f"seed {seed}: contexts made on devices {cuda.acu_contexts():#b}, not 0b10"


def fork_after_a_load(path, data, rng, seed):
    """A child forked after a load (or while another thread loads) drops the inherited
    pinned ring without freeing it, pins its own and loads; the parent loads on."""
    busy = threading.Event()
    stop = threading.Event()

    def load_in_a_loop():
        while not stop.is_set():
            plan = Plan(data)
            plan.read(0, len(data), plan.buffer(rng.choice([0, 1]), len(data)), 0)
            C.execute_plan([path], plan.ops, 2, 4096 * 4, "auto")
            plan.check(f"seed {seed}: the parent's loads during fork")
            plan.free()
            busy.set()

    plan = Plan(data)
    plan.read(0, len(data), plan.buffer(0, len(data)), 0)
    load(path, plan, rng.randint(1, 4), 4096 * 4, f"seed {seed}: before fork")
    plan.free()
    loader = threading.Thread(target=load_in_a_loop) if rng.random() < 0.5 else None
    if loader:
        loader.start()
        busy.wait()
    pid = os.fork()
    if pid == 0:  # the child: whatever happens, it leaves through os._exit
        code = 1
        try:
            assert C.pinned_bytes() == 0, "the child kept its parent's pinned ring"
            plan = Plan(data)
            plan.read(0, len(data), plan.buffer(1, len(data)), 0)
            if loader is None:
                load(path, plan, rng.randint(1, 4), 4096 * 4, f"seed {seed}: in the child")
            else:  # the parent's loader thread is not here, but its streams were
                C.execute_plan([path], plan.ops, rng.randint(1, 4), 4096 * 4, "auto")
                assert cuda.acu_violations() == 0, cuda.acu_report().decode()
                plan.check(f"seed {seed}: in the child")
            code = 0
        except BaseException as e:  # noqa: BLE001 -- reported through the exit status
            print(f"child: {e!r}", file=sys.stderr, flush=True)
        finally:
            os._exit(code)
    if loader:
        stop.set()
        loader.join()
    _, status = wait_for(pid, 60)
    assert status == 0, f"seed {seed}: the forked child failed (status {status:#x})"
    check_quiet(f"seed {seed}: the parent after fork")


def wait_for(pid: int, seconds: float):
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return done, status
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"the forked child hung for {seconds} s (a lock held at fork?)")


def python_load_dict(path, data, rng, seed):
    """flash.load_dict to two GPUs and the host, with a CPU torch told it has GPUs."""
    from async_cuda_torch import load_dict_to_pretend_gpus

    load_dict_to_pretend_gpus(cuda, rng, seed, check_quiet)


def odd_safetensors_offsets(path, data, rng, seed):
    """A hand-written safetensors file with tensors at odd offsets, to two GPUs: aligned addresses."""
    from async_cuda_torch import odd_offsets_to_pretend_gpus

    odd_offsets_to_pretend_gpus(cuda, rng, seed, check_quiet)


def load_into_after_pending_work(path, data, rng, seed):
    """flash.load_into GPU parameters another stream is still writing: ordered after it."""
    from async_cuda_torch import load_into_after_other_streams

    load_into_after_other_streams(cuda, rng, seed, check_quiet)


SCENARIOS = {f.__name__: f for f in (ring_reuse, devices_and_host, odd_lengths_and_offsets, random_plans,
                                      concurrent_loads, errors_mid_load, pinning_fails, python_load_dict,
                                      odd_safetensors_offsets, one_ring_for_every_piece_size,
                                      pinned_on_the_target_device, fork_after_a_load, load_into_after_pending_work)}


def runtime_expected() -> str:
    """The stand-in the core must use: FLASHTENSORS_CUDART, or, where that is unset, the one
    FLASH_ASYNC_RUNTIME names (linked by the torch-like CUDA library preloaded, see main)."""
    return os.environ.get("FLASHTENSORS_CUDART") or os.environ["FLASH_ASYNC_RUNTIME"]


def connect():
    global C, cuda
    C = _native.module()
    cuda = ctypes.CDLL(runtime_expected())
    cuda.acu_configure.argtypes = [ctypes.c_uint64, ctypes.c_int]
    cuda.acu_report.restype = ctypes.c_char_p
    cuda.acu_contexts.restype = ctypes.c_uint
    cuda.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
    cuda.cudaFree.argtypes = [ctypes.c_void_p]
    cuda.acu_register_device_memory.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    cuda.acu_unregister_device_memory.argtypes = [ctypes.c_void_p]


def main(scenario, path, rounds, first_seed):
    # FLASH_ASYNC_PRELOAD: libraries mapped first, in order, as other packages (CuPy, JAX)
    # and torch map theirs (privately: RTLD_LOCAL), before the core looks for a runtime.
    preloaded = [ctypes.CDLL(lib) for lib in filter(None, os.environ.get("FLASH_ASYNC_PRELOAD", "").split(":"))]
    connect()
    assert C.cuda_runtime_available(), "the core found no CUDA runtime"
    found, expected = os.path.realpath(C.cuda_runtime_path()), os.path.realpath(runtime_expected())
    assert found == expected, f"the core uses {found}, not {expected}"
    data = open(path, "rb").read()
    for seed in range(first_seed, first_seed + rounds):
        cuda.acu_configure(seed, 200)
        SCENARIOS[scenario](path, data, random.Random(seed), seed)
    C.release_pinned()
    assert C.pinned_bytes() == 0
    check_quiet("releasing the pinned ring")
    for lib in preloaded:  # a runtime mapped first but not torch's was never called
        if os.path.basename(lib._name).startswith("libcudart") and os.path.realpath(lib._name) != expected:
            assert lib.acu_copies() == 0 and lib.acu_host_allocs() == 0, f"{lib._name} was used"
    print("ok")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
