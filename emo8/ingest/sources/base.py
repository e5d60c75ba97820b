"""The source interface, its registry, and the reader for locally stored origins."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

from emo8.core.catalog import OriginRecord


class SourceError(ValueError):
    """A source cannot be read (missing file, unknown format, missing column...)."""


class Source(Protocol):
    """Anything with a registry ``name`` that yields origin records."""

    name: ClassVar[str]

    def records(self) -> Iterator[OriginRecord]:
        """Yield one record per image the source offers, lazily (sources may be large)."""
        ...


SOURCES: dict[str, type[Any]] = {}
_S = TypeVar("_S")


def register_source(cls: type[_S]) -> type[_S]:
    """Class decorator: make ``cls`` available to :func:`create_source` under ``cls.name``."""
    SOURCES[cls.name] = cls  # type: ignore[attr-defined]
    return cls


def create_source(name: str, **options: Any) -> Source:
    """Instantiate the registered source ``name`` with ``options``; raise :class:`SourceError` if unknown."""
    try:
        cls = SOURCES[name]
    except KeyError:
        raise SourceError(f"unknown source {name!r}; known: {', '.join(sorted(SOURCES))}") from None
    source: Source = cls(**options)
    return source


#: Readers for ``source_path`` values with a scheme prefix (``hf://...``); plain paths are files.
LOCAL_READERS: dict[str, Callable[[str], bytes]] = {}


def read_local(source_path: str) -> bytes:
    """Return the bytes behind a locally stored origin (a file path, or a ``scheme://`` registered reader)."""
    scheme, sep, _ = source_path.partition("://")
    if sep and scheme in LOCAL_READERS:
        return LOCAL_READERS[scheme](source_path)
    return Path(source_path).read_bytes()
