"""Collective loads: the ranks of a torch.distributed process group read each byte of a
checkpoint from storage once, split evenly among them, and share it over the group's
backend (gloo between CPU processes, NCCL between GPUs).

Every rank plans its own load as usual (its tensors, its device map, its buffers); the
group then agrees on the checkpoint (the same tables on every rank, or every rank
raises before a byte moves), cuts the union of the byte ranges the ranks need into
pieces of PIECE_BYTES, and gives each piece an owner. Owners read their pieces with the
native engine, a few ahead, while the group broadcasts the pieces already read; each
rank copies out of every piece the bytes it asked for. As the pieces pass, the read step
(flashtensors/reading.py) can have them checked (each tensor by one rank) and written to
the local tier (by one rank per machine).

Failures are collective too: a rank that cannot plan or read tells the others, and
all raise FlashError naming it; a rank that dies or stops answering makes the others
raise within TIMEOUT_S.
"""

from __future__ import annotations

import bisect
import datetime
import pickle
import queue
import socket
import threading
from dataclasses import dataclass

from . import _native
from .errors import FlashDeviceError, FlashError

PIECE_BYTES = 16 << 20  # one broadcast; a multiple of the O_DIRECT block
READ_AHEAD = 4  # pieces an owner reads before they are broadcast
TIMEOUT_S = 60.0  # a peer that stops answering fails the load within this
_BLOCK = 4096


@dataclass(frozen=True)
class Need:
    """Bytes ``[offset, offset + length)`` of data file ``file``, to be copied into
    ``dest`` (a 1-D uint8 tensor of ``length`` bytes, on any device)."""

    file: int
    offset: int
    length: int
    dest: object


class GroupError(FlashError):
    """A collective load failed on some rank, or the ranks disagree."""


class GroupDeviceError(GroupError, FlashDeviceError):
    """A collective load failed on some rank for want of device room (every rank can then
    fall back the same way, e.g. to host memory)."""


class Collective:
    """One collective load over ``group``: small agreements, then the piece exchange."""

    def __init__(self, group, path):
        import torch
        import torch.distributed as dist

        self.dist, self.group, self.path = dist, group, path
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        backend = str(dist.get_backend(group)).lower()
        self.device = torch.device("cuda", torch.cuda.current_device()) \
            if "nccl" in backend and torch.cuda.is_available() else torch.device("cpu")
        self.timeout = datetime.timedelta(seconds=TIMEOUT_S)
        self.agreed = False

    # -- agreement ---------------------------------------------------------------------

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (picklable), within the timeout."""
        import torch

        raw = pickle.dumps(obj)
        size = torch.tensor([len(raw)], dtype=torch.int64, device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.size)]
        self._wait(self.dist.all_gather(sizes, size, group=self.group, async_op=True), "exchanging plans")
        longest = int(max(s.item() for s in sizes))
        mine = torch.zeros(longest, dtype=torch.uint8)
        mine[:len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
        mine = mine.to(self.device)
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        self._wait(self.dist.all_gather(parts, mine, group=self.group, async_op=True), "exchanging plans")
        return [pickle.loads(bytes(p[:int(s.item())].cpu().numpy())) for p, s in zip(parts, sizes)]

    def agree(self, fingerprint, needs, error: str | None, device_error: bool = False) -> dict:
        """Checks that every rank got ready and reads the same checkpoint; returns
        ``{"ranges": union of needed (file, start, end), "hosts": rank -> host name}``."""
        ranges = _merge((n.file, n.offset, n.offset + n.length) for n in needs) if error is None else []
        status = self.gather({"error": error, "device_error": device_error, "fingerprint": fingerprint,
                              "ranges": ranges, "host": socket.gethostname()})
        self.agreed = True
        failed = [(r, s) for r, s in enumerate(status) if s["error"] is not None]
        if failed:
            rank, s = failed[0]
            kind = GroupDeviceError if s["device_error"] else GroupError
            raise kind(f"{self.path}: collective load failed on rank {rank} of {self.size}: {s['error']}")
        prints = {s["fingerprint"] for s in status}
        if len(prints) > 1:
            raise GroupError(f"{self.path}: the ranks of the group are loading different checkpoints "
                             f"(fingerprints {[hex(s['fingerprint']) for s in status]}); every rank must "
                             "load the same checkpoint")
        union = _merge(r for s in status for r in s["ranges"])
        return {"ranges": union, "hosts": [s["host"] for s in status]}

    # -- the exchange -----------------------------------------------------------------

    def exchange(self, paths, ranges, needs, threads: int, io: str, timeout: float, *, chunk_bytes: int,
                 tees=None, checks=None, connections: int = 0) -> list:
        """Reads the owned pieces of ``ranges`` (in native reads of ``chunk_bytes``) and
        broadcasts every piece; copies each piece's bytes into the ``needs`` that overlap
        it. A piece that lies inside one need is read and received in place, with no copy.

        ``tees``: per data file, a native FileTee every piece of that file is written to
        (the local tier; this rank writes what the whole group read), or None.
        ``checks``: index entries, sorted by (file, offset), of the tensors to check:
        each is checked by one rank (the owner of the piece where it starts) as its
        pieces pass, so each byte is checked once by the group. Returns the entries whose
        checksum differs, the same list on every rank. ``connections``: remote requests in
        flight per read (0: the default)."""
        import torch

        pieces = _pieces(ranges)
        needs = sorted(needs, key=lambda n: (n.file, n.offset))
        targets = [_inside(needs, piece, self.device) for piece in pieces]
        mine = [i for i in range(len(pieces)) if i % self.size == self.rank]
        checker = _Checker(checks, pieces, self.rank, self.size) if checks is not None else None
        reader = _Reader(paths, [(pieces[i], targets[i]) for i in mine], threads, io, timeout, chunk_bytes,
                         connections)
        staging = torch.empty(PIECE_BYTES, dtype=torch.uint8, device=self.device)
        cursor, error = 0, None
        try:
            for i, (file, start, end) in enumerate(pieces):
                owner = i % self.size
                buffer = targets[i] if targets[i] is not None else staging[:end - start]
                if owner == self.rank:
                    data, failed = reader.next()
                    error = error or failed
                    if data is not None and data.data_ptr() != buffer.data_ptr():
                        buffer.copy_(data)
                # A failed read still sends its piece (garbage): the ranks stay in step,
                # and every rank learns of the failure below.
                self._wait(self.dist.broadcast(buffer, self.dist.get_global_rank(self.group, owner),
                                               group=self.group, async_op=True), "sharing the checkpoint")
                tee = tees[file] if tees else None
                if checker is not None or tee is not None:
                    host = buffer if buffer.device.type == "cpu" else buffer.cpu()
                    if tee is not None:
                        tee.write(host.data_ptr(), start, end - start)
                    if checker is not None:
                        checker.piece(i, host)
                if targets[i] is None:
                    cursor = _deliver(buffer, file, start, end, needs, cursor)
        finally:
            reader.close()
        reports = self.gather((error, checker.bad() if checker is not None else []))
        failed = [(r, e) for r, (e, _) in enumerate(reports) if e is not None]
        if failed:
            rank, message = failed[0]
            raise GroupError(f"{self.path}: rank {rank} of {self.size} could not read its share: {message}")
        bad = {name for _, names in reports for name in names}
        return [t for t in checks or [] if t.name in bad]

    def _wait(self, work, doing: str) -> None:
        try:
            work.wait(self.timeout)
        except RuntimeError as e:
            raise GroupError(f"{self.path}: {doing} with the group failed (a rank died or stopped answering "
                             f"for {TIMEOUT_S:.0f} s?): {e}".splitlines()[0]) from None

    def is_host_leader(self, hosts: list) -> bool:
        """Whether this rank is the lowest rank on its machine (it alone fills the page cache)."""
        return hosts.index(hosts[self.rank]) == self.rank


class _Reader:
    """Reads this rank's pieces, in order and a few ahead, on a thread of its own (the
    native reads release the GIL, so they overlap the broadcasts): straight into the
    piece's target where it has one in host memory, else into a staging buffer."""

    def __init__(self, paths, pieces, threads: int, io: str, timeout: float, chunk_bytes: int, connections: int):
        import torch

        self._free: queue.Queue = queue.Queue()
        for _ in range(READ_AHEAD):
            self._free.put(torch.empty(PIECE_BYTES + _BLOCK, dtype=torch.uint8))
        self._ready: queue.Queue = queue.Queue()
        self._ahead = threading.Semaphore(READ_AHEAD)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run,
                                        args=(paths, pieces, threads, io, timeout, chunk_bytes, connections),
                                        daemon=True, name="flashtensors-group-reader")
        self._thread.start()
        self._held = None

    def _run(self, paths, pieces, threads, io, timeout, chunk_bytes, connections):
        execute = _native.module().execute_plan
        for (file, start, end), target in pieces:
            while not self._ahead.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
            buf = None
            if target is not None and target.device.type == "cpu" and target.data_ptr() % _BLOCK == 0:
                data = target
            else:
                buf = self._free.get()
                shift = -buf.data_ptr() % _BLOCK  # O_DIRECT wants aligned memory
                data = buf[shift:shift + end - start]
            try:
                execute(paths, [(file, start, end - start, data.data_ptr(), -1)], threads, chunk_bytes, io, timeout,
                        connections=connections)
                self._ready.put((buf, data, None))
            except Exception as e:  # reported to the group after the exchange, never a hang
                self._ready.put((buf, None, f"{type(e).__name__}: {e}"))

    def next(self):
        """(uint8 tensor of the next piece, None) or (None, what went wrong)."""
        if self._held is not None:
            self._free.put(self._held)
        self._held, data, error = self._ready.get()
        self._ahead.release()
        return data, error

    def close(self):
        self._stop.set()
        self._thread.join()


class _Checker:
    """The checksums this rank computes in a collective read: of the tensors (index
    entries) that start in a piece it owns, over every piece they span, as the pieces
    pass (in order, so each checksum is extended front to back)."""

    def __init__(self, tensors, pieces, rank: int, size: int):
        starts = [(f, s) for f, s, _ in pieces]
        self.tensors, self.by_piece = [], {}
        for t in tensors:
            first = bisect.bisect_right(starts, (t.file, t.offset)) - 1
            if first < 0 or first % size != rank:
                continue
            last = bisect.bisect_right(starts, (t.file, t.offset + max(t.length, 1) - 1)) - 1
            for p in range(first, last + 1):
                self.by_piece.setdefault(p, []).append(len(self.tensors))
            self.tensors.append(t)
        self.crcs = [0] * len(self.tensors)
        self.pieces = pieces
        self.crc = _native.module().crc32c

    def piece(self, i: int, data) -> None:
        """Extends the checksums of this rank's tensors with piece ``i`` (``data``: its
        bytes, a host tensor)."""
        _, start, end = self.pieces[i]
        for j in self.by_piece.get(i, ()):
            t = self.tensors[j]
            lo, hi = max(start, t.offset), min(end, t.offset + t.length)
            if lo < hi:
                self.crcs[j] = self.crc(data.data_ptr() + lo - start, hi - lo, self.crcs[j])

    def bad(self) -> list:
        """Names of this rank's tensors whose checksum differs from the index."""
        return [t.name for t, crc in zip(self.tensors, self.crcs) if crc != t.crc32c]


def _merge(ranges) -> list:
    """Sorted, overlapping or touching (file, start, end) ranges merged."""
    out: list = []
    for file, start, end in sorted(ranges):
        if out and out[-1][0] == file and start <= out[-1][2]:
            out[-1] = (file, out[-1][1], max(out[-1][2], end))
        else:
            out.append((file, start, end))
    return out


def _pieces(ranges) -> list:
    """The ranges cut into pieces of at most PIECE_BYTES, starting on block boundaries
    (each range is widened to the block holding its start, so reads stay O_DIRECT)."""
    out = []
    for file, start, end in ranges:
        at = start // _BLOCK * _BLOCK
        while at < end:
            out.append((file, at, min(end, at + PIECE_BYTES)))
            at += PIECE_BYTES
    return out


def _inside(needs: list, piece, device):
    """The slice of the one need that holds all of ``piece`` on ``device``, or None."""
    file, start, end = piece
    i = bisect.bisect_right(needs, (file, start), key=lambda n: (n.file, n.offset)) - 1
    if i < 0:
        return None
    n = needs[i]
    if n.file != file or n.offset + n.length < end or n.dest.device != device:
        return None
    return n.dest[start - n.offset:end - n.offset]


def _deliver(piece, file: int, start: int, end: int, needs: list, cursor: int) -> int:
    """Copies ``piece`` (bytes ``[start, end)`` of ``file``) into every need it overlaps;
    ``needs`` are sorted and those before ``cursor`` are done. Returns the new cursor."""
    i = cursor
    while i < len(needs) and (needs[i].file, needs[i].offset + needs[i].length) <= (file, start):
        i += 1
    cursor = i
    while i < len(needs) and (needs[i].file, needs[i].offset) < (file, end):
        n = needs[i]
        lo, hi = max(start, n.offset), min(end, n.offset + n.length)
        if lo < hi:
            n.dest[lo - n.offset:hi - n.offset].copy_(piece[lo - start:hi - start])
        i += 1
    return cursor



def run(group, path, body):
    """Runs ``body(collective)``, a collective load; a rank that fails before the group
    agreed on the plan still takes part in the agreement, so every rank raises."""
    c = Collective(group, path)
    try:
        return body(c)
    except Exception as e:
        if c.agreed or isinstance(e, GroupError):
            raise
        c.agree(None, [], f"{type(e).__name__}: {e}" if not isinstance(e, FlashError) else str(e),
                device_error=isinstance(e, FlashDeviceError))
        raise  # not reached: agree() raised for everyone


def needs_of_ops(ops, buffers: dict) -> list:
    """Needs for native read ops ``(file, offset, length, dest address, device)`` into
    ``buffers`` (device code -> (base address, 1-D uint8 tensor owning the memory))."""
    out = []
    for file, offset, length, dest, device in ops:
        _, owner = buffers[device]
        at = dest - owner.data_ptr()
        out.append(Need(file, offset, length, owner[at:at + length]))
    return out
