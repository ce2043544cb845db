"""Remote loads at the link's rate: many requests in flight, each on its own connection,
through a server that caps every connection (as S3 does); host buffers backed by huge
pages; the remote benchmark with its peers. Only correctness is asserted here (the
bytes, the requests the server saw); speed is the benchmark's business."""

import json
import os

import pytest
import torch

from flashtensors import FlashError, flash, loader, memory, reading

from helpers import assert_same, flashtensors, state_dict
from remote_servers import nginx


def data_requests(log_path):
    """(range, body bytes, connection) of each data-file read the server answered (not
    the one-byte size probes)."""
    out = []
    for line in open(log_path).read().splitlines():
        method, uri, rng, status, sent, connection = line.split(" ")
        if uri.endswith(".flash") and rng != "-" and int(sent) > 1:
            out.append((rng, int(sent), connection))
    return out


def data_requests_any(log_path):
    """As data_requests, for any file's reads (ranged, more than one byte)."""
    out = []
    for line in open(log_path).read().splitlines():
        method, uri, rng, status, sent, connection = line.split(" ")
        if rng != "-" and int(sent) > 1:
            out.append((rng, int(sent), connection))
    return out


def test_many_connections_through_a_capped_server(tmp_path, monkeypatch):
    # 2 MiB in 32 pieces of 64 KiB, each served at 32 KiB/s after its first 32 KiB: every
    # request lasts about a second, so the pieces can only arrive together if the loader
    # keeps many requests in flight, each on a connection of its own.
    sd = state_dict(n=4, shape=(128 << 10,))
    flash.save_dict(sd, tmp_path / "m")
    monkeypatch.setattr(reading, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setenv("FLASHTENSORS_CONNECTIONS", "16")
    log = tmp_path / "access.log"
    with nginx(tmp_path, access_log=log, log_connections=True, limit_rate="32k") as server:
        loaded = flash.load_dict(f"{server.url}/m", "cpu", threads=2)
    assert_same(loaded, sd)
    requests = data_requests(log)
    assert len(requests) == 32 and all(sent == 64 << 10 for _, sent, _ in requests)
    connections = {c for _, _, c in requests}
    assert 2 < len(connections) <= 16  # more than the 2 threads asked for, at most the 16 allowed


def test_remote_pieces_are_at_most_8_mib_and_the_last_ones_finer(tmp_path, monkeypatch):
    # 64 MiB over 4 connections: 8 MiB pieces while 8 MiB or more per connection is left,
    # then pieces of (bytes left / 4), never under 2 MiB, so the connections end together.
    sd = {"big": torch.randn(16 << 20), "small": torch.arange(1000)}  # 64 MiB and 8 KB
    flash.save_dict(sd, tmp_path / "m")
    monkeypatch.setenv("FLASHTENSORS_CONNECTIONS", "4")
    log = tmp_path / "access.log"
    with nginx(tmp_path, access_log=log, log_connections=True) as server:
        assert_same(flash.load_dict(f"{server.url}/m", "cpu", threads=1), sd)
    sizes = [sent for _, sent, _ in data_requests(log)]
    assert sum(sizes) >= 64 << 20
    assert max(sizes) == 8 << 20 and sizes.count(8 << 20) >= 4
    tail = sorted(s for s in sizes if s < 8 << 20)
    assert len(tail) >= 4 and tail[1] >= 2 << 20  # one piece may be the plan's last few bytes
    assert tail[-1] <= 6 << 20


def test_a_small_remote_checkpoint_is_spread_over_connections(tmp_path, monkeypatch):
    # 20 MiB is less than one 8 MiB piece per connection: 2 MiB pieces, ten requests at once.
    monkeypatch.delenv("FLASHTENSORS_CONNECTIONS", raising=False)  # the default, 32
    sd = {"big": torch.randn(5 << 20)}
    flash.save_dict(sd, tmp_path / "m")
    log = tmp_path / "access.log"
    with nginx(tmp_path, access_log=log, log_connections=True) as server:
        assert_same(flash.load_dict(f"{server.url}/m", "cpu"), sd)
    sizes = [sent for _, sent, _ in data_requests(log)]
    assert sum(sizes) >= 20 << 20 and max(sizes) == 2 << 20 and len(sizes) == 10


def test_the_connections_keyword_sets_the_requests_in_flight(tmp_path, monkeypatch):
    sd = state_dict(n=4, shape=(128 << 10,))  # 2 MiB: 32 pieces of 64 KiB
    flash.save_dict(sd, tmp_path / "m")
    monkeypatch.setattr(reading, "CHUNK_BYTES", 64 << 10)
    monkeypatch.setenv("FLASHTENSORS_CONNECTIONS", "16")  # the keyword wins over the environment
    for connections in (1, 3):  # fewer than the 4 threads, too
        log = tmp_path / f"access-{connections}.log"
        with nginx(tmp_path, access_log=log, log_connections=True) as server:
            assert_same(flash.load_dict(f"{server.url}/m", "cpu", threads=4, connections=connections), sd)
        requests = data_requests(log)
        assert len(requests) == 32
        assert 1 <= len({c for _, _, c in requests}) <= connections


def connections_of(log_path, since: int = 0) -> list:
    """nginx's connection serial of each ranged read in the log, from the ``since``-th on."""
    return [c for _, _, c in data_requests_any(log_path)[since:]]


def test_read_calls_of_one_load_share_their_connections(tmp_path):
    # A load that reads in several native calls (a group's pieces, the local tier's fill)
    # reuses the connections of the calls before; loads close them when they end.
    from flashtensors import _native

    native = _native.module()
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(3 << 20))
    buffer = torch.empty(1 << 20, dtype=torch.uint8)
    log = tmp_path / "access.log"
    native.release_idle_connections()
    with nginx(tmp_path, access_log=log, log_connections=True) as server:
        url = f"{server.url}/data.bin"
        for i in range(3):
            native.execute_plan([url], [(0, i << 20, 1 << 20, buffer.data_ptr(), -1)], 1, 1 << 20, "auto", 10.0,
                                connections=1)
            assert buffer.numpy().tobytes() == data.read_bytes()[i << 20:(i + 1) << 20]
        first = connections_of(log)
        assert len(first) == 3 and len(set(first)) == 1  # one connection for the three calls
        assert native.release_idle_connections() == 1
        native.execute_plan([url], [(0, 0, 1 << 20, buffer.data_ptr(), -1)], 1, 1 << 20, "auto", 10.0,
                            connections=1)
        assert connections_of(log, 3)[0] != first[0]  # released: a new connection
        assert native.release_idle_connections() == 1
        flash.save_dict(state_dict(n=2), tmp_path / "m")
        flash.load_dict(f"{server.url}/m", "cpu")
        assert native.release_idle_connections() == 0  # the load closed its own


FORKED_CHILD_READS = """
import os, sys, torch
from flashtensors import _native
native, url = _native.module(), sys.argv[1]
buffer = torch.empty(4096, dtype=torch.uint8)
def read():
    native.execute_plan([url], [(0, 0, 4096, buffer.data_ptr(), -1)], 1, 4096, "auto", 10.0, connections=1)
    return buffer.numpy().tobytes()
expected = open(sys.argv[2], "rb").read(4096)
assert read() == expected  # the parent keeps this connection idle
pid = os.fork()
if pid == 0:  # the child must open its own, never speak on its parent's socket
    ok = read() == expected
    os._exit(0 if ok and native.release_idle_connections() == 1 else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
assert read() == expected  # the parent's connection still works
print(native.release_idle_connections())
"""


def test_a_forked_child_never_uses_its_parents_connections(tmp_path):
    import subprocess
    import sys

    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(8192))
    log = tmp_path / "access.log"
    with nginx(tmp_path, access_log=log, log_connections=True) as server:
        proc = subprocess.run([sys.executable, "-c", FORKED_CHILD_READS, f"{server.url}/data.bin", str(data)],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "1"
    parent_first, child, parent_again = connections_of(log)
    assert parent_again == parent_first and child != parent_first


@pytest.mark.parametrize("connections, message", [
    (0, "connections must be an integer from 1 to 1024, not 0"),
    (1025, "connections must be an integer from 1 to 1024, not 1025"),
    ("8", "connections must be an integer from 1 to 1024, not '8'"),
    (True, "connections must be an integer from 1 to 1024, not True"),
])
def test_a_bad_connections_keyword_is_refused(connections, message):
    with pytest.raises(FlashError, match=message):
        flash.load_dict("https://weights.example.com/m", "cpu", connections=connections)


def test_connections_on_a_local_checkpoint_is_refused_by_name(tmp_path):
    flash.save_dict(state_dict(n=1), tmp_path / "m")
    with pytest.raises(FlashError, match="connections= sizes the requests in flight of a remote checkpoint"):
        flash.load_dict(tmp_path / "m", "cpu", connections=8)
    with pytest.raises(FlashError, match="connections= sizes the requests in flight of a remote checkpoint"):
        flash.load_into(tmp_path / "m", {}, connections=8)


@pytest.mark.parametrize("value", ["0", "many", "100000"])
def test_a_bad_connection_count_is_refused_by_name(tmp_path, monkeypatch, value):
    sd = state_dict(n=1)
    flash.save_dict(sd, tmp_path / "m")
    monkeypatch.setenv("FLASHTENSORS_CONNECTIONS", value)
    assert_same(flash.load_dict(tmp_path / "m", "cpu", server=False), sd)  # local loads do not use it
    with nginx(tmp_path) as server:
        with pytest.raises(FlashError, match=f"FLASHTENSORS_CONNECTIONS must be an integer from 1 to .*'{value}'"):
            flash.load_dict(f"{server.url}/m", "cpu")


def vm_flags(address: int) -> list:
    """The VmFlags of the mapping of this process that holds ``address``."""
    inside = False
    for line in open("/proc/self/smaps").read().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start <= address < end
        elif inside and head == "VmFlags:":
            return line.split()[1:]
    raise AssertionError(f"no mapping holds {address:#x}")


def need_thp():
    if memory.thp_mode() == "never":
        pytest.skip("transparent huge pages are off on this machine")


def test_huge_page_buffers_are_advised_and_aligned(monkeypatch):
    need_thp()
    monkeypatch.setenv(memory.HUGE_PAGES_ENV, "on")
    address, owner = memory.allocate_host(memory.MIN_HUGE_BUFFER)
    assert address % memory.HUGE_PAGE == 0 and address + memory.MIN_HUGE_BUFFER <= owner.data_ptr() + owner.nbytes
    assert "hg" in vm_flags(address)
    monkeypatch.setenv(memory.HUGE_PAGES_ENV, "off")
    address, owner = memory.allocate_host(memory.MIN_HUGE_BUFFER)
    assert address % 4096 == 0 and "hg" not in vm_flags(address)


@pytest.mark.parametrize("io", ["direct", "buffered"])
def test_loads_into_huge_pages_hold_the_bytes(tmp_path, monkeypatch, io):
    need_thp()
    sd = state_dict(1, 9, (2 << 20,))  # 72 MiB: one buffer past MIN_HUGE_BUFFER
    flash.save_dict(sd, tmp_path / "m")
    monkeypatch.setenv(memory.HUGE_PAGES_ENV, "on")
    loaded = loader.load(str(tmp_path / "m"), "cpu", io=io)  # read, not mapped
    assert_same(loaded, sd)
    assert "hg" in vm_flags(loaded["layer.0"].data_ptr())
    with nginx(tmp_path) as server:
        remote = flash.load_dict(f"{server.url}/m", "cpu")
    assert_same(remote, sd)
    assert "hg" in vm_flags(remote["layer.0"].data_ptr())


def test_a_bad_huge_pages_setting_is_refused(monkeypatch):
    monkeypatch.setenv(memory.HUGE_PAGES_ENV, "sometimes")
    with pytest.raises(FlashError, match="FLASHTENSORS_HUGE_PAGES must be one of auto, on, off, not 'sometimes'"):
        memory.allocate_host(memory.MIN_HUGE_BUFFER)


def test_free_huge_blocks_are_counted_from_buddyinfo(tmp_path):
    page = os.sysconf("SC_PAGE_SIZE")
    if page != 4096:
        pytest.skip("the sample below is for 4 KiB pages")
    sample = tmp_path / "buddyinfo"
    sample.write_text("Node 0, zone      DMA      0    0    0    0    0    0    0    0    1    1    3\n"
                      "Node 0, zone   Normal    100   50    0    0    0    0    0    0    0    2    5\n")
    # order 9 blocks are 2 MiB, order 10 blocks 4 MiB; smaller ones do not count
    assert memory.free_huge_block_bytes(str(sample)) == (1 + 2) * (2 << 20) + (3 + 5) * (4 << 20)
    assert memory.free_huge_block_bytes(str(tmp_path / "missing")) == 0
    assert memory.free_huge_block_bytes() >= 0  # this machine's, whatever it holds


def test_bench_times_the_peers_on_a_plain_and_a_capped_server(tmp_path):
    from flashtensors.benchmark.remote_peers import PEERS, curl_binary

    if curl_binary() is None:
        pytest.skip("the remote benchmark compares with curl, which is not installed")
    from remote_servers import need_nginx

    need_nginx()
    out = tmp_path / "bench.json"
    r = flashtensors("bench", "--size", "0.01", "--nginx", "--limit-rate", "50m", "--device", "cpu", "--runs", "1",
                     "--dir", tmp_path / "work", "--json", out)
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    assert [s["label"] for s in doc["sources"]] == ["loopback", "capped 50m/conn"]
    for source, capped in zip(doc["sources"], (False, True)):
        usable = {p.key for p in PEERS if not p.available({"s3_safetensors": ["s3://b/k"], "capped": capped})}
        assert set(source["peers"]) == usable and {"curl", "flashtensors"} <= usable
        for key, row in source["peers"].items():
            assert row["error"] == "" and row["median"] > 0, (key, row)
        assert source["peers"]["flashtensors"]["peak_rss"] > source["bytes"]
    assert "loopback: streaming reaches" in r.stdout and "capped 50m/conn: streaming reaches" in r.stdout
    assert doc["stream_s"] > 0 and doc["curl_s"] > 0


RING_UNDER_ASYNC_CUDA = """
import random, sys
sys.path.insert(0, sys.argv[1])
import async_cuda_driver as d
d.connect()
url, data, chunk = sys.argv[2], open(sys.argv[3], "rb").read(), 1 << 16
for seed in range(1, 9):
    d.cuda.acu_configure(seed, 200)
    rng = random.Random(seed)
    plan = d.random_plan(rng, data, chunk, rng.choice(["packed", "each"]))
    threads = rng.randint(1, 4)
    d.C.release_pinned()
    d.load(url, plan, threads, chunk, f"seed {seed}")
    # the ring holds what `threads` local pieces would (two buffers a thread, each with its
    # alignment slack), in blocks of the pool's one size (16 MiB + 8 KiB, csrc/pinned_pool.h)
    block, need = (16 << 20) + 2 * 4096, 2 * threads * (chunk + 2 * 4096)
    assert d.C.pinned_bytes() <= -(-need // block) * block, (d.C.pinned_bytes(), threads)
    plan.free()
print("ok")
"""


def test_remote_pieces_through_the_pinned_ring_under_async_cuda(tmp_path, async_cudart):
    # The GPU path of a remote load, more connections than threads, under the stand-in
    # runtime that keeps CUDA's asynchrony (tests/support/async_cudart.cpp): bit-exact bytes on
    # both "devices" and the host, no violation, the pinned ring within its budget.
    import subprocess
    import sys

    import async_cuda_driver

    support = os.path.dirname(async_cuda_driver.__file__)
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom((1 << 20) + 4096 * 3 + 123))
    env = dict(os.environ, FLASHTENSORS_CUDART=str(async_cudart), FLASHTENSORS_CONNECTIONS="12")
    with nginx(tmp_path) as server:
        proc = subprocess.run([sys.executable, "-c", RING_UNDER_ASYNC_CUDA, support,
                               f"{server.url}/data.bin", str(data)], env=env, capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert proc.stdout.strip() == "ok"
