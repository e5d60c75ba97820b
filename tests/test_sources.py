"""Source adapters: URL lists in every format, folders, Openverse (local server, real wire format), HF datasets."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
import pytest
from aiohttp import web
from httpfixtures import LoopbackServer

from emo8.core.catalog import OriginRecord
from emo8.core.taxonomy import EMOTIONS
from emo8.ingest.sources import SourceError, create_source, read_local
from emo8.ingest.sources.openverse import spdx_license


def _records(name: str, **options: Any) -> list[OriginRecord]:
    return list(create_source(name, **options).records())


# -- URL lists ------------------------------------------------------------------------------------------------

ROWS = [
    {
        "url": "http://a.example/1.jpg",
        "caption": "a sad dog",
        "license": "CC-BY-4.0",
        "label": "Sadness",
        "x": "7",
    },
    {"url": "http://a.example/2.jpg", "caption": "fireworks", "license": "CC0-1.0", "label": "joy", "x": "8"},
]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet", ".csv.gz", ".jsonl.gz"])
def test_url_list_formats_read_the_same_records(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"list{suffix}"
    frame = pd.DataFrame(ROWS)
    if suffix.startswith(".parquet"):
        frame.to_parquet(path)
    elif ".jsonl" in suffix:
        text = "".join(json.dumps(r) + "\n" for r in ROWS)
        path.write_bytes(gzip.compress(text.encode()) if suffix.endswith(".gz") else text.encode())
    else:
        sep = "\t" if suffix.startswith(".tsv") else ","
        frame.to_csv(path, sep=sep, index=False, compression="gzip" if suffix.endswith(".gz") else None)
    records = _records("urls", path=str(path))
    assert [r.url for r in records] == [r["url"] for r in ROWS]
    assert records[0].origin_key == "http://a.example/1.jpg"
    assert records[0].title == "a sad dog" and records[0].license == "CC-BY-4.0"
    assert records[0].weak_label == "sadness"  # case-normalised
    assert records[1].weak_label is None and records[1].meta["raw_label"] == "joy"  # not a Mikels emotion
    assert str(records[0].meta["x"]) == "7"  # other columns kept


def test_malformed_rows_are_recorded_not_dropped(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_text(
        "url,caption\n"
        "http://a.example/1.jpg,ok\n"
        "not a url,bad\n"
        "http://a.example/2.jpg,too,many,fields\n"
        "ftp://a.example/3.jpg,wrong scheme\n"
        ",empty\n"
    )
    records = _records("urls", path=str(path))
    assert len(records) == 5
    assert [r.status for r in records] == ["pending", "failed", "failed", "failed", "failed"]
    assert all(r.reason == "malformed_row" for r in records[1:])
    assert "fields" in (records[2].error or "")
    assert len({r.origin_key for r in records}) == 5


def test_non_utf8_caption_survives(tmp_path: Path) -> None:
    path = tmp_path / "list.csv"
    path.write_bytes(b"url,caption\nhttp://a.example/1.jpg,caf\xe9 \xff\xfe\n")
    (record,) = _records("urls", path=str(path))
    assert record.title is not None and record.title.startswith("caf")
    assert "\ufffd" in record.title


def test_img2dataset_style_columns_and_missing_url_column(tmp_path: Path) -> None:
    path = tmp_path / "list.tsv"
    path.write_text("URL\tTEXT\nhttp://a.example/1.jpg\thello\n")
    (record,) = _records("urls", path=str(path), url_col="URL", caption_col="TEXT")
    assert record.url == "http://a.example/1.jpg" and record.title == "hello"
    with pytest.raises(SourceError, match="no 'url' column"):
        _records("urls", path=str(path))


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        _records("urls", path=str(tmp_path / "nope.csv"))
    odd = tmp_path / "list.xlsx"
    odd.write_text("x")
    with pytest.raises(SourceError, match="format"):
        _records("urls", path=str(odd))
    with pytest.raises(SourceError, match="unknown source"):
        create_source("flickr")


# -- folders --------------------------------------------------------------------------------------------------


def test_folder_recursive_with_labels_from_dirs(tmp_path: Path, sample_paths: list[Path]) -> None:
    for i, emotion in enumerate(["awe", "fear", "Holiday"]):
        (tmp_path / emotion).mkdir()
        (tmp_path / emotion / f"{i}.jpg").write_bytes(sample_paths[i].read_bytes())
    (tmp_path / "top.JPG").write_bytes(sample_paths[3].read_bytes())
    (tmp_path / "notes.txt").write_text("not an image suffix")
    flat = _records("folder", directory=str(tmp_path))
    assert [Path(r.source_path or "").name for r in flat] == ["top.JPG"]
    deep = _records("folder", directory=str(tmp_path), recursive=True, label_from_dir=True, domain="natural")
    labels = {Path(r.source_path or "").parent.name: r.weak_label for r in deep}
    assert labels == {"awe": "awe", "fear": "fear", "Holiday": None, tmp_path.name: None}
    assert all(r.domain == "natural" and r.origin_key.startswith("file:/") for r in deep)
    assert read_local(deep[0].source_path or "") == Path(deep[0].source_path or "").read_bytes()
    with pytest.raises(SourceError, match="not a directory"):
        _records("folder", directory=str(tmp_path / "missing"))


# -- Openverse, served locally in its real JSON shape --------------------------------------------------------------


def _openverse_result(i: int) -> dict[str, Any]:
    return {
        "id": f"00000000-0000-0000-0000-{i:012d}",
        "title": f"Photo {i}",
        "indexed_on": "2024-01-01T00:00:00Z",
        "foreign_landing_url": f"https://www.flickr.com/photos/x/{i}",
        "url": f"https://live.staticflickr.com/{i}.jpg",
        "creator": f"creator{i}",
        "creator_url": f"https://www.flickr.com/photos/creator{i}",
        "license": ["by", "by-sa", "cc0", "pdm"][i % 4],
        "license_version": ["2.0", "4.0", "1.0", "1.0"][i % 4],
        "license_url": "https://creativecommons.org/licenses/by/2.0/",
        "provider": "flickr",
        "source": "flickr",
        "category": None,
        "filesize": None,
        "filetype": "jpg",
        "tags": [{"accuracy": None, "name": "sad", "unstable__provenance": "provider"}],
        "attribution": f'"Photo {i}" by creator{i} is licensed under CC BY 2.0.',
        "fields_matched": ["title"],
        "mature": False,
        "height": 480,
        "width": 640,
        "thumbnail": f"https://api.openverse.org/v1/images/{i}/thumb/",
        "detail_url": f"https://api.openverse.org/v1/images/{i}/",
        "related_url": f"https://api.openverse.org/v1/images/{i}/related/",
        "unstable__sensitivity": [],
    }


@pytest.fixture
def openverse() -> Iterator[dict[str, Any]]:
    """A loopback server speaking Openverse's /v1/images/ search: 45 results, one 429 first, page limit 2."""
    state: dict[str, Any] = {"requests": [], "total": 45, "throttle_once": True, "max_page": 2}

    async def search(request: web.Request) -> web.Response:
        query = dict(request.query)
        state["requests"].append((request.path, query, request.headers.get("User-Agent")))
        if state["throttle_once"]:
            state["throttle_once"] = False
            return web.json_response(
                {"detail": "Request was throttled."}, status=429, headers={"Retry-After": "0"}
            )
        page, size = int(query.get("page", 1)), int(query.get("page_size", 20))
        if page > state["max_page"]:
            return web.json_response({"detail": "Authentication credentials were not provided."}, status=401)
        start = (page - 1) * size
        results = [_openverse_result(i) for i in range(start, min(start + size, state["total"]))]
        body = {"result_count": state["total"], "page_count": -(-state["total"] // size), "page_size": size,
                "page": page, "results": results, "warnings": []}  # fmt: skip
        return web.json_response(body)

    with LoopbackServer({"/v1/images/": search}) as server:
        state["url"] = server.base_url
        yield state


def test_openverse_pages_retries_and_maps_licences(openverse: dict[str, Any]) -> None:
    source = create_source(
        "openverse", query="sadness", max_results=30, api_url=openverse["url"], page_size=20
    )
    records = list(source.records())
    assert len(records) == 30
    assert len({r.url for r in records}) == 30
    first = records[0]
    assert first.license == "CC-BY-2.0" and first.author == "creator0" and first.title == "Photo 0"
    assert first.weak_label == "sadness" and first.keyword == "sadness"
    assert first.meta["landing_url"] == "https://www.flickr.com/photos/x/0"
    assert first.meta["tags"] == ["sad"]
    pages = [q["page"] for path, q, _ in openverse["requests"]]
    assert pages == ["1", "1", "2"]  # one retry after the 429, then page 2; stops at max_results
    assert all(ua and ua.startswith("emo8/") for _, _, ua in openverse["requests"])


def test_openverse_keeps_results_when_a_later_page_is_refused(openverse: dict[str, Any]) -> None:
    source = create_source("openverse", query="awe", max_results=100, api_url=openverse["url"], label="awe")
    records = list(source.records())
    assert len(records) == 40  # pages 1-2; page 3 is refused (anonymous limit)
    assert source.warnings and "401" in source.warnings[0]  # type: ignore[attr-defined]


def test_openverse_first_page_errors_are_clear(openverse: dict[str, Any]) -> None:
    with pytest.raises(SourceError, match="unreachable"):
        list(create_source("openverse", query="fear", api_url="http://127.0.0.1:9", retries=0).records())
    with pytest.raises(SourceError, match="must not be empty"):
        list(create_source("openverse", query=" ", api_url=openverse["url"]).records())


def test_spdx_license_mapping() -> None:
    assert spdx_license("by-nc-sa", "4.0") == "CC-BY-NC-SA-4.0"
    assert spdx_license("cc0", "1.0") == "CC0-1.0"
    assert spdx_license("pdm", None) == "public-domain"
    assert spdx_license(None, None) is None


# -- Hugging Face datasets ------------------------------------------------------------------------------------------


def test_hf_dataset_source_reads_labels_and_bytes(tmp_path: Path, sample_paths: list[Path]) -> None:
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(EMOTIONS)),
            "domain": datasets.Value("string"),
        }
    )
    rows = {
        "image": [str(p) for p in sample_paths[:4]],
        "label": [0, 2, 6, 7],
        "domain": ["cartoon", "natural", "realistic", "scifi"],
    }
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_dict(rows, features=features), "test": datasets.Dataset.from_dict(
            {k: v[:1] for k, v in rows.items()}, features=features)}
    )  # fmt: skip
    dd.save_to_disk(str(tmp_path / "ds"))
    records = _records("hf", dataset=str(tmp_path / "ds"))
    assert len(records) == 5
    assert [r.weak_label for r in records[:4]] == ["amusement", "awe", "fear", "sadness"]
    assert records[1].domain == "natural"
    assert read_local(records[2].source_path or "") == sample_paths[2].read_bytes()
    only_test = _records("hf", dataset=str(tmp_path / "ds"), split="test")
    assert len(only_test) == 1 and only_test[0].origin_key.endswith("/test/0")
    with pytest.raises(SourceError, match="no split"):
        _records("hf", dataset=str(tmp_path / "ds"), split="validation")
    with pytest.raises(SourceError, match="no column"):
        _records("hf", dataset=str(tmp_path / "ds"), image_col="picture")
