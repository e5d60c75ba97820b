"""``emo8 ingest hf``: an existing Hugging Face dataset (a local directory or a hub id) as a source."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qs, quote, unquote, urlsplit

from emo8.core.catalog import OriginRecord
from emo8.core.taxonomy import normalise_label
from emo8.core.weights import HubUnavailable, require_hub
from emo8.ingest.sources.base import LOCAL_READERS, SourceError, register_source

if TYPE_CHECKING:
    import datasets

#: Columns copied onto the item when the dataset has them.
ITEM_COLUMNS = ("license", "author", "title", "domain", "keyword")


@register_source
@dataclass
class HFSource:
    """Every row of ``dataset`` (all splits unless ``split``): its image, label and metadata columns.

    ``dataset`` is a directory written by ``save_to_disk``, a directory of parquet/ImageFolder data (an Emo8
    release, say), or a hub id (needs network access). A ``ClassLabel`` label column is read by name.
    """

    dataset: str
    image_col: str = "image"
    label_col: str | None = "label"
    split: str | None = None
    domain: str | None = None

    name: ClassVar[str] = "hf"

    def records(self) -> Iterator[OriginRecord]:
        ref = _dataset_ref(self.dataset)
        for split_name, ds in _load(ref, self.split).items():
            if self.image_col not in ds.column_names:
                raise SourceError(
                    f"{self.dataset} split {split_name!r} has no column {self.image_col!r} "
                    f"(columns: {', '.join(ds.column_names)}); pass --image-col"
                )
            label_feature = ds.features.get(self.label_col) if self.label_col else None
            other = [c for c in ds.column_names if c != self.image_col]
            rows = ds.select_columns(other) if other else None
            for index in range(len(ds)):
                row: dict[str, Any] = rows[index] if rows is not None else {}
                yield self._record(ref, split_name, index, row, label_feature)

    def _record(
        self, ref: str, split: str, index: int, row: dict[str, Any], label_feature: Any
    ) -> OriginRecord:
        import datasets  # imported on use: it is slow to import and most commands never need it

        raw_label = row.get(self.label_col) if self.label_col else None
        if isinstance(label_feature, datasets.ClassLabel) and isinstance(raw_label, int) and raw_label >= 0:
            raw_label = label_feature.int2str(raw_label)
        item_values = {c: row.get(c) for c in ITEM_COLUMNS if isinstance(row.get(c), str) and row.get(c)}
        meta = {
            k: v for k, v in row.items() if k not in ITEM_COLUMNS and k != self.label_col and _is_scalar(v)
        }
        meta.update({"dataset": ref, "split": split, "row": index})
        if raw_label is not None:
            meta["raw_label"] = raw_label
        locator = f"hf://{quote(ref, safe='')}?split={quote(split)}&row={index}&col={quote(self.image_col)}"
        return OriginRecord(
            origin_key=f"hf:{ref}/{split}/{index}",
            source=self.name,
            source_path=locator,
            license=item_values.get("license"),
            author=item_values.get("author"),
            title=item_values.get("title"),
            keyword=item_values.get("keyword"),
            domain=item_values.get("domain") or self.domain,
            weak_label=normalise_label(str(raw_label)) if raw_label is not None else None,
            meta=meta,
        )


def _is_scalar(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool)) or value is None


def _dataset_ref(dataset: str) -> str:
    """A local path becomes absolute (stable across working directories); a hub id stays as it is."""
    path = Path(dataset).expanduser()
    return str(path.resolve()) if path.exists() else dataset


@functools.lru_cache(maxsize=8)
def _load_all(ref: str) -> dict[str, datasets.Dataset]:
    import datasets

    path = Path(ref)
    try:
        if path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded: Any = datasets.load_from_disk(str(path))
        else:
            if (
                not path.exists()
            ):  # a Hub id: fail at once, not after a minute of retries, when the Hub is away
                require_hub(f"dataset {ref!r}")
            loaded = datasets.load_dataset(ref)
    except HubUnavailable as exc:
        raise SourceError(str(exc)) from exc
    except FileNotFoundError as exc:
        raise SourceError(f"cannot find dataset {ref!r}: {exc}") from exc
    except (ConnectionError, OSError, ValueError) as exc:
        raise SourceError(f"cannot load dataset {ref!r} (a hub id needs network access): {exc}") from exc
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return {name: split for name, split in loaded.items()}


def _load(ref: str, split: str | None) -> dict[str, datasets.Dataset]:
    splits = _load_all(ref)
    if split is None:
        return splits
    if split not in splits:
        raise SourceError(f"dataset {ref!r} has no split {split!r} (splits: {', '.join(splits)})")
    return {split: splits[split]}


@functools.lru_cache(maxsize=8)
def _undecoded(ref: str, split: str, col: str) -> datasets.Dataset:
    import datasets

    return _load(ref, split)[split].select_columns([col]).cast_column(col, datasets.Image(decode=False))


def read_hf(locator: str) -> bytes:
    """Return the encoded image bytes behind an ``hf://`` locator written by :class:`HFSource`."""
    parts = urlsplit(locator)
    query = parse_qs(parts.query)
    ref = unquote(parts.netloc + parts.path)
    split, row, col = query["split"][0], int(query["row"][0]), query["col"][0]
    value = _undecoded(ref, split, col)[row][col]
    if value.get("bytes"):
        return bytes(value["bytes"])
    if value.get("path"):
        return Path(value["path"]).read_bytes()
    raise SourceError(f"row {row} of {ref} split {split} has no image bytes")


LOCAL_READERS["hf"] = read_hf
