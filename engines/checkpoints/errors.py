"""The one error of the checkpoint modules, so that callers catch a single type."""


class CheckpointError(ValueError):
    """A checkpoint or bundle cannot be read, imported or loaded; the message says why."""
