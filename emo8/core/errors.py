"""Errors shared across the toolkit."""


class WorkspaceError(RuntimeError):
    """A workspace is missing, malformed, or cannot be written (e.g. the disk is full)."""
