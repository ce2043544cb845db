"""Process bodies for tests/test_group_load.py: ranks of a real gloo process group, run
by ``run_group``. Each reports (rank, "ok" or its error, facts) on the queue."""

import os
import time

import torch
import torch.distributed as dist

from flashtensors import flash, group

from helpers import assert_same
from processes import run_spawned


def _rank_main(rank, world, rdv, queue, body):
    group.TIMEOUT_S = 20.0
    try:
        dist.init_process_group("gloo", init_method=f"file://{rdv}", rank=rank, world_size=world)
        facts = body(rank, world)
        queue.put((rank, "ok", facts))
    except BaseException as e:  # report, never leave the parent waiting
        queue.put((rank, f"{type(e).__name__}: {e}", None))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def full_load(rank, world, rdv, path, queue):
    """Every rank loads the whole checkpoint; compares with a plain load."""
    def body(rank, world):
        out = flash.load_dict(path, group=dist.group.WORLD)
        assert_same(out, flash.load_dict(path, server=False))
        storages = [t.untyped_storage().data_ptr() for t in out.values() if t.numel()]
        return {"tensors": len(out), "storages": len(set(storages))}
    _rank_main(rank, world, rdv, queue, body)


def own_tensors(rank, world, rdv, path, queue):
    """Each rank fills its own share of the tensors (load_into), some strided."""
    def body(rank, world):
        plain = flash.load_dict(path, server=False)
        names = [n for i, n in enumerate(plain) if i % world == rank]
        targets = {n: torch.zeros_like(plain[n]) for n in names}
        if rank == 0:
            first = names[0]
            targets[first] = torch.zeros(tuple(reversed(plain[first].shape)), dtype=plain[first].dtype).t()
        flash.load_into(path, targets, group=dist.group.WORLD)
        for n in names:
            assert torch.equal(targets[n], plain[n]), n
        return {"names": len(names)}
    _rank_main(rank, world, rdv, queue, body)


def rank_paths(rank, world, rdv, paths, queue):
    """Rank r loads paths[r] (mismatched or missing checkpoints)."""
    def body(rank, world):
        flash.load_dict(paths[rank], group=dist.group.WORLD)
    _rank_main(rank, world, rdv, queue, body)


def dies_before_loading(rank, world, rdv, path, queue):
    """The last rank exits without a word after joining the group."""
    def body(rank, world):
        # The group is only joined once every rank got past this: a rank that exits while
        # gloo still connects the others fails their init_process_group, not their load.
        dist.barrier()
        if rank == world - 1:
            os._exit(3)
        flash.load_dict(path, group=dist.group.WORLD)
    _rank_main(rank, world, rdv, queue, body)


def run_group(body, world: int, scratch, *args, timeout: float = 240) -> dict:
    """Runs ``body(rank, world, rendezvous file, *args, queue)`` on ``world`` spawned ranks;
    returns ``{rank: what it put on the queue after its rank}`` for the ranks that reported
    within ``timeout`` seconds (every rank is stopped by then)."""
    rdv = os.path.join(os.fspath(scratch), f"rdv-{time.monotonic_ns()}")
    reports, _ = run_spawned([(body, (rank, world, rdv, *args)) for rank in range(world)], timeout)
    return {rank: tuple(report) for rank, *report in reports}
