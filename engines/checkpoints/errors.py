"""The one error of the checkpoint modules, so that callers catch a single type."""

from engines.errors import UserError


class CheckpointError(UserError, ValueError):
    """A checkpoint or bundle cannot be read, imported or loaded; the message says why."""
