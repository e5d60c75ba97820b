"""A workspace: the directory that holds one Emo8 build.

Layout::

    <root>/
      emo8.json            workspace config (format version, stage settings, service connections)
      catalog.sqlite       the catalog (see emo8.core.catalog), WAL mode
      objects/ab/<sha256>.<ext>   original image bytes, content-addressed, written atomically
      reports/             JSON/HTML reports of each stage
      embeddings/          per-model embedding shards
      releases/            versioned dataset releases
      tmp/                 scratch space for atomic writes
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from emo8.core.catalog import ITEM_COLUMNS, Catalog, utc_now
from emo8.core.errors import WorkspaceError

CONFIG_NAME = "emo8.json"
CATALOG_NAME = "catalog.sqlite"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ObjectStore:
    """Content-addressed image bytes under ``root`` (``ab/abcdef....jpg``); picklable, so decode workers write too."""

    root: Path
    tmp: Path

    def path(self, sha256: str, fmt: str | None) -> Path:
        """Return where the bytes with ``sha256`` in format ``fmt`` (e.g. ``"jpeg"``) are stored."""
        return self.root / sha256[:2] / f"{sha256}{_EXTENSIONS.get(fmt or '', '.bin')}"

    def put(self, data: bytes, fmt: str | None, sha256: str | None = None) -> tuple[str, bool]:
        """Store ``data`` atomically unless present; return ``(sha256, newly_written)``.

        Raises :class:`WorkspaceError` when the disk is full; nothing partial is left behind.
        """
        digest = sha256 or hashlib.sha256(data).hexdigest()
        path = self.path(digest, fmt)
        if path.exists():
            return digest, False
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data, self.tmp, durable=False)
        return digest, True


class Workspace:
    """An Emo8 workspace rooted at ``root``; create one with :meth:`init`, open one with :meth:`open`."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.config = config
        self.catalog = Catalog(root / CATALOG_NAME)
        self.objects = ObjectStore(root / "objects", root / "tmp")

    # -- creation -------------------------------------------------------------------------------------------

    @classmethod
    def init(cls, path: str | os.PathLike[str], exist_ok: bool = True) -> Workspace:
        """Create a workspace at ``path`` (idempotent when ``exist_ok``) and return it opened."""
        root = Path(path).expanduser().resolve()
        config_path = root / CONFIG_NAME
        if config_path.exists():
            if not exist_ok:
                raise WorkspaceError(f"{root} is already an Emo8 workspace")
            return cls.open(root)
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("objects", "reports", "embeddings", "releases", "tmp"):
            (root / sub).mkdir(exist_ok=True)
        config = {"format_version": FORMAT_VERSION, "created_at": utc_now()}
        _atomic_write(config_path, json.dumps(config, indent=2).encode(), root / "tmp")
        return cls(root, config)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Workspace:
        """Open the workspace at ``path``; raise :class:`WorkspaceError` if it is not one."""
        root = Path(path).expanduser().resolve()
        config_path = root / CONFIG_NAME
        if not config_path.is_file():
            raise WorkspaceError(
                f"{root} is not an Emo8 workspace (no {CONFIG_NAME}); create one with `emo8 init`"
            )
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise WorkspaceError(f"cannot read {config_path}: {exc}") from exc
        version = config.get("format_version")
        if version != FORMAT_VERSION:
            raise WorkspaceError(f"{root} has workspace format {version!r}; this emo8 reads {FORMAT_VERSION}")
        return cls(root, config)

    # -- paths ------------------------------------------------------------------------------------------------

    @property
    def objects_dir(self) -> Path:
        return self.root / "objects"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def embeddings_dir(self) -> Path:
        return self.root / "embeddings"

    @property
    def releases_dir(self) -> Path:
        return self.root / "releases"

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def object_path(self, sha256: str, fmt: str | None) -> Path:
        """Return where the bytes with ``sha256`` in format ``fmt`` (e.g. ``"jpeg"``) are stored."""
        return self.objects.path(sha256, fmt)

    def read_object(self, sha256: str, fmt: str | None) -> bytes:
        """Return the stored bytes of ``sha256``."""
        return self.objects.path(sha256, fmt).read_bytes()

    # -- config -----------------------------------------------------------------------------------------------

    def save_config(self) -> None:
        """Persist :attr:`config` atomically."""
        _atomic_write(self.root / CONFIG_NAME, json.dumps(self.config, indent=2).encode(), self.tmp_dir)

    # -- catalog views ----------------------------------------------------------------------------------------

    def items(self, columns: Sequence[str] | None = None, where: str | None = None) -> pd.DataFrame:
        """Return the catalog as a DataFrame, one row per item, optionally filtered by SQL ``where``.

        Without ``columns``, every column of docs/catalog.md (:data:`emo8.core.catalog.ITEM_COLUMNS`) in that order,
        whatever stages have run: a column a stage has not added yet is all-null. Columns holding JSON lists
        (``person_boxes``, ``face_boxes``, ``suggestion_probs``, ``label_distribution``) come back parsed, as
        lists (None where empty); text cells are None where empty, numbers NaN. ``where`` is SQL over the columns
        the catalog has now.

        Raises
        ------
        WorkspaceError
            For a column name that is neither documented nor in the catalog.
        """
        from emo8.core.curation import json_list  # curation builds on this module

        existing = self.catalog.columns()
        wanted = (
            list(dict.fromkeys(columns))
            if columns
            else [*ITEM_COLUMNS, *(c for c in existing if c not in ITEM_COLUMNS)]
        )
        unknown = [c for c in wanted if c not in ITEM_COLUMNS and c not in existing]
        if unknown:
            raise WorkspaceError(
                f"unknown item column(s) {', '.join(unknown)}; the columns are listed in docs/catalog.md"
            )
        have = set(existing)
        selected = [c for c in wanted if c in have] or ["item_id"]
        df = self.catalog.items(selected, where)
        for column in wanted:
            kind = ITEM_COLUMNS.get(column, "text")
            if column not in df.columns:
                df[column] = [None] * len(df) if kind in ("text", "list") else float("nan")
            elif kind == "list":
                df[column] = pd.Series([json_list(v) for v in df[column]], index=df.index, dtype=object)
            elif kind in ("integer", "real"):
                df[column] = pd.to_numeric(df[column], errors="coerce")
            else:
                df[column] = df[column].astype(object).where(df[column].notna(), None)
        return df[wanted]

    def origins(self, item_id: str | None = None) -> pd.DataFrame:
        """Return the origins table (every place each item was found)."""
        return self.catalog.origins(item_id)

    def status(self) -> dict[str, dict[str, int]]:
        """Return item counts by status, reason, source, domain and weak_label."""
        return {
            "status": self.catalog.counts("status"),
            "reason": self.catalog.counts("reason", where="reason IS NOT NULL"),
            "source": self.catalog.counts("source"),
            "domain": self.catalog.counts("domain", where="status = 'valid'"),
            "weak_label": self.catalog.counts("weak_label", where="status = 'valid'"),
        }


_EXTENSIONS = {
    "jpeg": ".jpg",
    "png": ".png",
    "webp": ".webp",
    "gif": ".gif",
    "bmp": ".bmp",
    "tiff": ".tif",
}


def _atomic_write(path: Path, data: bytes, tmp_dir: Path, durable: bool = True) -> None:
    """Write ``data`` to ``path`` via a temp file in ``tmp_dir`` and a rename; never leave a partial file.

    ``durable`` adds an fsync before the rename (config files); image objects skip it for throughput: the rename
    alone is atomic against a killed process, which is the guarantee the catalog documents.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except OSError as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if exc.errno == errno.ENOSPC:
            raise WorkspaceError(
                f"disk full while writing {path}; free space and re-run (nothing was lost)"
            ) from exc
        raise
