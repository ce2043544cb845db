"""Host buffers that loads read into: ordinary torch-owned memory (freed when the last
tensor viewing it goes), aligned for O_DIRECT, and backed by transparent huge pages
where those are cheap.

Why: the first touch of fresh memory costs a page fault per 4 KiB page, about 260k for
1 GiB (0.3-0.45 s of CPU on the development machine, as much as receiving 1 GiB over
loopback). A 2 MiB huge page takes one fault for 512 pages: 0.17 s for 1 GiB there. The
native reader also faults each piece's pages in with one madvise call before reading
into it (csrc/host_memory.h), which cuts the 4 KiB case by about a third.

Huge pages are not always cheap, so ``$FLASHTENSORS_HUGE_PAGES`` (``auto``, the
default; ``on``; ``off``) decides, and ``auto`` uses them only when
- the kernel offers them on request (``transparent_hugepage/enabled`` is ``always`` or
  ``madvise``);
- the free lists hold enough free 2 MiB blocks for the buffer: with ``defrag`` at its
  default (``madvise``) a huge-page fault that finds none stalls in direct compaction;
- the machine does not report free memory to a hypervisor (a virtio balloon or Hyper-V
  with free page reporting, as Firecracker VMs do): the host then discards every free
  2 MiB block, and each fresh huge page costs host faults, 3 s per GiB measured on
  such a VM against 0.45 s for 4 KiB pages.

Example:
    >>> from flashtensors.memory import allocate_host
    >>> address, owner = allocate_host(1 << 20)
    >>> address % 4096, owner.nbytes >= 1 << 20
    (0, True)
"""

from __future__ import annotations

import os
from functools import lru_cache

from .errors import FlashError
from .formats.flash import ALIGNMENT

HUGE_PAGE = 2 << 20
# Buffers smaller than this stay on 4 KiB pages: the 2 MiB of alignment slack is not
# worth it, and a small buffer may come from the heap, already touched.
MIN_HUGE_BUFFER = 64 << 20
# Free memory in 2 MiB blocks left over after the buffer, for everything else.
HUGE_HEADROOM = 256 << 20
HUGE_PAGES_ENV = "FLASHTENSORS_HUGE_PAGES"
HUGE_PAGES_MODES = ("auto", "on", "off")
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
BUDDYINFO = "/proc/buddyinfo"
VIRTIO_BALLOONS = "/sys/bus/virtio/drivers/virtio_balloon"
HYPERV_BALLOONS = "/sys/bus/vmbus/drivers/hv_balloon"
VIRTIO_BALLOON_F_REPORTING = 5  # feature bit: the guest reports free pages to the host


def allocate_host(nbytes: int, alignment: int = ALIGNMENT):
    """A host buffer of ``nbytes`` for a load to read into: ``(address, owner)``, the
    address aligned to ``alignment`` (or to 2 MiB when huge pages back it) and ``owner``
    the uint8 torch tensor that holds the memory (keep it alive as long as the address
    is used). The memory is untouched, so the first write decides its pages.

    Example:
        >>> address, owner = allocate_host(256 << 20)
        >>> address % 4096
        0
    """
    import torch

    huge = nbytes >= MIN_HUGE_BUFFER and use_huge_pages(nbytes)
    align = HUGE_PAGE if huge else alignment
    owner = torch.empty(nbytes + align, dtype=torch.uint8)
    address = -(-owner.data_ptr() // align) * align
    if huge:
        from . import _native

        _native.module().advise_huge_pages(address, nbytes)
    return address, owner


def use_huge_pages(nbytes: int) -> bool:
    """Whether a fresh buffer of ``nbytes`` gets huge pages (see the module's notes).

    Example:
        >>> use_huge_pages(1 << 30) in (True, False)
        True
    """
    mode = huge_pages_mode()
    if mode == "off" or thp_mode() not in ("always", "madvise"):
        return False
    if mode == "on":
        return True
    return not reports_free_pages() and free_huge_block_bytes() >= nbytes + HUGE_HEADROOM


def huge_pages_mode() -> str:
    """``$FLASHTENSORS_HUGE_PAGES`` checked: ``auto`` (the default), ``on`` or ``off``."""
    mode = os.environ.get(HUGE_PAGES_ENV, "auto").strip().lower() or "auto"
    if mode not in HUGE_PAGES_MODES:
        raise FlashError(f"{HUGE_PAGES_ENV} must be one of {', '.join(HUGE_PAGES_MODES)}, "
                         f"not {os.environ[HUGE_PAGES_ENV]!r}")
    return mode


def thp_mode() -> str:
    """The kernel's transparent huge page mode (``always``, ``madvise`` or ``never``;
    ``never`` where it cannot be read)."""
    try:
        with open(THP_ENABLED) as f:
            text = f.read()
    except OSError:
        return "never"
    start, end = text.find("["), text.find("]")
    return text[start + 1:end] if 0 <= start < end else "never"


def free_huge_block_bytes(buddyinfo: str = BUDDYINFO) -> int:
    """Bytes free in blocks of 2 MiB or more (order >= 9 in ``/proc/buddyinfo``): what
    huge-page faults can take without compacting memory. 0 where it cannot be read."""
    try:
        with open(buddyinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    page = os.sysconf("SC_PAGE_SIZE")
    order_min = (HUGE_PAGE // page).bit_length() - 1
    total = 0
    for line in lines:
        counts = line.split()[4:]  # "Node 0, zone Normal c0 c1 ... c10"
        for order, count in enumerate(counts):
            if order >= order_min and count.isdigit():
                total += int(count) << order
    return total * page


@lru_cache(maxsize=None)
def reports_free_pages() -> bool:
    """Whether a balloon driver hands this machine's free memory back to a hypervisor
    (free page reporting), making each fresh huge page cost host faults."""
    try:
        virtio = [d for d in os.listdir(VIRTIO_BALLOONS) if d.startswith("virtio")]
    except OSError:
        virtio = []
    for device in virtio:
        try:
            with open(os.path.join(VIRTIO_BALLOONS, device, "features")) as f:
                features = f.read().strip()
        except OSError:
            continue
        if len(features) > VIRTIO_BALLOON_F_REPORTING and features[VIRTIO_BALLOON_F_REPORTING] == "1":
            return True
    try:
        return any(":" in d or "-" in d for d in os.listdir(HYPERV_BALLOONS))  # bound VMBus devices
    except OSError:
        return False
