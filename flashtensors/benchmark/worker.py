"""One timed load in a fresh process, as a serving replica pays it at start-up: the
staging ring pinned, the files opened, the pages faulted in, all inside the clock.

torch (and, for GPU runs, CUDA) is initialised and the loader's module imported before
the clock starts, the same for every loader. Run by the benchmark runner as
``python -m flashtensors.benchmark.worker SPEC_FILE`` (a JSON file: loader, device,
flash_dir, files, names, expected); prints one JSON line.
"""

from __future__ import annotations

import importlib
import json
import sys
import time


def prepare_process(spec_file: str) -> tuple:
    """What every timed-load process does before its clock starts: reads its spec, makes
    CUDA ready on a GPU device, keeps cold runs cold. Returns ``(spec, torch.device)``."""
    import torch

    from .. import loader as flash_loader

    with open(spec_file) as f:
        spec = json.load(f)
    device = torch.device(spec["device"])
    if device.type == "cuda":
        torch.empty(1, device=device)
    flash_loader.CACHE_AFTER_COLD_LOAD = False  # cold runs must stay cold
    return spec, device


def main(argv) -> int:
    from .peers import LOADERS
    from .runner import check, settle

    spec, device = prepare_process(argv[1])
    loader = next(ld for ld in LOADERS if ld.name == spec["loader"])
    importlib.import_module(loader.module)
    try:
        start = time.perf_counter()
        tensors, _keepalive = loader.load(spec["flash_dir"], spec["files"], device, spec["names"])
        settle(tensors, device)
        seconds = time.perf_counter() - start
        error = check(tensors, spec["expected"]) if spec["expected"] else ""
    except Exception as e:  # a peer's failure is reported, not fatal
        seconds, error = None, f"{type(e).__name__}: {e}".splitlines()[0][:160]
    print(json.dumps({"seconds": seconds, "error": error}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
