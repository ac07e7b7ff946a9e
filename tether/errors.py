"""One exception type for every user-facing error: the CLI prints its message on one line
and exits non-zero, with no traceback (set TETHER_DEBUG=1 to see one)."""


class TetherError(Exception):
    """A problem the user can fix: bad config, missing file, malformed data row, ..."""


class ConfigError(TetherError):
    """Unknown key, wrong type or invalid value in a config file or a key=value override."""


class DataError(TetherError):
    """A malformed input row or an unreadable data file; the message names file:row: field."""


class RunStopped(Exception):
    """A training run stopped before its end (SIGINT/SIGTERM, or a critical doctor finding):
    its checkpoint is written, its final model is not. Not a TetherError: nothing is wrong
    with the input, but the CLI must not exit 0, so it exits with ``exit_code`` (128 + the
    signal's number, the shell's convention; 1 for other reasons)."""

    def __init__(self, message: str, run_dir, exit_code: int):
        super().__init__(message)
        self.run_dir = run_dir
        self.exit_code = exit_code
