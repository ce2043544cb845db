"""Support for the SGLang tests: loads models with SGLang's real model loader on the CPU, in
a fresh process (SGLang's plugins, runtime config and process groups are per process).

The process loads each case twice: once from the server arguments the case gives (parsed
by SGLang's own command-line parser, after SGLang ran its plugins, so ``--load-format flash``
comes from flashtensors' entry point) and once with SGLang's own safetensors loader from a
reference directory; it reports whether every parameter and buffer is equal.

Example::

    [run] = load_cases([{"argv": ["--model-path", fl, "--load-format", "flash"], "reference": st}], tmp_path)
    assert run.results[0]["equal"]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vllm_models import Run, engine_env

SGLANG_VERSION = "0.5.23"  # the version CI installs (.ci/run) and the adapter is tested with


def require_sglang() -> None:
    """Skips the calling test module without SGLang, or fails it where FLASHTENSORS_REQUIRE_SGLANG=1 (CI).
    Looks for the package without importing it (its import needs sglang_shims here)."""
    import importlib.util
    import os

    import pytest

    if importlib.util.find_spec("sglang") is None:
        if os.environ.get("FLASHTENSORS_REQUIRE_SGLANG") == "1":
            pytest.fail("SGLang is not installed, and FLASHTENSORS_REQUIRE_SGLANG=1 (CI) requires it")
        pytest.skip(f"SGLang is not installed (pip install --no-deps sglang=={SGLANG_VERSION}; see .ci/run)",
                    allow_module_level=True)


def load_cases(cases: list[dict], workdir: Path, *, tp_size: int = 1, env: dict | None = None,
               timeout: float = 900) -> list[Run]:
    """Runs ``cases`` in fresh processes, one per tensor-parallel rank (``tp_size``; the
    ranks form SGLang's process groups over gloo). A case: ``argv`` (SGLang server arguments;
    the device and tensor-parallel size are added), optionally ``update`` (a directory or URL
    then loaded in place by SGLang's ``update_weights_from_disk``), and ``reference`` (a
    safetensors directory of the weights the model should end up with). Returns one Run per
    rank; each result: ``{"equal": bool, "names": n, "differ": [...], "loader": class name,
    "shapes": {name: shape}}`` or ``{"error": str}``."""
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    spec = workdir / "cases.json"
    spec.write_text(json.dumps(cases, default=str))
    init = f"tcp://127.0.0.1:{_free_port()}"
    outs = [workdir / f"results-{rank}.json" for rank in range(tp_size)]
    logs = [open(workdir / f"rank-{rank}.log", "w+") for rank in range(tp_size)]
    procs = [subprocess.Popen([sys.executable, __file__, str(spec), str(outs[rank]), str(rank), str(tp_size), init],
                              stdout=logs[rank], stderr=subprocess.STDOUT, cwd=workdir,
                              env={**engine_env(), **(env or {})}) for rank in range(tp_size)]
    runs = []
    try:
        for rank, proc in enumerate(procs):
            code = proc.wait(timeout=timeout)
            logs[rank].seek(0)
            log = logs[rank].read()
            if code != 0 or not outs[rank].exists():
                raise AssertionError(f"the SGLang run failed on rank {rank} (exit {code}):\n{log[-6000:]}")
            runs.append(Run(json.loads(outs[rank].read_text()), log))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    return runs


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _load(place: tuple, argv: list[str] | None, reference: str | None = None):
    """A model loaded by SGLang's ``get_model`` from server arguments ``argv``, or from the
    safetensors in ``reference`` with SGLang's own loader; and the loader class used."""
    from sglang.srt.configs.device_config import DeviceConfig
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.configs.model_config import ModelConfig
    from sglang.srt.model_loader import get_model, get_model_loader
    from sglang.srt.runtime_context import SpawnRanks, publish
    from sglang.srt.server_args import prepare_server_args

    rank, tp_size, init = place
    if reference is not None:
        argv = ["--model-path", reference, "--load-format", "safetensors"]
    args = prepare_server_args([*argv, "--device", "cpu", "--tp-size", str(tp_size)])
    publish(args, role="scheduler", ranks=SpawnRanks(world_rank=rank))
    _init_process_groups(rank, tp_size, init)
    model_config = ModelConfig.from_server_args(args)
    load_config = LoadConfig(load_format=args.load_format, model_loader_extra_config=args.model_loader_extra_config,
                             download_dir=args.download_dir)  # as SGLang's model runner makes it
    loader = type(get_model_loader(load_config, model_config)).__name__
    model = get_model(model_config=model_config, load_config=load_config, device_config=DeviceConfig("cpu"))
    return model, loader, model_config


def _update_from_disk(model, model_config, path: str) -> tuple[bool, str]:
    """SGLang's own in-place reload (``update_weights_from_disk``, the code behind the server's
    ``/update_weights_from_disk``) with ``load_format="flash"``, on ``model``. The model runner
    around it is absent: its bookkeeping callbacks do nothing here."""
    from sglang.srt.model_executor.model_runner_components.weight_updater import WeightUpdater

    def nothing(*args, **kwargs):
        return None

    updater = WeightUpdater(tp_rank=0, device="cpu", gpu_id=0, model_config=model_config, custom_weight_loaders={},
                            get_model=lambda: model, update_model_fields=nothing, recapture_cuda_graph=nothing,
                            get_model_runner=nothing)
    return updater.update_weights_from_disk(model_path=path, load_format="flash")


def _init_process_groups(rank: int, tp_size: int, init: str) -> None:
    """SGLang's process groups (once per process), over gloo as SGLang does on the CPU."""
    from sglang.srt.distributed import init_distributed_environment, initialize_model_parallel
    from sglang.srt.distributed.parallel_state import model_parallel_is_initialized

    if not model_parallel_is_initialized():
        init_distributed_environment(backend="gloo", world_size=tp_size, rank=rank, local_rank=rank,
                                     distributed_init_method=init)
        initialize_model_parallel()


def _run_case(place: tuple, case: dict) -> dict:
    import torch

    try:
        model, loader, model_config = _load(place, case["argv"])
        if "update" in case:
            ok, message = _update_from_disk(model, model_config, case["update"])
            if not ok:
                return {"error": message}
    except Exception as e:  # noqa: BLE001 -- the test checks the message
        return {"error": f"{type(e).__name__}: {e}"}
    reference, _, _ = _load(place, None, case["reference"])
    got, want = model.state_dict(), reference.state_dict()
    differ = sorted(n for n in set(got) | set(want)
                    if n not in got or n not in want or not torch.equal(got[n], want[n]))
    return {"equal": not differ and len(got) > 0, "names": len(got), "differ": differ, "loader": loader,
            "shapes": {n: list(t.shape) for n, t in got.items()}}


def main(spec: str, out: str, rank: str, tp_size: str, init: str) -> None:
    import sglang_shims

    sglang_shims.install()
    from sglang.srt.plugins import load_plugins

    load_plugins()  # as SGLang's launcher and schedulers do: runs flashtensors' entry point
    place = (int(rank), int(tp_size), init)
    results = [_run_case(place, case) for case in json.loads(Path(spec).read_text())]
    Path(out).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:])
