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

    @contextlib.contextmanager
    def installed(self):
        tc = self.torch.cuda
        with contextlib.ExitStack() as stack:
            for name, value in [("is_available", lambda: True), ("device_count", lambda: 2),
                                ("current_device", lambda: 0), ("current_stream", self.current_stream),
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
