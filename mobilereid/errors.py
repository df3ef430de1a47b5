"""One error type for every problem a user can fix (bad paths, bad files, bad options).

The CLI prints such an error as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class MobileReIDError(Exception):
    """A user-facing error: its message is one sentence naming the file or option and the problem."""


class DatasetError(MobileReIDError):
    """A dataset folder, file name or image that cannot be used."""


class CheckpointError(MobileReIDError):
    """A checkpoint that is missing, not a checkpoint, or does not fit the model it describes."""


class ExportError(MobileReIDError):
    """An export that cannot be done or whose artifact failed verification."""
