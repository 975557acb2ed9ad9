"""User-facing errors: one base class, messages that name the problem and the fix."""


class FtPluginError(Exception):
    """An error the user can fix. The CLI prints it on one line and exits with status 2."""


class DataError(FtPluginError, ValueError):
    """A dataset, file, column or label problem."""


class MethodError(FtPluginError, ValueError):
    """An unknown method, a bad hyper-parameter or an incompatible combination."""


class ModelError(FtPluginError, OSError):
    """A base model or adapter that cannot be found or does not fit."""


class CheckpointWriteError(FtPluginError, OSError):
    """A checkpoint file that could not be written (a full disk). Each process writes files of its own (its random
    state), so any process may meet it alone, and each reports it."""


class HubUnreachableError(ModelError):
    """A Hub id that is not cached while the Hub cannot be reached (a candidate to skip, not a typo). `problem` is
    the message without its fix, for callers whose fix differs (a `select-model` candidate)."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(f"{problem}: {fix}" if fix else problem)  # one argument: how a pickled copy comes back
        self.problem = problem


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): libraries' messages are often
    long and multi-line, ft-plugin's errors are one line."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
