"""The one exception type users see: a message that names the bad value and what is allowed."""


class PipelineError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits non-zero."""


class ConfigError(PipelineError):
    """A setting from the environment or the command line is invalid."""


class ServiceUnavailable(PipelineError):
    """PostgreSQL or Redis cannot be reached; the message says which URL and how to fix it."""


class InputError(PipelineError):
    """An input file or value is invalid; nothing has been written."""


class LakeBusy(PipelineError):
    """Another export holds the lake's lock."""
