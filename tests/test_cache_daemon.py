"""The cache daemon (`flashtensors serve`) serving real checkpoints to real clients:
equal to direct loads, LRU eviction, reloads of rewritten checkpoints, clean stops, CLI."""

import os

import pytest
import torch

from flashtensors import FlashChecksumError, FlashError, flash
from flashtensors.cli import main
from flashtensors.daemon.holdings import Holdings
from flashtensors.daemon.protocol import DaemonError

from cache_helpers import Daemon, same_tensors
from helpers import state_dict

MiB = 1 << 20


def views_and_dtypes() -> dict:
    """Tied tensors, a strided view and six dtypes, as a model's state dict has them."""
    gen = torch.Generator().manual_seed(0)
    embed = torch.randn(64, 32, generator=gen)
    return {
        "embed": embed,
        "tied": embed,  # shared storage
        "transposed": embed.t(),  # strided view of the same storage
        "bf16": torch.randn(1000, generator=gen).to(torch.bfloat16),
        "int64": torch.arange(513),
        "bool": torch.rand(77, generator=gen) > 0.5,
        "scalar": torch.tensor(3.5),
        "empty": torch.empty(0, 4),
    }


def test_load_through_the_daemon_equals_a_direct_load(daemon, tmp_path, monkeypatch):
    ckpt = tmp_path / "m"
    sd = views_and_dtypes()
    flash.save_dict(sd, ckpt)
    direct = flash.load_dict(ckpt, server=False)
    served = daemon.client.load_tensors(ckpt)
    assert same_tensors(served, direct)
    assert same_tensors(served, {k: v.contiguous() if k != "transposed" else v for k, v in sd.items()})
    ptr = lambda t: t.untyped_storage().data_ptr()
    assert ptr(served["tied"]) == ptr(served["embed"]) == ptr(served["transposed"])
    assert ptr(served["bf16"]) != ptr(served["embed"])

    # The ordinary API finds it by an argument or by FLASHTENSORS_SERVER.
    assert same_tensors(flash.load_dict(ckpt, server=daemon.socket), direct)
    monkeypatch.setenv("FLASHTENSORS_SERVER", daemon.socket)
    assert same_tensors(flash.load_dict(ckpt, {"": "cpu"}), direct)
    [entry] = daemon.client.ls()["entries"]
    assert entry["path"] == str(ckpt.resolve()) and entry["served"] == 3 and entry["pinned"] == 0

    # Copy-on-write: a client writing to its tensors changes neither the cache nor the file.
    served["int64"].add_(1000)
    assert torch.equal(daemon.client.load_tensors(ckpt)["int64"], sd["int64"])
    assert torch.equal(flash.load_dict(ckpt, server=False)["int64"], sd["int64"])


def test_lru_eviction_under_a_small_budget(sock, tmp_path):
    ckpts = {}
    for name, seed in [("a", 1), ("b", 2), ("c", 3)]:
        ckpts[name] = tmp_path / name
        flash.save_dict(state_dict(seed, n=4), ckpts[name])  # 1 MiB each
    with Daemon(sock, memory="2.5MiB") as d:
        for name in ["a", "b", "a", "c"]:  # touching a makes b the least recently used
            d.client.load(ckpts[name])
        info = d.client.ls()
        assert [e["path"] for e in info["entries"]] == [str(ckpts["c"].resolve()), str(ckpts["a"].resolve())]
        assert info["used"] == 2 * MiB
        assert "evicted (least recently used)" in d.log() and str(ckpts["b"].resolve()) in d.log()
        # Each still loads right, evicting as it goes.
        for name, seed in [("b", 2), ("c", 3), ("a", 1)]:
            assert same_tensors(d.client.load_tensors(ckpts[name]), state_dict(seed, n=4))
        assert len(d.client.ls()["entries"]) == 2

        # A checkpoint larger than the budget is refused by the daemon and loaded directly.
        big = tmp_path / "big"
        flash.save_dict(state_dict(9, n=12), big)
        with pytest.raises(DaemonError, match="does not fit"):
            d.client.load(big)
        assert same_tensors(flash.load_dict(big, server=d.socket), state_dict(9, n=12))


def test_a_checkpoint_being_served_is_never_evicted(tmp_path, monkeypatch):
    from flashtensors.daemon import holdings

    monkeypatch.setattr(holdings, "PIN_WAIT_S", 0.2)  # the pin below is never let go while it waits
    a, b = tmp_path / "a", tmp_path / "b"
    flash.save_dict(state_dict(1, n=4), a)
    flash.save_dict(state_dict(2, n=4), b)
    store = Holdings(budget=int(1.5 * MiB))
    entry = store.acquire(str(a))  # pinned, as while it is sent to a client
    with pytest.raises(DaemonError, match="being served"):
        store.acquire(str(b))
    store.release(entry)
    store.release(store.acquire(str(b)))
    assert [e["path"] for e in store.describe()["entries"]] == [str(b)]
    store.close()
    assert store.used == 0


def test_a_checkpoint_rewritten_on_disk_is_reloaded_not_served_stale(daemon, tmp_path):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(1), ckpt)
    old = daemon.client.load_tensors(ckpt)
    flash.save_dict(state_dict(2), ckpt, overwrite=True)
    assert same_tensors(daemon.client.load_tensors(ckpt), state_dict(2))
    assert same_tensors(flash.load_dict(ckpt, server=daemon.socket), state_dict(2))
    assert "changed on disk" in daemon.log()
    assert same_tensors(old, state_dict(1))  # tensors already handed out stay intact
    [entry] = daemon.client.ls()["entries"]
    assert entry["bytes"] == daemon.client.ls()["used"]  # the old version's memory was given back


def test_evict_frees_the_cache_and_mapped_tensors_stay_valid(daemon, tmp_path):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(5), ckpt)
    out = daemon.client.load_tensors(ckpt)
    assert daemon.client.evict(ckpt) is True
    assert daemon.client.evict(ckpt) is False
    assert daemon.client.ls() == {"ok": True, "budget": 1 << 30, "used": 0, "entries": []}
    assert same_tensors(out, state_dict(5))


def test_sigterm_stops_the_daemon_cleanly(sock, tmp_path):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(5), ckpt)
    d = Daemon(sock)
    try:
        d.client.load(ckpt)
        assert d.stop() == 0
        assert not os.path.exists(sock)
        assert "loaded " in d.log() and "stopped" in d.log()
    finally:
        d.kill()
    # The next load finds no daemon and loads directly.
    assert same_tensors(flash.load_dict(ckpt, server=sock), state_dict(5))


def test_cli_cache_ls_load_evict(daemon, tmp_path, capsys):
    ckpt = tmp_path / "m"
    flash.save_dict(state_dict(5), ckpt)
    assert main(["cache", "--socket", daemon.socket, "load", str(ckpt)]) == 0
    assert "cached " in capsys.readouterr().out
    assert main(["cache", "--socket", daemon.socket, "ls"]) == 0
    out = capsys.readouterr().out
    assert "1 checkpoints" in out and str(ckpt.resolve()) in out
    assert main(["cache", "--socket", daemon.socket, "evict", str(ckpt)]) == 0
    assert "evicted" in capsys.readouterr().out
    assert main(["cache", "--socket", daemon.socket, "load", str(tmp_path / "absent")]) == 1
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["cache", "--socket", daemon.socket, "load", str(tmp_path / "empty")]) == 1
    assert "no flash checkpoint" in capsys.readouterr().err
    assert main(["cache", "--socket", daemon.socket + ".absent", "ls"]) == 1
    assert "no cache daemon" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "nbytes"), [("64GiB", 64 << 30), ("8GB", 8 * 10**9), ("512MiB", 512 << 20),
                                              ("1.5g", 1_500_000_000), ("4096", 4096)])
def test_serve_memory_sizes(text, nbytes):
    from flashtensors.cli.serve import parse_size

    assert parse_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "lots", "-1GiB", "0", "12 parsecs", "1e9"])
def test_serve_refuses_bad_memory_sizes(text, capsys):
    with pytest.raises(SystemExit) as e:
        main(["serve", f"--memory={text}"])
    assert e.value.code == 2 and "expected a size" in capsys.readouterr().err


def test_a_data_file_rewritten_in_place_is_reloaded_and_verify_reads_the_disk(daemon, tmp_path):
    ckpt = tmp_path / "m"
    sd = state_dict(7, n=2)
    flash.save_dict(sd, ckpt)
    assert same_tensors(flash.load_dict(ckpt, server=daemon.socket), sd)
    # Same index, data file rewritten in place (not something flashtensors does, but a user may).
    (data,) = [p for p in ckpt.iterdir() if p.suffix == ".flash"]
    raw = bytearray(data.read_bytes())
    raw[0] ^= 0xFF
    data.write_bytes(bytes(raw))
    served = flash.load_dict(ckpt, server=daemon.socket)
    direct = flash.load_dict(ckpt, server=False)
    assert same_tensors(served, direct) and not same_tensors(served, sd)
    # verify=True checks the bytes loaded from the files on disk, never the daemon's: naming
    # the daemon with it is refused, and by default the daemon is not asked.
    before = daemon.client.ls()["entries"][0]["served"]
    with pytest.raises(FlashError, match="server= .*cannot be combined with verify=True"):
        flash.load_dict(ckpt, verify=True, server=daemon.socket)
    with pytest.raises(FlashChecksumError):
        flash.load_dict(ckpt, verify=True)
    assert daemon.client.ls()["entries"][0]["served"] == before
