"""One exception type for every user-facing error: the CLI prints its message on one line
and exits non-zero, with no traceback (set TETHER_DEBUG=1 to see one)."""


class TetherError(Exception):
    """A problem the user can fix: bad config, missing file, malformed data row, ..."""


class ConfigError(TetherError):
    """Unknown key, wrong type or invalid value in a config file or a key=value override."""


class DataError(TetherError):
    """A malformed input row or an unreadable data file; the message names file:row: field."""
