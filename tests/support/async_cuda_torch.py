"""The Python side of a GPU load (flash.load_dict to two GPUs and the host), as close as a
CPU build of torch allows: torch is told it has two GPUs, "GPU" buffers are CPU tensors
registered with the stand-in runtime as device memory, and torch's stream
synchronization is recorded. The core's copies go through the asynchronous stand-in
for real. What this cannot show: torch's own CUDA allocator, streams and kernels."""

from __future__ import annotations

import contextlib
import tempfile
from unittest import mock


class PretendGpus:
    """torch with two pretend GPUs whose memory the stand-in runtime `cuda` knows."""

    def __init__(self, cuda, free_bytes: int):
        import torch

        self.torch, self.cuda, self.free_bytes = torch, cuda, free_bytes
        self.buffers = []  # (tensor, device index)
        self.log = []  # ("alloc" | "sync", device index, copies queued so far)
        self._empty = torch.empty
        self._from_dlpack = torch.from_dlpack

    def empty(self, *size, device=None, **kwargs):
        device = self.torch.device(device) if device is not None else None
        if device is None or device.type != "cuda":
            return self._empty(*size, device=device, **kwargs)
        t = self._empty(*size, **kwargs)
        if t.numel():
            self.cuda.acu_register_device_memory(t.data_ptr(), t.numel() * t.element_size(), device.index)
        self.buffers.append((t, device.index))
        self.log.append(("alloc", device.index, self.cuda.acu_copies()))
        return t

    def from_dlpack(self, capsule):
        """Views of a pretend GPU's memory arrive as CUDA DLPack capsules; this CPU torch
        takes them as the host memory they really are."""
        import ctypes

        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        device = (ctypes.c_int32 * 2).from_address(get(capsule, b"dltensor") + 8)  # DLTensor.device
        if device[0] == 2:  # kDLCUDA -> kDLCPU
            device[0], device[1] = 1, 0
        return self._from_dlpack(capsule)

    def current_stream(self, device=None):
        index = self.torch.device(device).index

        class Stream:
            def synchronize(_):
                self.log.append(("sync", index, self.cuda.acu_copies()))

        return Stream()

    def synchronize(self, device=None):
        """torch.cuda.synchronize: every stream of the device, through the stand-in."""
        import ctypes

        index = self.torch.device(device).index if device is not None else 0
        self.log.append(("device sync", index, self.cuda.acu_copies()))
        caller = ctypes.c_int()
        self.cuda.cudaGetDevice(ctypes.byref(caller))
        assert self.cuda.cudaSetDevice(index) == 0 and self.cuda.cudaDeviceSynchronize() == 0
        assert self.cuda.cudaSetDevice(caller.value) == 0

    @contextlib.contextmanager
    def installed(self):
        tc = self.torch.cuda
        with contextlib.ExitStack() as stack:
            for name, value in [("is_available", lambda: True), ("device_count", lambda: 2),
                                ("current_device", lambda: 0), ("current_stream", self.current_stream),
                                ("synchronize", self.synchronize),
                                ("mem_get_info", lambda device=None: (self.free_bytes, 2 * self.free_bytes)),
                                ("memory_reserved", lambda device=None: 0),
                                ("memory_allocated", lambda device=None: 0)]:
                stack.enter_context(mock.patch.object(tc, name, value))
            stack.enter_context(mock.patch.object(self.torch, "empty", self.empty))
            stack.enter_context(mock.patch.object(self.torch, "from_dlpack", self.from_dlpack))
            try:
                yield self
            finally:
                for t, _ in self.buffers:
                    if t.numel():
                        self.cuda.acu_unregister_device_memory(t.data_ptr())

    def device_of(self, tensor) -> int:
        """The pretend GPU whose buffer holds all of `tensor`'s bytes, or -1."""
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        for buffer, index in self.buffers:
            b = buffer.data_ptr()
            if b <= start and end <= b + buffer.numel() * buffer.element_size():
                return index
        return -1


def load_dict_to_pretend_gpus(cuda, rng, seed, check_quiet):
    """load_dict to device 0, device 1 and the host: the capacity check refuses a load
    that cannot fit before a byte is copied; torch's stream of each GPU is synchronized
    after its buffer exists and before the first copy; the tensors come back, bit-exact,
    as views of their device's buffer, once no copy is left queued."""
    import torch

    from flashtensors import flash
    from flashtensors.errors import FlashDeviceError

    gen = torch.Generator().manual_seed(seed)
    sd = {f"{part}.w{i}": torch.randn(rng.randint(1, 40000), generator=gen).to(
        rng.choice([torch.float32, torch.bfloat16, torch.int8])) for part in "abc" for i in range(3)}
    sd["a.tied"] = sd["a.w0"]
    with tempfile.TemporaryDirectory() as d:
        flash.save_dict(sd, d)
        device_map = {"a": 0, "b": 1, "c": "cpu"}
        with PretendGpus(cuda, free_bytes=1 << 10).installed() as gpus:
            try:
                flash.load_dict(d, device_map, server=False)
            except FlashDeviceError as e:
                assert "GiB is free" in str(e), e
            else:
                raise AssertionError("a load that cannot fit must be refused")
            assert not gpus.buffers, "the refused load allocated GPU memory"
        with PretendGpus(cuda, free_bytes=1 << 30).installed() as gpus:
            copies_before = cuda.acu_copies()
            out = flash.load_dict(d, device_map, server=False, threads=rng.randint(1, 16))
            check_quiet(f"seed {seed}: load_dict")
            for name, want in sd.items():
                got = out[name]
                assert got.dtype == want.dtype and got.shape == want.shape, name
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name
                expected_device = device_map[name[0]]
                assert gpus.device_of(got) == (expected_device if expected_device != "cpu" else -1), name
            assert out["a.tied"].data_ptr() == out["a.w0"].data_ptr()
            assert cuda.acu_copies() > copies_before
            for index in (0, 1):
                events = [(kind, copies) for kind, i, copies in gpus.log if i == index]
                assert [kind for kind, _ in events] == ["alloc", "sync"], (index, gpus.log)
                assert events[1][1] == copies_before, f"device {index}: torch's stream synchronized after copies began"


def write_unsorted_safetensors(path, tensors: dict, header_pad: int) -> None:
    """A safetensors file written by hand, tensors packed in the given order with no
    padding (as a writer that does not sort by dtype leaves them), the data starting at
    8 + header length, made odd by ``header_pad`` spaces (the format allows them)."""
    import json
    import struct

    import torch

    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.uint8: "U8", torch.float64: "F64",
             torch.int16: "I16", torch.int64: "I64"}
    header, data = {}, b""
    for name, t in tensors.items():
        raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode() + b" " * header_pad
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + data)


def odd_offsets_to_pretend_gpus(cuda, rng, seed, check_quiet):
    """A safetensors file whose tensors sit at odd file offsets (fp32 at 1 mod 4, bf16 and
    int16 at odd bytes, float64 at 5 mod 8): loaded to two GPUs, every tensor's device
    address is a multiple of its item size (CUDA kernels fault on misaligned ones), and
    the values are the file's, bit for bit."""
    import os

    import torch

    from flashtensors import flash

    gen = torch.Generator().manual_seed(seed)
    order = [torch.uint8, torch.float32, torch.bfloat16, torch.float64, torch.int16, torch.int64]
    tensors = {}
    for i in range(rng.randint(6, 14)):
        dtype = rng.choice(order) if i >= len(order) else order[i]
        n = rng.choice([1, 3, 5, rng.randint(1, 3000)])
        t = torch.randn(n, generator=gen) * 1000
        tensors[f"{'ab'[i % 2]}.t{i}"] = t.to(dtype)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "model.safetensors")
        write_unsorted_safetensors(path, tensors, header_pad=rng.choice([1, 3, 5, 7]))
        with PretendGpus(cuda, free_bytes=1 << 30).installed() as gpus:
            out = flash.load_dict(path, {"a": 0, "b": 1}, server=False, threads=rng.randint(1, 8))
            check_quiet(f"seed {seed}: odd offsets")
            for name, want in tensors.items():
                got = out[name]
                assert gpus.device_of(got) == (0 if name[0] == "a" else 1), name
                assert got.data_ptr() % min(want.element_size(), 16) == 0, \
                    f"seed {seed}: {name} ({want.dtype}) at device address {got.data_ptr():#x}: misaligned"
                assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), f"seed {seed}: {name} differs"


def pinning_failure_is_a_device_error(cuda, seed, check_quiet):
    """flash.load_dict to a pretend GPU while cudaHostAlloc fails: FlashDeviceError (a
    FlashError), naming the checkpoint and the CUDA call."""
    import torch

    from flashtensors import flash
    from flashtensors.errors import FlashDeviceError

    with tempfile.TemporaryDirectory() as d:
        flash.save_dict({"w": torch.arange(1000, dtype=torch.float32)}, d)
        with PretendGpus(cuda, free_bytes=1 << 30).installed():
            cuda.acu_fail_host_alloc(0)
            try:
                flash.load_dict(d, 0, server=False)
            except FlashDeviceError as e:
                assert d in str(e) and "cudaHostAlloc" in str(e), e
            else:
                raise AssertionError(f"seed {seed}: a load whose pinning failed returned")
            finally:
                cuda.acu_fail_host_alloc(-1)
            check_quiet(f"seed {seed}: pinning failed under load_dict")


def pretend_cuda_tensor(t, index: int):
    """``t`` (host memory the stand-in knows as device ``index``'s) as a tensor that says it
    is on cuda:``index``, as a model's parameter would."""
    import torch

    class OnPretendGpu(torch.Tensor):
        @property
        def device(self):
            return torch.device("cuda", index)

    return torch.Tensor._make_subclass(OnPretendGpu, t)


def load_into_after_other_streams(cuda, rng, seed, check_quiet):
    """flash.load_into parameters that a stream the loader did not make (vLLM's, a user's)
    is still writing: the load is ordered after that work (the values that come back are the
    checkpoint's, not the stream's), and no copy is left queued on any stream on return."""
    import ctypes

    import torch

    from flashtensors import flash

    gen = torch.Generator().manual_seed(seed)
    sd = {f"{part}.w": torch.randn(rng.randint(1000, 20000), generator=gen) for part in "ab"}
    c = ctypes.c_void_p
    with tempfile.TemporaryDirectory() as d:
        flash.save_dict(sd, d)
        targets, streams, stale = {}, [], []
        for index, (name, want) in enumerate(sd.items()):
            t = torch.empty_like(want)
            cuda.acu_register_device_memory(t.data_ptr(), t.nbytes, index)
            targets[name] = pretend_cuda_tensor(t, index)
            source, stream = c(), c()
            assert cuda.cudaSetDevice(index) == 0 and cuda.cudaStreamCreateWithFlags(ctypes.byref(stream), 1) == 0
            assert cuda.cudaHostAlloc(ctypes.byref(source), c(t.nbytes), 1) == 0
            ctypes.memset(source, 0x5A, t.nbytes)
            for _ in range(100):  # work still queued when load_into starts, its last copy the whole target
                assert cuda.cudaMemcpyAsync(c(t.data_ptr()), source, c(64), 1, stream) == 0
            assert cuda.cudaMemcpyAsync(c(t.data_ptr()), source, c(t.nbytes), 1, stream) == 0
            streams.append(stream)
            stale.append(source)
        assert cuda.cudaSetDevice(0) == 0
        with PretendGpus(cuda, free_bytes=1 << 30).installed():
            flash.load_into(d, targets, threads=rng.randint(1, 8))
            assert cuda.acu_pending() == 0, f"seed {seed}: copies still queued when load_into returned"
        for name, want in sd.items():
            assert torch.equal(targets[name].view(torch.uint8), want.view(torch.uint8)), \
                f"seed {seed}: {name}: another stream's pending copy landed over the loaded values"
        for stream, source in zip(streams, stale):
            assert cuda.cudaStreamDestroy(stream) == 0 and cuda.cudaFreeHost(source) == 0
        for t in targets.values():
            cuda.acu_unregister_device_memory(t.data_ptr())
        check_quiet(f"seed {seed}: load_into after other streams")
