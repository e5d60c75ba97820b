"""A workspace: the directory that holds one Emo8 build.

Layout::

    <root>/
      emo8.json            workspace config (format version, stage settings, service connections)
      catalog.sqlite       the catalog (see emo8.core.catalog), WAL mode
      objects/ab/<sha256>.<ext>   original image bytes, content-addressed, written atomically; or, when
                           emo8.json names ``objects`` (a directory or an fsspec URL such as s3://bucket/emo8),
                           the same layout there, and objects/ is this machine's read cache (see ObjectStore)
      reports/             JSON/HTML reports of each stage
      embeddings/          per-model embedding shards
      releases/            versioned dataset releases
      tmp/                 scratch space for atomic writes
"""

from __future__ import annotations

import errno
import functools
import hashlib
import itertools
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import pandas as pd

from emo8.core.catalog import ITEM_COLUMNS, Catalog, utc_now
from emo8.core.errors import WorkspaceError

CONFIG_NAME = "emo8.json"
CATALOG_NAME = "catalog.sqlite"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ObjectStore:
    """Content-addressed image bytes (``ab/abcdef....jpg``): in the local directory ``root``, or at the fsspec
    ``url`` (``s3://bucket/prefix``, ``gs://...``, ``file:///shared/objects``, ``memory://name``).

    Picklable, so decode workers and Ray workers write and read through it too. Writes are idempotent (an object
    that exists is never rewritten) and atomic (a rename locally; a single PUT on object stores). With a ``url``,
    ``root`` is this machine's read cache: :meth:`local_path` downloads an object there once, for the stages that
    open files. ``tmp`` is local scratch space on ``root``'s filesystem (spooled downloads are renamed from it).
    """

    root: Path
    tmp: Path
    url: str | None = None

    @classmethod
    def at(cls, location: str | os.PathLike[str] | None, workspace: Path) -> ObjectStore:
        """The store of a workspace: ``<workspace>/objects`` by default, a directory (e.g. on a shared
        filesystem), or an fsspec URL (cached under ``<workspace>/objects``)."""
        if location is None:
            return cls(workspace / "objects", workspace / "tmp")
        if "://" in str(location):
            return cls(workspace / "objects", workspace / "tmp", str(location).rstrip("/"))
        root = Path(location).expanduser().resolve()
        return cls(root, root / ".tmp")

    @property
    def shared(self) -> bool:
        """Whether other processes see this store's writes (fsspec's ``memory://`` lives in one process)."""
        return self.url is None or not self.url.startswith("memory://")

    def key(self, sha256: str, fmt: str | None) -> str:
        """The object's name inside the store: ``ab/<sha256>.<ext>``."""
        return f"{sha256[:2]}/{sha256}{_EXTENSIONS.get(fmt or '', '.bin')}"

    def path(self, sha256: str, fmt: str | None) -> Path:
        """Where the bytes of ``sha256`` in format ``fmt`` (e.g. ``"jpeg"``) are stored on this machine (for a
        ``url`` store: where :meth:`local_path` caches them)."""
        return self.root / self.key(sha256, fmt)

    def location(self, sha256: str, fmt: str | None) -> str:
        """A path or URL that :func:`read_location` reads on any worker."""
        return f"{self.url}/{self.key(sha256, fmt)}" if self.url else str(self.path(sha256, fmt))

    def exists(self, sha256: str, fmt: str | None) -> bool:
        if self.url is None:
            return self.path(sha256, fmt).exists()
        fs, base = _filesystem(self.url)
        return bool(fs.exists(f"{base}/{self.key(sha256, fmt)}"))

    def put(self, data: bytes, fmt: str | None, sha256: str | None = None) -> tuple[str, bool]:
        """Store ``data`` atomically unless present; return ``(sha256, newly_written)``.

        Raises :class:`WorkspaceError` when the disk is full; nothing partial is left behind.
        """
        digest = sha256 or hashlib.sha256(data).hexdigest()
        if self.url is not None:
            return digest, self._put_remote(data, self.key(digest, fmt))
        path = f"{self.root}/{self.key(digest, fmt)}"  # a str: Path objects cost more than the write here
        if os.path.exists(path):
            return digest, False
        _atomic_write(path, data, self.tmp, durable=False, make_parent=True)
        return digest, True

    def put_spooled(self, spooled: str | os.PathLike[str], data: bytes, fmt: str | None, sha256: str) -> bool:
        """Store ``data``, already written to the file ``spooled`` in :attr:`tmp`, which this consumes: locally
        it is renamed into place; for a ``url`` store ``data`` is uploaded. Returns whether the object is new."""
        if self.url is not None:
            try:
                return self._put_remote(data, self.key(sha256, fmt))
            finally:
                Path(spooled).unlink(missing_ok=True)
        target = f"{self.root}/{self.key(sha256, fmt)}"
        if os.path.exists(target):
            Path(spooled).unlink(missing_ok=True)
            return False
        _replace_making_parent(spooled, target)
        return True

    def _put_remote(self, data: bytes, key: str) -> bool:
        from fsspec.implementations.local import LocalFileSystem

        fs, base = _filesystem(self.url or "")
        target = f"{base}/{key}"
        if fs.exists(target):
            return False
        try:
            if isinstance(fs, LocalFileSystem):  # a file system: write beside the target, then rename
                fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                part = f"{target}.part-{os.getpid()}-{uuid.uuid4().hex}"
                fs.pipe_file(part, data)
                fs.mv(part, target)
            else:  # object stores: one PUT is atomic
                fs.pipe_file(target, data)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise WorkspaceError(f"disk full while writing {target}; free space and re-run") from exc
            raise
        return True

    def read(self, sha256: str, fmt: str | None) -> bytes:
        """The stored bytes (:class:`FileNotFoundError` when absent)."""
        if self.url is None:
            return self.path(sha256, fmt).read_bytes()
        fs, base = _filesystem(self.url)
        return bytes(fs.cat_file(f"{base}/{self.key(sha256, fmt)}"))

    def open(self, sha256: str, fmt: str | None) -> BinaryIO:
        """The stored bytes as a binary file object (:class:`FileNotFoundError` when absent)."""
        if self.url is None:
            return self.path(sha256, fmt).open("rb")
        fs, base = _filesystem(self.url)
        return cast(BinaryIO, fs.open(f"{base}/{self.key(sha256, fmt)}", "rb"))

    def source(self, sha256: str, fmt: str | None) -> Path | bytes:
        """What :func:`emo8.core.imaging.load_rgb` opens: the file itself locally, the bytes from a ``url``."""
        return self.path(sha256, fmt) if self.url is None else self.read(sha256, fmt)

    def local_path(self, sha256: str, fmt: str | None) -> Path:
        """A local file with the object's bytes: the object itself, or for a ``url`` store a copy cached under
        :attr:`root` (fetched once; the returned path does not exist when the store lacks the object)."""
        path = self.path(sha256, fmt)
        if self.url is None or path.exists():
            return path
        try:
            data = self.read(sha256, fmt)
        except FileNotFoundError:
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, data, self.tmp, durable=False)
        return path

    def delete(self, sha256: str, fmt: str | None) -> bool:
        """Delete the object (and its cached copy); return whether it existed."""
        existed = self.exists(sha256, fmt)
        if self.url is not None and existed:
            fs, base = _filesystem(self.url)
            fs.rm_file(f"{base}/{self.key(sha256, fmt)}")
        cached = self.path(sha256, fmt)
        existed = existed or cached.exists()
        cached.unlink(missing_ok=True)
        return existed


@functools.lru_cache(maxsize=16)
def _filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem and base path of a store URL (one instance per process)."""
    import fsspec

    fs, base = fsspec.core.url_to_fs(url)
    return fs, str(base).rstrip("/")


def _check_objects(objects: str) -> str:
    """A valid ``objects`` setting: an absolute directory, or a URL whose fsspec filesystem is installed."""
    if "://" not in objects:
        return str(Path(objects).expanduser().resolve())
    try:
        _filesystem(objects.rstrip("/"))
    except (ImportError, ValueError) as exc:
        raise WorkspaceError(
            f"cannot use {objects!r} as the object store ({exc}); install the fsspec filesystem its scheme needs "
            "(s3fs for s3://, gcsfs for gs://) or give a directory"
        ) from exc
    return objects.rstrip("/")


def read_location(location: str | os.PathLike[str]) -> str | os.PathLike[str] | bytes:
    """What an image loader opens for :meth:`ObjectStore.location`: a local path as is (no copy), the bytes of a
    URL (``s3://``, ``memory://`` ...)."""
    text = str(location)
    if "://" not in text:
        return location
    import fsspec

    with fsspec.open(text, "rb") as handle:
        return bytes(handle.read())


class Workspace:
    """An Emo8 workspace rooted at ``root``; create one with :meth:`init`, open one with :meth:`open`."""

    def __init__(self, root: Path, config: dict[str, Any]) -> None:
        self.root = root
        self.config = config
        self.catalog = Catalog(root / CATALOG_NAME)
        self.objects = ObjectStore.at(config.get("objects"), root)

    # -- creation -------------------------------------------------------------------------------------------

    @classmethod
    def init(
        cls, path: str | os.PathLike[str], exist_ok: bool = True, objects: str | None = None
    ) -> Workspace:
        """Create a workspace at ``path`` (idempotent when ``exist_ok``) and return it opened.

        ``objects`` puts the image bytes elsewhere than ``<path>/objects``: a directory (e.g. on a shared
        filesystem) or an fsspec URL (``s3://bucket/emo8``, ``gs://...``, ``file:///shared/objects``); it is
        recorded in ``emo8.json`` (key ``objects``) and cannot change later.
        """
        root = Path(path).expanduser().resolve()
        config_path = root / CONFIG_NAME
        if objects is not None:
            objects = _check_objects(objects)
        if config_path.exists():
            if not exist_ok:
                raise WorkspaceError(f"{root} is already an Emo8 workspace")
            ws = cls.open(root)
            if objects is not None and ws.config.get("objects") != objects:
                raise WorkspaceError(
                    f"{root} keeps its objects at {ws.config.get('objects') or root / 'objects'}, not {objects}; "
                    "an existing workspace's object store cannot be moved by init"
                )
            return ws
        if root.exists() and not root.is_dir():
            raise WorkspaceError(f"{root} exists and is not a directory")
        root.mkdir(parents=True, exist_ok=True)
        for sub in ("objects", "reports", "embeddings", "releases", "tmp"):
            (root / sub).mkdir(exist_ok=True)
        config: dict[str, Any] = {"format_version": FORMAT_VERSION, "created_at": utc_now()}
        if objects is not None:
            config["objects"] = objects
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
        """The local directory of the objects (for a store at a URL: this machine's cache of them)."""
        return self.objects.root

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
        """Return a local file with the bytes of ``sha256`` in format ``fmt`` (e.g. ``"jpeg"``): where they are
        stored, or for an object store at a URL their copy in this machine's cache (see :class:`ObjectStore`)."""
        return self.objects.local_path(sha256, fmt)

    def read_object(self, sha256: str, fmt: str | None) -> bytes:
        """Return the stored bytes of ``sha256``."""
        return self.objects.read(sha256, fmt)

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


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically (see :func:`_atomic_write`: a full disk
    is a :class:`WorkspaceError` and leaves the old file as it was)."""
    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    _atomic_write(path, text.encode(), path.parent)


#: Names of the temporary files of :func:`_atomic_write`: the process id, a random token drawn once per interpreter
#: (two machines writing to one shared store may share a pid) and a counter; O_EXCL still guards each name.
_PART_TOKEN = uuid.uuid4().hex[:12]
_part_numbers = itertools.count()
_PART_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


def _open_part(tmp_dir: str | os.PathLike[str]) -> tuple[int, str]:
    """Create and open a new temporary file in ``tmp_dir`` (made when missing); return ``(fd, name)``."""
    made = False
    while True:
        name = os.path.join(tmp_dir, f".part-{os.getpid()}-{_PART_TOKEN}-{next(_part_numbers)}")
        try:
            return os.open(name, _PART_FLAGS, 0o600), name
        except FileExistsError:  # left by an earlier process with the same pid and token: take the next name
            continue
        except FileNotFoundError:
            if made:
                raise
            os.makedirs(tmp_dir, exist_ok=True)
            made = True


def _replace_making_parent(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """``os.replace(source, target)``, making ``target``'s directory when the rename finds it missing (one system
    call less per object than making sure of the directory beforehand)."""
    try:
        os.replace(source, target)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(source, target)


def _atomic_write(
    path: str | os.PathLike[str],
    data: bytes,
    tmp_dir: str | os.PathLike[str],
    durable: bool = True,
    make_parent: bool = False,
) -> None:
    """Write ``data`` to ``path`` via a temp file in ``tmp_dir`` and a rename; never leave a partial file.

    ``durable`` adds an fsync before the rename (config files); image objects skip it for throughput: the rename
    alone is atomic against a killed process, which is the guarantee the catalog documents. ``make_parent``
    creates ``path``'s directory when the rename finds it missing (see :func:`_replace_making_parent`).
    """
    tmp_name = None
    try:
        fd, tmp_name = _open_part(tmp_dir)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if make_parent:
            _replace_making_parent(tmp_name, path)
        else:
            os.replace(tmp_name, path)
    except OSError as exc:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
        if exc.errno == errno.ENOSPC:
            raise WorkspaceError(
                f"disk full while writing {path}; free space and re-run (nothing was lost)"
            ) from exc
        raise
