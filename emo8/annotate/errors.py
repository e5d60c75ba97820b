"""Errors of the annotation stage; the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class AnnotateError(RuntimeError):
    """Base class of the annotation stage's errors."""


class LabelConfigError(AnnotateError):
    """The label config is missing, is not valid XML, or lacks the controls and choices emo8 needs."""


class ServerError(AnnotateError):
    """The Label Studio server cannot be installed, started, reached or authenticated against."""


class ServerUnavailable(ServerError):
    """The server stayed unreachable (or kept failing with 5xx / timeouts) past the retry deadline."""


class ExportFormatError(AnnotateError):
    """A file given to ``emo8 annotate import`` is not a usable Label Studio JSON export."""


class RoundError(AnnotateError):
    """A round is unknown, empty, or inconsistent with the workspace."""
