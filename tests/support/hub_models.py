"""Support for the tests that name models by Hub repo ID through an engine or transformers:
a model directory published to the mock Hub (tests/support/hub_mock.py), and the environment that
points huggingface_hub at it, for this process and for the processes a test starts.

Example::

    with MockHub() as hub:
        commit = publish(hub, "testorg/tiny", st_dir)
        env = hub_environment(hub, tmp_path / "hf-cache")      # HF_ENDPOINT, HF_HUB_CACHE, online
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path


def publish(hub, repo_id: str, model_dir: Path, branch: str = "main") -> str:
    """Commits every file of ``model_dir`` (top level) to ``repo_id``; returns the commit."""
    files = {p.name: p.read_bytes() for p in sorted(Path(model_dir).iterdir()) if p.is_file()}
    return hub.commit(repo_id, files, branch=branch)


def hub_environment(hub, cache: Path, *, offline: bool = False) -> dict:
    """The environment of a process that uses the mock Hub and the Hub cache ``cache``
    (no token, no Xet, online unless ``offline``)."""
    off = "1" if offline else "0"
    return {"HF_ENDPOINT": hub.url, "HF_HUB_CACHE": str(cache), "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN_PATH": str(Path(cache).parent / "no-token"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_OFFLINE": off, "TRANSFORMERS_OFFLINE": off}


@contextmanager
def hub_in_this_process(hub, cache: Path):
    """This process's huggingface_hub pointed at the mock Hub and ``cache`` within the block
    (its constants are read at import, so they are set as well as the environment)."""
    import pytest
    from huggingface_hub import constants

    with pytest.MonkeyPatch.context() as mp:
        for name, value in hub_environment(hub, cache).items():
            mp.setenv(name, value)
        mp.delenv("HF_TOKEN", raising=False)
        mp.delenv("FLASHTENSORS_CACHE_DIR", raising=False)
        template = constants.HUGGINGFACE_CO_URL_TEMPLATE.replace(constants.ENDPOINT, hub.url, 1)
        for name, value in (("HUGGINGFACE_CO_URL_TEMPLATE", template), ("ENDPOINT", hub.url),
                            ("HF_HUB_CACHE", str(cache)), ("HF_HUB_OFFLINE", False),
                            ("HF_TOKEN_PATH", str(Path(cache).parent / "no-token"))):
            mp.setattr(constants, name, value)
        yield
