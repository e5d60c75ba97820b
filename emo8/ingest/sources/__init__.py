"""Image sources: small adapters behind one interface, found through a registry.

A source yields :class:`~emo8.core.catalog.OriginRecord` s; the ingest stage registers them, then fetches each pending
item by URL (the downloader) or by ``source_path`` (:func:`read_local`). Adding a source = one module with a class
decorated by :func:`register_source`.
"""

from __future__ import annotations

from emo8.ingest.sources.base import SOURCES, Source, SourceError, create_source, read_local, register_source
from emo8.ingest.sources.folder import FolderSource
from emo8.ingest.sources.hf import HFSource
from emo8.ingest.sources.openverse import OpenverseSource
from emo8.ingest.sources.urls import UrlListSource

__all__ = [
    "SOURCES",
    "FolderSource",
    "HFSource",
    "OpenverseSource",
    "Source",
    "SourceError",
    "UrlListSource",
    "create_source",
    "read_local",
    "register_source",
]
