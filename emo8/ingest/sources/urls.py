"""``emo8 ingest urls``: a URL list (csv, tsv, jsonl or parquet, optionally gzipped), img2dataset-compatible."""

from __future__ import annotations

import csv
import gzip
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar
from urllib.parse import urlsplit

import pyarrow.parquet as pq

from emo8.core.catalog import OriginRecord
from emo8.core.taxonomy import normalise_label
from emo8.ingest.sources.base import SourceError, register_source

#: Columns with a meaning of their own; every other column is kept in the item's ``meta``.
KNOWN_COLUMNS = ("license", "author", "keyword", "domain", "label")
FORMATS = ("csv", "tsv", "jsonl", "parquet")


def detect_format(path: Path) -> str:
    """Return the list format from the file name (``.csv``, ``.tsv``, ``.jsonl``/``.json``, ``.parquet``, + ``.gz``)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    ext = {"json": "jsonl", "ndjson": "jsonl", "txt": "csv"}.get(ext, ext)
    if ext not in FORMATS:
        raise SourceError(
            f"cannot tell the format of {path.name}; expected one of {', '.join(FORMATS)} (+ .gz)"
        )
    return ext


@register_source
@dataclass
class UrlListSource:
    """One record per row of a URL list.

    A row without a usable URL (missing, not http(s), or a row the parser cannot read) is still recorded, with
    ``status="failed"`` and ``reason="malformed_row"``, so every row of the list is accounted for.
    Undecodable text (non-UTF-8) is decoded with replacement characters rather than rejected.
    """

    path: str
    url_col: str = "url"
    caption_col: str | None = "caption"
    file_format: str | None = None
    domain: str | None = None
    keyword: str | None = None

    name: ClassVar[str] = "urls"

    def records(self) -> Iterator[OriginRecord]:
        path = Path(self.path).expanduser().resolve()
        if not path.is_file():
            raise SourceError(f"URL list {path} does not exist")
        fmt = self.file_format or detect_format(path)
        rows = _read_rows(path, fmt)
        first = True
        for index, row, problem in rows:
            if first and problem is None and self.url_col not in row:
                raise SourceError(
                    f"{path.name} has no {self.url_col!r} column (columns: {', '.join(map(str, row))}); "
                    "pass --url-col"
                )
            first = False
            yield self._record(path, index, row, problem)

    def _record(self, path: Path, index: int, row: dict[str, Any], problem: str | None) -> OriginRecord:
        url = _text(row.get(self.url_col)).strip() if problem is None else ""
        if problem is None and not _is_http_url(url):
            problem = f"no usable http(s) URL in column {self.url_col!r}: {url[:200]!r}"
        if problem is not None:
            return OriginRecord(
                origin_key=f"{path}#row{index}",
                source=self.name,
                status="failed",
                reason="malformed_row",
                error=problem,
                meta={"list": str(path), "row": index},
            )
        caption_col = self.caption_col if self.caption_col in row else ("title" if "title" in row else None)
        known = {self.url_col, caption_col, *KNOWN_COLUMNS}
        meta = {k: _jsonable(v) for k, v in row.items() if k not in known and v is not None}
        meta.update({"list": str(path), "row": index})
        label = _text(row.get("label")) or None
        if label and normalise_label(label) is None:
            meta["raw_label"] = label
        return OriginRecord(
            origin_key=url,
            source=self.name,
            url=url,
            title=_text(row.get(caption_col)) or None if caption_col else None,
            license=_text(row.get("license")) or None,
            author=_text(row.get("author")) or None,
            keyword=_text(row.get("keyword")) or self.keyword,
            domain=_text(row.get("domain")) or self.domain,
            weak_label=normalise_label(label),
            meta=meta,
        )


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, float) and value != value:  # NaN from parquet
        return ""
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _open_text(path: Path) -> IO[str]:
    raw: IO[bytes] = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")  # type: ignore[assignment]  # noqa: SIM115
    return io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="")


def _read_rows(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """Yield ``(row_number, row, problem)``; ``problem`` is a message for rows that cannot be parsed."""
    if fmt == "parquet":
        try:
            parquet = pq.ParquetFile(path)
        except Exception as exc:
            raise SourceError(f"cannot read parquet {path.name}: {exc}") from exc
        index = 0
        for batch in parquet.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                index += 1
                yield index, row, None
        return
    with _open_text(path) as handle:
        if fmt == "jsonl":
            for index, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield index, {}, f"invalid JSON: {exc}"
                    continue
                if not isinstance(row, dict):
                    yield index, {}, "a JSON line that is not an object"
                    continue
                yield index, row, None
            return
        reader = csv.reader(handle, delimiter="\t" if fmt == "tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SourceError(f"cannot read the header of {path.name}: {exc}") from exc
        header = [h.strip() for h in header]
        index = 0
        while True:
            index += 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield index, {}, f"unparsable row: {exc}"
                continue
            if not fields:
                continue
            if len(fields) != len(header):
                yield index, {}, f"row has {len(fields)} fields, header has {len(header)}"
                continue
            yield index, dict(zip(header, fields, strict=True)), None
