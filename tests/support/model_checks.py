"""Comparing loaded transformers models, and watching who reads safetensors files.

Example::

    from model_checks import assert_same_model, SafetensorsReads

    with SafetensorsReads() as reads:
        model = AutoModelForCausalLM.from_pretrained(path)
    assert reads.by_transformers == []          # transformers' reader was not used
    assert_same_model(model, reference)
"""

from __future__ import annotations

import contextlib
import sys

import safetensors
import safetensors.torch
import torch

INPUT_IDS = torch.tensor([[2, 40, 77, 90, 15, 200, 3, 9]])


@contextlib.contextmanager
def patched_transformers():
    """transformers patched (with the defaults) inside the block, unpatched after it."""
    from flashtensors.integrations import transformers as flash_tf

    flash_tf.patch()
    try:
        yield
    finally:
        flash_tf.unpatch()


def load_model(arch: str, path, **kwargs):
    """``from_pretrained(path, **kwargs)`` of the Auto class for ``arch`` (a tiny_models.ARCHS key)."""
    from transformers import AutoModel, AutoModelForCausalLM

    return (AutoModel if arch == "bert" else AutoModelForCausalLM).from_pretrained(path, **kwargs)


def output(model):
    """The model's logits (or last hidden state) for INPUT_IDS."""
    with torch.no_grad():
        out = model(input_ids=INPUT_IDS.to(model.device))
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def assert_same_model(a, b):
    """Same parameters and buffers (names, dtypes, devices, bits), same outputs."""
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert sa[name].dtype == sb[name].dtype, name
        assert sa[name].device == sb[name].device, name
        assert torch.equal(sa[name], sb[name]), name
    assert torch.equal(output(a), output(b))


def tied_pairs(model):
    """(name, name) of parameters that share one tensor."""
    seen, pairs = {}, []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            pairs.append((seen[id(param)], name))
        seen.setdefault(id(param), name)
    return pairs


class SafetensorsReads:
    """While active, records every use of the safetensors library's readers (``safe_open``,
    ``load_file``, ``load``) by transformers and accelerate, and every ``flash.load_dict``.

    The readers are replaced by counting wrappers wherever those libraries' loaded modules
    hold a reference to them (they import them by name), so a read through any of their
    code paths is seen. ``by_transformers`` lists the first argument of each call (a path,
    or bytes), ``by_flashtensors`` the paths given to ``flash.load_dict``.
    """

    READERS = {"safe_open": safetensors.safe_open, "load_file": safetensors.torch.load_file,
               "load": safetensors.torch.load}

    def __init__(self):
        self.by_transformers: list = []
        self.by_flashtensors: list = []
        self._undo: list = []

    def _counting(self, reader, sink):
        def wrapper(*args, **kwargs):
            sink.append(args[0] if args else kwargs)
            return reader(*args, **kwargs)

        return wrapper

    def _replace(self, owner, name, value):
        self._undo.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    def __enter__(self):
        from flashtensors import flash

        wrappers = [(reader, self._counting(reader, self.by_transformers)) for reader in self.READERS.values()]
        for module_name, module in list(sys.modules.items()):
            if not module_name.startswith(("transformers", "accelerate")):
                continue
            for name, value in list(getattr(module, "__dict__", {}).items()):
                for reader, wrapper in wrappers:
                    if value is reader:
                        self._replace(module, name, wrapper)
        self._replace(flash, "load_dict", self._counting(flash.load_dict, self.by_flashtensors))
        return self

    def __exit__(self, *exc):
        while self._undo:
            owner, name, value = self._undo.pop()
            setattr(owner, name, value)
