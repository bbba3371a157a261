"""Errors a user can cause or fix; the CLI prints their message on one line and exits non-zero."""


class EdgeAgentError(Exception):
    """Base of every expected, user-facing failure. The message names the thing and the value."""

    exit_code = 1


class ConfigError(EdgeAgentError):
    """A configuration value (file, environment, flag) is invalid."""

    exit_code = 2


class SourceError(EdgeAgentError):
    """A video source (camera index, file, URL) cannot be opened or read."""


class ModelError(EdgeAgentError):
    """A model file is missing, corrupt, of the wrong architecture, or cannot be loaded."""


class AdapterError(EdgeAgentError):
    """A steering-vector adapter is malformed or does not fit the loaded model."""


class StoreError(EdgeAgentError):
    """The SQLite store cannot be opened, migrated, or does not hold the requested row."""


class QuestionError(EdgeAgentError):
    """A question or its options are unusable (empty, too many options, ...)."""


class DataError(EdgeAgentError):
    """A dataset or benchmark file is missing or not in the expected format."""
