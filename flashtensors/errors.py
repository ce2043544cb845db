"""The exceptions flashtensors raises. Every message names the file and, where there is
one, the tensor concerned."""


class FlashError(Exception):
    """Base class of every error flashtensors raises on purpose."""


class FlashFormatError(FlashError):
    """A checkpoint is invalid, corrupt, truncated or missing files."""


class FlashChecksumError(FlashFormatError):
    """Tensor bytes do not match the checksums recorded when they were saved.

    ``mismatches`` lists ``(tensor_name, data_file)`` for every tensor that failed.
    """

    def __init__(self, message: str, mismatches: list):
        super().__init__(message)
        self.mismatches = mismatches


class FlashDeviceError(FlashError):
    """A device map is invalid, names a device this machine lacks, or a target is too small."""
