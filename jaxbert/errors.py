"""The errors a user's input causes, as opposed to a bug: a bad config or option, a missing or unreadable file,
a checkpoint of another model, no network.

Every one derives from `UserError`; the entry scripts print it as one line (`train.py: error: ...`, saying what
to do about it) and exit non-zero, while any other exception is a bug and keeps its traceback. Each also derives
from the builtin error of its kind (`ValueError`, `FileNotFoundError`, `ConnectionError`), for code that catches
those. Plain Python: every layer may import it.
"""


class UserError(Exception):
    """A problem with the user's input; its message names the file, key or argument and says the fix."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named, or the run needs, is not there."""


class OfflineError(UserError, ConnectionError):
    """Something had to be downloaded and the network (or the Hub) could not be reached."""


class DataError(UserError, ValueError):
    """A data file or source that cannot be read as its task's: unreadable, undecodable, or lacking a column."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that does not fit: another architecture, missing or unexpected tensors, other shapes."""


class RunStopped(UserError):
    """A run that ended before its last step, at a state it can continue from (`--resume`): preempted by a
    signal, or stopped by a non-finite loss."""
