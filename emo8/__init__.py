"""Emo8: build, curate, version and audit a visual-emotion dataset of the 8 Mikels emotions."""

from emo8.core.workspace import Workspace, WorkspaceError

__version__ = "0.1.0"
__all__ = ["Workspace", "WorkspaceError", "__version__"]
