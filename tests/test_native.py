"""The native core on its own: checksums, plan execution, the GIL."""

import ctypes
import threading
import time
import zlib

import pytest
import torch

from flashtensors import _native


def _crc_of(data: bytes) -> int:
    buf = ctypes.create_string_buffer(data, len(data))
    return _native.module().crc32c(ctypes.addressof(buf), len(data))


def _crc32c_reference(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_vector():
    assert _crc_of(b"123456789") == 0xE3069283
    assert _crc_of(b"") == 0


@pytest.mark.parametrize("n", [1, 7, 8, 9, 63, 64, 1000, 4099])
def test_crc32c_matches_a_bitwise_reference(n):
    data = bytes((i * 131 + 7) % 256 for i in range(n))
    assert _crc_of(data) == _crc32c_reference(data)
    assert _crc_of(data) != zlib.crc32(data) or n == 0  # it is CRC-32C, not zlib's CRC-32


def test_crc32c_extends_incrementally():
    data = bytes(range(256)) * 10
    buf = ctypes.create_string_buffer(data, len(data))
    c = _native.module()
    first = c.crc32c(ctypes.addressof(buf), 1000)
    assert c.crc32c(ctypes.addressof(buf) + 1000, len(data) - 1000, first) == _crc_of(data)


def test_execute_plan_reads_ranges_into_host_memory(tmp_path):
    data = bytes((i * 7) % 251 for i in range(3 * 4096 + 100))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    out = torch.zeros(len(data), dtype=torch.uint8)
    ops = [(0, 0, 4096, out.data_ptr(), -1), (0, 4096, len(data) - 4096, out.data_ptr() + 4096, -1)]
    _native.module().execute_plan([str(path)], ops, 3, 4096, "auto")
    assert bytes(out.numpy()) == data


def test_short_read_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "short.bin"
    path.write_bytes(b"x" * 100)
    out = torch.zeros(4096, dtype=torch.uint8)
    with pytest.raises(OSError, match="short.bin.*truncated"):
        _native.module().execute_plan([str(path)], [(0, 0, 4096, out.data_ptr(), -1)], 2, 4096, "buffered")


def test_bad_file_index_is_refused(tmp_path):
    with pytest.raises(OSError, match="file #3"):
        _native.module().execute_plan([], [(3, 0, 1, 0, -1)], 1, 4096, "auto")


def test_gil_is_released_while_reading(tmp_path):
    path = tmp_path / "big.bin"
    path.write_bytes(b"\1" * (64 << 20))
    out = torch.empty(64 << 20, dtype=torch.uint8)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    t = threading.Thread(target=ticker)
    t.start()
    try:
        for _ in range(5):
            _native.module().execute_plan([str(path)], [(0, 0, 64 << 20, out.data_ptr(), -1)], 1, 1 << 20,
                                          "buffered")
    finally:
        stop.set()
        t.join()
    assert len(ticks) > 5  # the Python thread kept running during the native reads
