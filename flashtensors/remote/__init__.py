"""Remote checkpoints: ``http://``, ``https://`` and ``s3://`` URLs of a checkpoint
directory (or of one ``.safetensors`` file), loaded with the same engine as local files.

Python fetches only the small parts (the flash index, safetensors headers, the Hugging
Face weight index) and the objects' sizes and ETags, through the stores here (store.py:
web servers; s3.py: S3 through botocore; tiered.py: the local tier over either); the
tensor bytes are read by the native core with HTTP range GETs straight into the load's
buffers (csrc/http_source.cpp). Locations become stores in flashtensors/locations.py.
See docs/remote.md.

Example:
    >>> from flashtensors import flash
    >>> sd = flash.load_dict("http://10.0.0.5:8080/models/m", "cpu")        # doctest: +SKIP
    >>> sd = flash.load_dict("s3://bucket/models/m", {"": 0})               # doctest: +SKIP
"""
