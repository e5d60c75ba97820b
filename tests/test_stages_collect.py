"""The collect stages (ingest per source, resume, embed): one settings model each, reached the same way from the
library (``stage.run``) and from the CLI (derived from the model), on real loopback data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
import pytest
import typer
from aiohttp import web
from httpfixtures import LoopbackServer, distinct_jpegs, respond
from pydantic import ValidationError
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.stage import STAGES
from emo8.embed.stage import EMBED, EmbedSettings
from emo8.ingest.sources import create_source
from emo8.ingest.sources.openverse import OpenverseSource
from emo8.ingest.stage import (
    INGEST_FOLDER,
    INGEST_HF,
    INGEST_OPENVERSE,
    INGEST_RESUME,
    INGEST_URLS,
    FolderSettings,
    HFSettings,
    OpenverseSettings,
    ResumeSettings,
    UrlsSettings,
)

runner = CliRunner()
COLLECT = {
    "ingest-folder": ("ingest", "folder"),
    "ingest-urls": ("ingest", "urls"),
    "ingest-openverse": ("ingest", "openverse"),
    "ingest-hf": ("ingest", "hf"),
    "ingest-resume": ("ingest", "resume"),
    "embed": ("embed",),
}


def _command(path: tuple[str, ...]) -> Any:
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return command


def _cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def _folder(tmp_path: Path, sample_paths: list[Path], count: int, name: str = "images") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for path in sample_paths[:count]:
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _contents(ws_path: Path) -> set[str]:
    items = Workspace.open(ws_path).items()
    return set(items[items.status == "valid"].sha256)


# -- the registry and the derived commands ---------------------------------------------------------------------


@pytest.mark.parametrize("name", COLLECT)
def test_cli_params_are_the_settings_fields(name: str) -> None:
    """The command takes exactly the model's fields (plus --workspace, --quiet), with the model's defaults."""
    stage = STAGES[name]
    assert stage.command == COLLECT[name]
    command = _command(stage.command)
    params = {p.name: p for p in command.params}
    assert set(params) - {"workspace", "quiet"} == set(stage.settings.model_fields)
    for field, info in stage.settings.model_fields.items():
        if info.is_required():
            assert params[field].required, field
        elif not isinstance(info.default, tuple):
            default = info.default
            assert params[field].default == (str(default) if isinstance(default, Path) else default), field
        assert params[field].help == info.description, field


def test_stages_declare_what_they_read_and_write() -> None:
    for stage in (INGEST_FOLDER, INGEST_URLS, INGEST_OPENVERSE, INGEST_HF, INGEST_RESUME):
        assert stage.writes == ("table:items", "dir:objects")
    assert INGEST_RESUME.reads == ("table:items",)
    assert EMBED.reads == ("table:items",) and EMBED.writes == ("dir:embeddings",)
    shared = {"workers", "min_side", "max_pixels"}
    fetch = shared | {"concurrency", "per_host", "timeout", "retries", "max_mb", "user_agent", "executor"}
    assert shared <= set(FolderSettings.model_fields) and shared <= set(HFSettings.model_fields)
    for model in (UrlsSettings, OpenverseSettings, ResumeSettings):
        assert fetch <= set(model.model_fields)


def test_max_keeps_its_cli_spelling() -> None:
    opts = {o for p in _command(("ingest", "openverse")).params for o in p.opts}
    assert "--max" in opts and "--max-results" not in opts
    assert "--query" in opts and "--exclude" in opts and "--licenses" in opts


# -- bad settings: exit 2, naming the option -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["ingest", "openverse", "--query", " "], "--query"),
        (["ingest", "openverse"], "--query"),
        (["ingest", "urls", "list.csv", "--max-mb", "0"], "--max-mb"),
        (["ingest", "folder", "images", "--workers", "0"], "--workers"),
        (["ingest", "resume", "--retries", "-1"], "--retries"),
        (["embed", "--dtype", "float64"], "--dtype"),
        (["embed", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_bad_settings_exit_2_naming_the_option(tmp_path: Path, args: list[str], option: str) -> None:
    Workspace.init(tmp_path / "ws")
    result = _cli(*args, "-w", str(tmp_path / "ws"), "-q")
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output
    assert Workspace.open(tmp_path / "ws").items().empty  # nothing was done


def test_unknown_executor_is_bad_input_before_anything_is_registered(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "ws")
    (tmp_path / "urls.csv").write_text("url\nhttp://a.example/1.jpg\n")
    result = _cli(
        "ingest", "urls", str(tmp_path / "urls.csv"), "--executor", "nope", "-w", str(tmp_path / "ws")
    )
    assert result.exit_code == 2 and "nope" in result.output and "local" in result.output, result.output
    assert Workspace.open(tmp_path / "ws").items().empty


def test_missing_sources_are_bad_input(tmp_path: Path) -> None:
    Workspace.init(tmp_path / "ws")
    for args in (
        ["ingest", "folder", str(tmp_path / "nowhere")],
        ["ingest", "urls", str(tmp_path / "no.csv")],
    ):
        result = _cli(*args, "-w", str(tmp_path / "ws"), "-q")
        assert result.exit_code == 2, result.output
        assert Path(args[-1]).name in result.output and "Traceback" not in result.output


def test_pipeline_values_validate_like_the_cli() -> None:
    """A pipeline may give one query as a string and licences as a comma list; unknown keys are errors."""
    one = OpenverseSettings.model_validate({"query": "storm", "licenses": "by,cc0", "exclude": "cartoon"})
    assert one.query == ("storm",) and one.licenses == ("by", "cc0") and one.exclude == ("cartoon",)
    several = OpenverseSettings.model_validate({"query": ["storm", "tempest"], "max_results": 3})
    assert several.query == ("storm", "tempest") and several.max_results == 3
    with pytest.raises(ValidationError, match="max_result"):
        OpenverseSettings.model_validate({"query": "storm", "max_result": 3})
    with pytest.raises(ValidationError, match="at least one query"):
        OpenverseSettings.model_validate({"query": []})


# -- outside inputs: emo8 build re-runs a step when they change -------------------------------------------------


def test_inputs_digest_follows_the_folder(tmp_path: Path, sample_paths: list[Path]) -> None:
    folder = _folder(tmp_path, sample_paths, 2)
    flat = FolderSettings(directory=folder)
    deep = FolderSettings(directory=folder, recursive=True)
    assert INGEST_FOLDER.inputs is not None
    before, before_deep = INGEST_FOLDER.inputs(flat), INGEST_FOLDER.inputs(deep)
    assert before == INGEST_FOLDER.inputs(flat)  # stable
    (folder / "sub").mkdir()
    (folder / "sub" / "x.jpg").write_bytes(sample_paths[3].read_bytes())
    assert INGEST_FOLDER.inputs(flat) == before  # a subfolder is not read without recursive
    assert INGEST_FOLDER.inputs(deep) != before_deep
    (folder / "new.jpg").write_bytes(sample_paths[4].read_bytes())
    assert INGEST_FOLDER.inputs(flat) != before


def test_inputs_digest_follows_the_url_list_and_hf_dataset(tmp_path: Path) -> None:
    url_list = tmp_path / "urls.csv"
    url_list.write_text("url\nhttp://a.example/1.jpg\n")
    settings = UrlsSettings(url_list=url_list)
    assert INGEST_URLS.inputs is not None and INGEST_HF.inputs is not None
    before = INGEST_URLS.inputs(settings)
    url_list.write_text("url\nhttp://a.example/2.jpg\n")
    assert INGEST_URLS.inputs(settings) != before
    assert INGEST_HF.inputs(HFSettings(dataset="someone/some-dataset")) == ""  # a hub id: settings suffice
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "data.arrow").write_bytes(b"1")
    local = INGEST_HF.inputs(HFSettings(dataset=str(tmp_path / "ds")))
    (tmp_path / "ds" / "data.arrow").write_bytes(b"22")
    assert INGEST_HF.inputs(HFSettings(dataset=str(tmp_path / "ds"))) not in ("", local)
    assert INGEST_OPENVERSE.inputs is None and INGEST_RESUME.inputs is None


# -- each stage from the library and from the CLI --------------------------------------------------------------


def test_folder_stage_library_and_cli(tmp_path: Path, sample_paths: list[Path]) -> None:
    folder = _folder(tmp_path, sample_paths, 4)
    lib_ws = Workspace.init(tmp_path / "lib")
    settings = FolderSettings(directory=folder, domain="natural", workers=1)
    result = INGEST_FOLDER.run(lib_ws, settings, False)
    assert result.summary.new == 4 and result.summary.statuses["valid"] == 4
    summary = INGEST_FOLDER.summarize(result, settings)
    assert "4 new, 0 already known" in summary.lines[0] and not summary.problem
    assert set(lib_ws.items().domain) == {"natural"}
    Workspace.init(tmp_path / "cli")
    out = _cli("ingest", "folder", str(folder), "--domain", "natural", "-w", str(tmp_path / "cli"), "-q")
    assert out.exit_code == 0 and "4 new, 0 already known" in out.output, out.output
    assert (
        _contents(tmp_path / "cli") == _contents(tmp_path / "lib") and len(_contents(tmp_path / "cli")) == 4
    )
    again = INGEST_FOLDER.run(lib_ws, settings, False)  # idempotent
    assert again.summary.new == 0 and again.summary.known == 4


@pytest.fixture
def images(sample_paths: list[Path]) -> Iterator[LoopbackServer]:
    """Five distinct JPEGs at /img/<i>.jpg and no robots.txt."""
    routes: dict[str, Any] = {"/robots.txt": respond(b"", status=404)}
    for i, data in enumerate(distinct_jpegs(sample_paths, 5)):
        routes[f"/img/{i}.jpg"] = respond(data, content_type="image/jpeg")
    with LoopbackServer(routes) as server:
        yield server


def test_urls_stage_library_and_cli(tmp_path: Path, images: LoopbackServer) -> None:
    url_list = tmp_path / "urls.csv"
    url_list.write_text(
        "url,caption\n" + "".join(f"{images.url(f'/img/{i}.jpg')},photo {i}\n" for i in range(5))
    )
    lib_ws = Workspace.init(tmp_path / "lib")
    settings = UrlsSettings(url_list=url_list, allow_private_networks=True, workers=1, keyword="storm")
    result = INGEST_URLS.run(lib_ws, settings, False)
    assert result.summary.new == 5 and result.summary.statuses["valid"] == 5
    assert set(lib_ws.items().keyword) == {"storm"}
    Workspace.init(tmp_path / "cli")
    args = [
        "ingest",
        "urls",
        str(url_list),
        "--keyword",
        "storm",
        "--allow-private-networks",
        "--workers",
        "1",
    ]
    out = _cli(*args, "-w", str(tmp_path / "cli"), "-q")
    assert out.exit_code == 0 and "5 new" in out.output and "valid=5" in out.output, out.output
    assert (
        _contents(tmp_path / "cli") == _contents(tmp_path / "lib") and len(_contents(tmp_path / "lib")) == 5
    )
    # without --allow-private-networks the loopback URLs are refused: the fetch settings reach the downloader
    Workspace.init(tmp_path / "strict")
    strict = _cli("ingest", "urls", str(url_list), "-w", str(tmp_path / "strict"), "-q", "--workers", "1")
    assert strict.exit_code == 0 and "private_address=5" in strict.output, strict.output


def test_resume_stage_finishes_pending_items(tmp_path: Path, images: LoopbackServer) -> None:
    url_list = tmp_path / "urls.csv"
    url_list.write_text("url\n" + "".join(f"{images.url(f'/img/{i}.jpg')}\n" for i in range(3)))
    for name in ("lib", "cli"):  # registered, never fetched: what an interrupted ingest leaves
        ws = Workspace.init(tmp_path / name)
        ws.catalog.register(list(create_source("urls", path=str(url_list)).records()))
        assert set(ws.items().status) == {"pending"}
    settings = ResumeSettings(allow_private_networks=True, workers=1)
    result = INGEST_RESUME.run(Workspace.open(tmp_path / "lib"), settings, False)
    assert result.summary.processed == 3 and result.summary.statuses["valid"] == 3
    out = _cli(
        "ingest", "resume", "--allow-private-networks", "--workers", "1", "-w", str(tmp_path / "cli"), "-q"
    )
    assert out.exit_code == 0 and "processed 3" in out.output, out.output
    assert (
        _contents(tmp_path / "cli") == _contents(tmp_path / "lib") and len(_contents(tmp_path / "cli")) == 3
    )


def test_hf_stage_library_and_cli(tmp_path: Path, sample_paths: list[Path]) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    rows = {"image": [str(p) for p in sample_paths[:3]], "label": ["awe", "fear", "sadness"]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(
        str(tmp_path / "ds")
    )
    lib_ws = Workspace.init(tmp_path / "lib")
    settings = HFSettings(dataset=str(tmp_path / "ds"), domain="natural", workers=1)
    result = INGEST_HF.run(lib_ws, settings, False)
    assert result.summary.new == 3 and sorted(lib_ws.items().weak_label) == ["awe", "fear", "sadness"]
    Workspace.init(tmp_path / "cli")
    out = _cli("ingest", "hf", str(tmp_path / "ds"), "--label-col", "", "-w", str(tmp_path / "cli"), "-q")
    assert out.exit_code == 0 and "3 new" in out.output, out.output
    assert Workspace.open(tmp_path / "cli").items().weak_label.isna().all()  # --label-col '': no labels
    assert _contents(tmp_path / "cli") == _contents(tmp_path / "lib")


# -- Openverse: several queries, negative keywords, licences, one cap ------------------------------------------


@pytest.fixture
def openverse(sample_paths: list[Path]) -> Iterator[dict[str, Any]]:
    """A loopback Openverse: /v1/images/ in its wire format (3 results a page, 2 pages per query), the images
    on the same server. Result titles are ``<first word of q> <i>``, every third one ``<word> cartoon <i>``;
    queries with the same first word find the same images."""
    state: dict[str, Any] = {"requests": []}
    jpegs = distinct_jpegs(sample_paths, 12)

    async def search(request: web.Request) -> web.Response:
        query = dict(request.query)
        state["requests"].append(query)
        word = query["q"].split()[0]
        page, base = int(query.get("page", 1)), {"storm": 0, "tempest": 6}.get(word, 0)
        results = []
        for i in range(3 * (page - 1), 3 * page):
            n = base + i
            title = f"{word} cartoon {i}" if i % 3 == 2 else f"{word} {i}"
            results.append(
                {"id": f"id-{n}", "title": title, "url": server.url(f"/img/{n}.jpg"), "creator": "ann",
                 "license": "by", "license_version": "4.0", "tags": [{"name": word}, {"name": "weather"}]}
            )  # fmt: skip
        return web.json_response({"result_count": 6, "page_count": 2, "page_size": 3, "page": page,
                                  "results": results})  # fmt: skip

    routes: dict[str, Any] = {"/v1/images/": search, "/robots.txt": respond(b"", status=404)}
    routes.update({f"/img/{n}.jpg": respond(data, content_type="image/jpeg") for n, data in enumerate(jpegs)})
    with LoopbackServer(routes) as server:
        state["url"] = server.base_url
        yield state


def test_openverse_sends_negative_keywords_and_licences(openverse: dict[str, Any]) -> None:
    source = OpenverseSource(
        query="storm", api_url=openverse["url"], exclude=("cartoon", "clip art", "3-d"), licenses=("by", "cc0"),
        max_results=10,
    )  # fmt: skip
    records = list(source.records())
    first = openverse["requests"][0]
    assert first["q"] == 'storm -cartoon -"clip art" -"3-d"' and first["license"] == "by,cc0"
    assert [r.title for r in records] == ["storm 0", "storm 1", "storm 3", "storm 4"]
    assert source.excluded == 2
    many = OpenverseSource(query="storm", exclude=tuple(f"word{i:03d}" for i in range(40)))
    sent = many.search_text()
    assert len(sent) <= 200 and sent.startswith("storm -word000") and "word039" not in sent
    assert many.warnings and "results only" in many.warnings[0]


def test_openverse_stage_several_queries_one_cap(tmp_path: Path, openverse: dict[str, Any]) -> None:
    lib_ws = Workspace.init(tmp_path / "lib")
    settings = OpenverseSettings(
        query=("storm", "tempest"), exclude=("cartoon",), max_results=5, label="fear", domain="natural",
        licenses=("by",), api_url=openverse["url"], allow_private_networks=True, workers=1,
    )  # fmt: skip
    result = INGEST_OPENVERSE.run(lib_ws, settings, False)
    items = lib_ws.items()
    assert len(items) == 5 and result.summary.new == 5 and (items.status == "valid").all()
    assert set(items.weak_label) == {"fear"} and set(items.domain) == {"natural"}
    assert not items.title.str.contains("cartoon").any()
    assert items.keyword.value_counts().to_dict() == {
        "storm": 3,
        "tempest": 2,
    }  # in turn, not one query first
    queries = {r["q"] for r in openverse["requests"]}
    assert queries == {"storm -cartoon", "tempest -cartoon"}
    assert {r["license"] for r in openverse["requests"]} == {"by"}
    assert "excluded:" in INGEST_OPENVERSE.summarize(result, settings).lines[1]

    Workspace.init(tmp_path / "cli")
    args = ["ingest", "openverse", "--query", "storm", "--query", "tempest", "--exclude", "cartoon", "--max", "5",
            "--label", "fear", "--domain", "natural", "--licenses", "by", "--api-url", openverse["url"],
            "--allow-private-networks", "--workers", "1", "-w", str(tmp_path / "cli"), "-q"]  # fmt: skip
    out = _cli(*args)
    assert out.exit_code == 0 and "5 new" in out.output and "excluded: 1 result(s)" in out.output, out.output
    assert _contents(tmp_path / "cli") == _contents(tmp_path / "lib")


def test_openverse_queries_share_images_once(tmp_path: Path, openverse: dict[str, Any]) -> None:
    """An image two queries both find is ingested once; a cap larger than the results takes them all."""
    ws = Workspace.init(tmp_path / "ws")
    # "storm" and "storm again" both start with "storm": the same six URLs
    settings = OpenverseSettings(query=("storm", "storm again"), max_results=50, api_url=openverse["url"],
                                 allow_private_networks=True, workers=1)  # fmt: skip
    result = INGEST_OPENVERSE.run(ws, settings, False)
    assert result.summary.new == 6 and len(ws.items()) == 6
    assert set(ws.items().keyword) == {"storm"}  # each image kept with the query that found it first


# -- embed --------------------------------------------------------------------------------------------------------


def test_embed_stage_library_and_cli(tmp_path: Path, sample_paths: list[Path]) -> None:
    folder = _folder(tmp_path, sample_paths, 3)
    for name in ("lib", "cli"):
        Workspace.init(tmp_path / name)
        INGEST_FOLDER.run(Workspace.open(tmp_path / name), FolderSettings(directory=folder, workers=1), False)
    settings = EmbedSettings(random_init=True, device="cpu", workers=0, batch_size=2, dtype="float32")
    summary = EMBED.run(Workspace.open(tmp_path / "lib"), settings, False)
    assert summary.new == 3 and summary.total == 3
    assert "3 new, 3 stored" in EMBED.summarize(summary, settings).lines[0]
    assert "float32" in EMBED.summarize(summary, settings).lines[0]
    args = [
        "embed",
        "--random-init",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--batch-size",
        "2",
        "--dtype",
        "float32",
    ]
    out = _cli(*args, "-w", str(tmp_path / "cli"), "-q")
    assert out.exit_code == 0 and "3 new, 3 stored" in out.output, out.output
    again = _cli(*args, "-w", str(tmp_path / "cli"), "-q")
    assert again.exit_code == 0 and "0 new, 3 stored" in again.output  # incremental
    assert any((tmp_path / "cli" / "embeddings").rglob("*"))


def test_embed_without_weights_is_bad_input(tmp_path: Path, sample_paths: list[Path]) -> None:
    folder = _folder(tmp_path, sample_paths, 1)
    Workspace.init(tmp_path / "ws")
    INGEST_FOLDER.run(Workspace.open(tmp_path / "ws"), FolderSettings(directory=folder, workers=1), False)
    out = _cli("embed", "--model", "timm:resnet18", "--weights", str(tmp_path / "none.pt"), "-w",
               str(tmp_path / "ws"), "-q")  # fmt: skip
    assert out.exit_code == 2 and "none.pt" in out.output and "Traceback" not in out.output, out.output
