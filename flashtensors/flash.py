"""The public API: ``from flashtensors import flash``.

Example:
    >>> import torch
    >>> from flashtensors import flash
    >>> flash.save_dict({"weight": torch.randn(3, 3)}, "/tmp/m")
    >>> sd = flash.load_dict("/tmp/m", {"": "cpu"})      # {"": 0} for the first GPU
"""

from __future__ import annotations

from .checkpoint import holds_checkpoint, open_checkpoint
from .checksums import verify as _verify
from .daemon.client import try_load
from .formats.index import Index
from .inplace import load_into as _load_into
from .loader import load as _load
from .options import LoadOptions
from .writer import CheckpointWriter

__all__ = ["save_dict", "load_dict", "load_into", "verify", "read_index", "is_checkpoint"]


def save_dict(state_dict, path, *, overwrite: bool = False, metadata: dict | None = None) -> None:
    """Saves a state dict as a flash checkpoint in directory ``path``.

    Tensors may live on any device (GPU tensors are copied out one at a time, never
    the whole model at once). Tensors that share storage, such as tied embeddings,
    are stored once and load back sharing storage; non-contiguous tensors and views
    load back equal in values, dtype and shape. The save is atomic: if it fails or
    the process dies, the checkpoint previously in ``path`` stays loadable.

    Args:
        state_dict: mapping of names (any strings) to torch.Tensor.
        path: directory to write; created if missing. It may hold other files
            (a model's config.json, tokenizer files): only the checkpoint's own
            files are written or replaced.
        overwrite: replace a flash checkpoint already in ``path``. Without it, an
            existing checkpoint raises FlashError.
        metadata: optional string-to-string pairs kept in the index.

    Raises:
        FlashError: bad input (a non-tensor value, an unsupported dtype, an existing
            checkpoint without ``overwrite``), naming the tensor.

    Example:
        >>> flash.save_dict(model.state_dict(), "/models/m")
    """
    with CheckpointWriter(path, overwrite=overwrite, metadata=metadata) as writer:
        writer.write(state_dict)


def load_dict(path, device_map=None, *, verify: bool = False, threads: int | None = None,
              server=None, group=None, timeout: float | None = None, cache_dir=None,
              connections: int | None = None) -> dict:
    """Loads a flash checkpoint and returns ``{name: tensor}`` in saved order.

    Each device gets one allocation holding all its tensors; the tensors are views into
    it. GPU tensors are read through a small reusable ring of pinned host buffers and
    copied while the next bytes are read; the page cache or the disk (O_DIRECT) is
    chosen per piece, by whether the data is already cached.

    Args:
        path: a flash checkpoint directory, a ``.safetensors`` file, or a directory of
            safetensors weights in the Hugging Face layout (``model.safetensors``, or the
            shards of ``model.safetensors.index.json``; Hub cache snapshots included),
            read in place with no conversion. A directory holding both a flash checkpoint
            and safetensors loads the flash checkpoint. Any of these may be remote: an
            ``http://``/``https://`` URL (a web server, a presigned URL of one file) or
            ``s3://bucket/prefix``; the bytes stream from the network straight into the
            tensors' memory (docs/remote.md).
        device_map: where tensors go, as in accelerate/transformers: a dict from name
            prefixes to devices (a tensor matches key ``k`` when its name is ``k`` or
            starts with ``k + "."``; ``""`` matches all; the longest key wins), or one
            device for everything. Devices are a GPU index, ``"cuda:N"``, ``"cpu"`` or a
            ``torch.device``. Default: everything on ``"cpu"``.
        verify: check every tensor's CRC-32C over the bytes loaded, before returning
            (local copies of the local tier included; in a group, each byte once by the
            group, and every rank raises the same FlashChecksumError). Flash checkpoints
            only: safetensors files carry no checksums, and asking raises FlashError.
        threads: I/O threads (default: between 4 and 16, by CPU count).
        server: the cache daemon (``flashtensors serve``) to map CPU tensors from: its
            socket path, or ``False`` for none. Default: ``$FLASHTENSORS_SERVER``, else
            the default socket, if a daemon listens there; without one (or if it fails)
            the checkpoint is loaded directly. The daemon serves local flash checkpoints
            to one process: naming a server together with ``group``, ``verify=True`` or
            a URL raises FlashError (by default it is just not used then). See docs/daemon.md.
        group: a ``torch.distributed`` process group: a collective call (every rank of
            the group must make it, with the same checkpoint). Each rank gets what its
            own call asks for (its device_map), while the group reads each byte from
            storage once, split among the ranks, and shares it over the group's backend
            (gloo, or NCCL between GPUs). See docs/distributed.md.
        timeout: remote checkpoints: seconds a read may go without receiving a byte,
            retries included, before the load fails (default ``$FLASHTENSORS_TIMEOUT``,
            else 30).
        cache_dir: remote checkpoints (a FlashError for a local one): the local tier, a directory where the data files
            streamed are also written as they arrive (default ``$FLASHTENSORS_CACHE_DIR``;
            ``False``: none). A later load of the same URL reads the local copy of every
            data file whose remote object is unchanged (same size and ETag) as it reads
            local files (page cache, O_DIRECT). A copy is kept only once every byte of its
            file arrived; a failed load keeps none. See docs/remote.md.
        connections: remote checkpoints (a FlashError for a local one): requests kept in
            flight, one connection each, 1 to 1024 (default ``$FLASHTENSORS_CONNECTIONS``,
            else 32: S3 serves a connection at about 100 MB/s, and 32 fill 25 Gb/s). Memory
            in flight for CPU targets: none beyond the tensors'; for GPU targets the pinned
            ring stays within 512 MiB whatever the count. See docs/remote.md.

    Raises:
        FlashFormatError: the checkpoint is missing, invalid, truncated or corrupt.
        FlashDeviceError: the device_map is invalid, leaves a tensor out, names a
            device this machine lacks, or the tensors do not fit on their GPU.
        FlashRemoteError: a remote object is missing (404) or forbidden (403), or the
            server kept failing or stopped answering; nothing is returned.

    Example:
        >>> sd = flash.load_dict("/models/m", {"": 0})
        >>> sd = flash.load_dict("/models/m", {"model.layers": 0, "lm_head": "cpu"})
        >>> sd = flash.load_dict("/models/Qwen3-8B", 0)      # a Hugging Face directory, as it is
        >>> sd = flash.load_dict("/models/m", {"": rank}, group=torch.distributed.group.WORLD)
        >>> sd = flash.load_dict("s3://bucket/models/Qwen3-8B", {"": 0})
        >>> sd = flash.load_dict("s3://bucket/models/Qwen3-8B", {"": 0}, cache_dir="/nvme/weights")
        >>> sd = flash.load_dict("https://weights.example.com/m", "cpu", connections=64)
    """
    options = LoadOptions.resolve(path, verify=verify, threads=threads, server=server, group=group,
                                  timeout=timeout, cache_dir=cache_dir, connections=connections)
    if options.server is not False:
        cached = try_load(path, device_map, options.server)
        if cached is not None:
            return cached
    return _load(path, device_map, options)


def load_into(path, tensors: dict, *, verify: bool = False, threads: int | None = None, group=None,
              timeout: float | None = None, cache_dir=None, connections: int | None = None) -> None:
    """Reads checkpoint tensors straight into existing tensors, such as a model's
    parameters, with no intermediate copy and no new allocation.

    Args:
        path: a checkpoint, as for :func:`load_dict`.
        tensors: ``{name: tensor}`` to fill, on the CPU or a CUDA device; each must have
            the checkpoint's dtype and shape. Checkpoint tensors not named are skipped.
        verify: check the CRC-32C of every tensor filled, over the bytes filled in
            (flash checkpoints only), as for :func:`load_dict`.
        threads: I/O threads (default: between 4 and 16, by CPU count).
        group: a ``torch.distributed`` process group, as for :func:`load_dict`: ranks may
            fill different tensors; each byte is read from storage once by the group.
        timeout: remote checkpoints, as for :func:`load_dict`.
        cache_dir: remote checkpoints, as for :func:`load_dict`. Only data files all of
            whose tensors are named in ``tensors`` are copied there.
        connections: remote checkpoints, as for :func:`load_dict`.

    Raises:
        FlashFormatError: a name is not in the checkpoint, a dtype or shape differs, or
            the checkpoint is invalid, truncated or corrupt.
        FlashRemoteError: as for :func:`load_dict`.

    Example:
        >>> params = dict(model.named_parameters())
        >>> flash.load_into("/models/m", {n: p.data for n, p in params.items()})
        >>> flash.load_into("https://weights.example.com/m", {n: p.data for n, p in params.items()})
    """
    _load_into(path, tensors, LoadOptions.resolve(path, verify=verify, threads=threads, group=group,
                                                  timeout=timeout, cache_dir=cache_dir, server=False,
                                                  connections=connections))


def verify(path, *, threads: int | None = None, timeout: float | None = None) -> int:
    """Recomputes every tensor's CRC-32C and compares it with the index (of a local or
    remote flash checkpoint; ``timeout`` as for :func:`load_dict`).

    Returns the number of tensors checked.

    Raises:
        FlashChecksumError: (a FlashFormatError) naming the mismatching tensors and files.
        FlashFormatError: the checkpoint is missing, invalid or truncated.

    Example:
        >>> flash.verify("/models/m")
        399
    """
    return _verify(path, threads=threads, timeout=timeout)


def read_index(path) -> Index:
    """The validated index of the checkpoint in ``path`` (a flash checkpoint, or plain
    safetensors: ``.kind`` says which): ``.tensors`` maps names to entries (``dtype``,
    ``shape``, data ``file``, ``offset``, ``length``, ``crc32c``, None for safetensors),
    ``.files`` lists the data files, ``.metadata`` the saved metadata.

    Example:
        >>> flash.read_index("/models/m").tensors["weight"].shape
        (3, 3)
    """
    return open_checkpoint(path).index  # a URL too


def is_checkpoint(path) -> bool:
    """Whether ``path`` holds a checkpoint :func:`load_dict` loads: a flash checkpoint, a
    ``.safetensors`` file or a directory of safetensors weights (the same formats, in the
    same order, as every load: flashtensors/formats/__init__.py). A local path or a URL; never
    raises for a missing or unreadable one.

    Example:
        >>> flash.is_checkpoint("/models/m"), flash.is_checkpoint("/models/Qwen3-8B")
        (True, True)
    """
    return holds_checkpoint(path)
