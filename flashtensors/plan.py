"""The load plan: which byte range of which data file lands where in which device buffer.

Computed once in Python, executed by the native core. Every device gets one buffer;
tensors whose bytes overlap in a file (shared storage) are read once into one region
and come back as views of the same storage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .format import ALIGNMENT


@dataclass
class Region:
    """A run of file bytes that becomes one storage on one device."""

    file: int
    start: int  # in the file, aligned
    end: int  # in the file, aligned
    buffer_offset: int = 0  # in the device buffer, aligned; unused when mapped
    mapped: bool = False  # a zero-copy view of the file's mapping (host targets only)
    members: list = field(default_factory=list)  # TensorEntry objects

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass
class DevicePlan:
    device: object  # torch.device
    regions: list
    nbytes: int  # size of the device's one buffer


def make_plan(entries, devices: dict, mapped_files=frozenset()) -> list:
    """``entries`` are the index's TensorEntry objects to load and ``devices`` maps each
    one's name to its torch.device; returns one DevicePlan per device, in order of first
    use. Host regions from ``mapped_files`` are marked mapped and take no room in the
    buffer. Empty tensors need no bytes and get no region."""
    by_device: dict = {}
    for entry in entries:
        if entry.length:
            by_device.setdefault(devices[entry.name], []).append(entry)
    plans = []
    for device, entries in by_device.items():
        regions = _merge(entries)
        offset = 0
        for r in regions:
            if device.type == "cpu" and r.file in mapped_files:
                r.mapped = True
                continue
            r.buffer_offset = offset
            offset += r.nbytes
        plans.append(DevicePlan(device=device, regions=regions, nbytes=offset))
    return plans


def _merge(entries: list) -> list:
    entries = sorted(entries, key=lambda e: (e.file, e.offset))
    regions: list = []
    for e in entries:
        start = e.offset // ALIGNMENT * ALIGNMENT
        end = -(-(e.offset + e.length) // ALIGNMENT) * ALIGNMENT
        last = regions[-1] if regions else None
        if last is not None and last.file == e.file and start < last.end:
            last.end = max(last.end, end)
        else:
            last = Region(file=e.file, start=start, end=end)
            regions.append(last)
        last.members.append(e)
    return regions


def read_ops(plan: DevicePlan, base_address: int, device_code: int) -> list:
    """Native read ops ``(file, offset, length, address, device)`` for one device plan,
    with regions adjacent in both the file and the buffer coalesced into one read."""
    ops: list = []
    for r in plan.regions:
        if r.mapped:
            continue
        if ops and ops[-1][0] == r.file and ops[-1][1] + ops[-1][2] == r.start:
            f, off, length, addr, dev = ops[-1]
            ops[-1] = (f, off, length + r.nbytes, addr, dev)
        else:
            ops.append((r.file, r.start, r.nbytes, base_address + r.buffer_offset, device_code))
    return ops
