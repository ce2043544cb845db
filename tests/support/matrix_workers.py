"""Ranks of a real gloo group for tests/test_load_matrix.py: each rank runs a list of
collective loads and reports, per case, "ok", or the error it raised and how long the
case took. Rank r loads with its own device map, and load_into fills its own tensors."""

import os
import time

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from flashtensors import flash, group

from group_workers import run_group
from helpers import assert_same


def device_map(rank: int):
    # Different device maps per rank (one machine has only the CPU: different keys, same device).
    return "cpu" if rank == 0 else {"layers.0": "cpu", "": "cpu"}


def run_case(rank: int, world: int, case: dict, expected: dict, group_=None):
    """One load as the case says; raises AssertionError when the tensors differ."""
    location, method, options = case["location"], case["method"], case.get("options", {})
    if method == "load_dict":
        got, want = flash.load_dict(location, device_map(rank), group=group_, **options), expected
    else:
        names = [n for i, n in enumerate(sorted(expected)) if group_ is None or i % world == rank]
        got, want = {n: torch.zeros_like(expected[n]) for n in names}, {n: expected[n] for n in names}
        flash.load_into(location, got, group=group_, **options)
    assert_same(got, want, ordered=False)


def rank_main(rank, world, rdv, cases, expected_file, queue):
    group.TIMEOUT_S = 20.0
    results = []
    try:
        dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
        expected = load_file(expected_file)
        for case in cases:
            if case.get("before"):  # a file to corrupt, by the rank that owns the machine's files
                if rank == 0:
                    flip_byte(*case["before"])
                dist.barrier()
            started = time.monotonic()
            try:
                run_case(rank, world, case, expected, dist.group.WORLD)
                results.append(("ok", time.monotonic() - started))
            except Exception as e:  # reported per case: the next case still runs, in step
                results.append((f"{type(e).__name__}: {e}", time.monotonic() - started))
        queue.put((rank, results))
    except BaseException as e:
        queue.put((rank, f"{type(e).__name__}: {e}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def flip_byte(path: str, offset: int) -> None:
    """Inverts the byte at ``offset`` of file ``path`` (keeping its size and times)."""
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def run_cases(scratch, expected_file: str, cases: list, world_size: int = 2, timeout: float = 600) -> dict:
    """Runs ``cases`` on ``world_size`` spawned ranks (rendezvous in directory ``scratch``);
    returns ``{rank: [(status, seconds) per case]}``, every rank having reported."""
    reports = {rank: report[0] for rank, report in
               run_group(rank_main, world_size, scratch, cases, expected_file, timeout=timeout).items()}
    assert set(reports) == set(range(world_size)), reports
    assert all(isinstance(r, list) for r in reports.values()), reports
    return reports
