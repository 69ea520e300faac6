"""The one exception base of llmi3d_core, so callers (the ROS node, the CLI) can catch ours only."""


class Llmi3dError(Exception):
    """Base class of every error raised on purpose by llmi3d_core."""


class InvalidInputError(Llmi3dError, ValueError):
    """Input that cannot be processed: wrong shape, dtype, non-finite or out-of-range values.

    Subclasses ValueError so that plain `except ValueError` keeps working.
    """


class ConfigError(Llmi3dError, ValueError):
    """A configuration value or file that is unknown, of the wrong type or inconsistent."""


class DataFormatError(Llmi3dError, ValueError):
    """A dataset file that does not follow its format; the message names the file and line."""


class CheckpointError(Llmi3dError):
    """A checkpoint that is missing, incomplete or does not match the model it is loaded into."""


class ModelOutputError(Llmi3dError):
    """The model produced an unusable output (NaN or infinite values, an unparsable answer)."""
