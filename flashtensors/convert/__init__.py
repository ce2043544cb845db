"""``convert``, ``fetch`` and ``upload`` as a library: turning weights people keep
(safetensors, PyTorch ``.bin``/``.pt``, Hugging Face directories; local or remote) into
flash checkpoints, and moving checkpoints and their model files between places.

- to_flash.py: :func:`~flashtensors.convert.to_flash.convert` and ``upload`` (what the CLI runs)
- sources.py: the weights a conversion reads, file by file (local paths)
- remote_source.py: the same for URLs (tensors streamed through the loader)
- model_files.py: which files of a model directory are weights, and fetching the others
- upload.py: writing a flash checkpoint to S3, data files first and the index last

Example:
    >>> from flashtensors.convert.to_flash import convert
    >>> convert("Qwen3-0.6B/", "Qwen3-0.6B-flash/")                  # doctest: +SKIP
    'converted 311 tensors (1.50GB) from Qwen3-0.6B into Qwen3-0.6B-flash; copied 7 files'
"""
