"""``emo8 ingest folder``: images in a local directory."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from emo8.core.catalog import OriginRecord
from emo8.core.taxonomy import normalise_label
from emo8.ingest.sources.base import SourceError, register_source

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})


@register_source
@dataclass
class FolderSource:
    """Every image file under ``directory`` (by suffix; the format itself is sniffed later from the bytes).

    ``label_from_dir`` takes the weak label from the parent directory's name when it names one of the 8 emotions
    (the raw name is kept in ``meta["dir_label"]`` either way).
    """

    directory: str
    recursive: bool = False
    label_from_dir: bool = False
    domain: str | None = None
    keyword: str | None = None
    license: str | None = None
    #: Things the user should know, printed after the ingest (e.g. images in subfolders not read).
    warnings: list[str] = field(default_factory=list)

    name: ClassVar[str] = "folder"

    def records(self) -> Iterator[OriginRecord]:
        root = Path(self.directory).expanduser().resolve()
        if not root.is_dir():
            raise SourceError(f"{root} is not a directory")
        if not self.recursive:
            self._warn_about_subfolders(root)
        for path in _walk(root, self.recursive):
            meta: dict[str, object] = {"relative_path": str(path.relative_to(root))}
            weak_label = None
            if self.label_from_dir:
                meta["dir_label"] = path.parent.name
                weak_label = normalise_label(path.parent.name)
            yield OriginRecord(
                origin_key=f"file:{path}",
                source=self.name,
                source_path=str(path),
                title=path.stem,
                license=self.license,
                domain=self.domain,
                keyword=self.keyword,
                weak_label=weak_label,
                meta=meta,
            )

    def _warn_about_subfolders(self, root: Path) -> None:
        subfolders = sorted(
            d
            for d in root.iterdir()
            if d.is_dir() and not d.name.startswith(".") and next(_walk(d, True), None)
        )
        if subfolders:
            names = ", ".join(d.name for d in subfolders[:5]) + (", ..." if len(subfolders) > 5 else "")
            self.warnings.append(
                f"{len(subfolders)} subfolder(s) of {root} hold images that were not read ({names}); "
                "--recursive reads them"
                + (" (and --label-from-dir labels them by folder)" if self.label_from_dir else "")
            )


def _walk(root: Path, recursive: bool) -> Iterator[Path]:
    """Yield image files under ``root`` in sorted order (deterministic ids and progress)."""
    if not recursive:
        entries = sorted(p for p in root.iterdir() if p.is_file())
        yield from (p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            path = Path(dirpath) / filename
            if path.suffix.lower() in IMAGE_SUFFIXES and not filename.startswith("."):
                yield path
