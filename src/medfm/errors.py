"""Errors that the command line shows as one clear message instead of a traceback."""


class MedfmError(Exception):
    """Base class for user-facing errors: bad input, bad configuration, missing data."""


class ConfigError(MedfmError):
    """A configuration file or override is invalid."""


class DataError(MedfmError):
    """A data source cannot be read as a whole (a single bad file is skipped, not raised)."""
