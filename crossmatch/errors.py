"""Errors that carry a message for the user (file or key, and the fix)."""


class CrossMatchError(Exception):
    """Base class: the CLI prints these without a traceback."""


class DataError(CrossMatchError):
    """Missing, corrupt or out-of-range input data."""


class ConfigError(CrossMatchError):
    """A bad experiment configuration key or value."""


class TrainingDiverged(CrossMatchError):
    """A loss became NaN or Inf."""
