"""The recipes in pipelines/: the demo builds end to end (and a second build does nothing); every recipe validates
against the stage registry; the demo-only stages are deterministic."""

from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from typer.testing import CliRunner

from emo8 import Workspace
from emo8.cli import app
from emo8.core.stage import get_stage
from emo8.core.taxonomy import DOMAINS, EMOTIONS
from emo8.pipeline.demo import (
    DemoInputsSettings,
    sample_manifest,
    write_demo_inputs,
    write_simulated_export,
)
from emo8.pipeline.registry import load_stages
from emo8.pipeline.spec import PipelineError, load_pipeline

REPO = Path(__file__).resolve().parents[1]
PIPELINES = REPO / "pipelines"
RECIPES = ("demo.yaml", "emo8.yaml", "from-hf.yaml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def relocated_demo(root: Path) -> Path:
    """pipelines/demo.yaml with its outputs under ``root`` and a free port: the same steps and settings, so the test
    builds what `make demo` builds without touching the checkout (or a demo someone is running)."""
    port = str(_free_port())
    text = (PIPELINES / "demo.yaml").read_text()
    for old, new in (
        ("../demo-workspace", str(root)),
        ("../emo8/samples", str(REPO / "emo8" / "samples")),
        ("teacher: demo/uniemox-tiny-clip.json", f"teacher: {PIPELINES / 'demo' / 'uniemox-tiny-clip.json'}"),
        ("8765", port),
    ):
        assert old in text, f"demo.yaml no longer mentions {old!r}: update relocated_demo"
        text = text.replace(old, new)
    path = root / "demo.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _build(path: Path) -> str:
    result = CliRunner().invoke(app, ["build", str(path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_demo_pipeline_builds_end_to_end_and_a_second_build_does_nothing(
    tmp_path: Path, sample_rows: list[dict[str, str]]
) -> None:
    pipeline = relocated_demo(tmp_path / "demo")
    first = _build(pipeline)
    ws = Workspace.open(tmp_path / "demo" / "workspace")
    counts = ws.status()
    # the demo adds a resized and a mirrored copy of one sample, which dedup marks as duplicates; one dead link
    assert counts["status"] == {"valid": len(sample_rows), "duplicate": 2, "failed": 1}
    assert counts["source"] == {
        "folder": len(sample_rows) // 2 + 2,
        "urls": len(sample_rows) - len(sample_rows) // 2 + 1,
    }
    items = ws.items(["item_id", "source_path", "status", "dup_of", "dup_tier", "settled", "label"])
    items = items.set_index("item_id")
    name = items.source_path.fillna("").map(lambda p: Path(p).name)
    original = items.index[name == "skm-0009.jpg"][0]
    copies = items[items.status == "duplicate"]
    assert (copies.dup_of == original).all()  # the original, registered first, stays canonical
    assert dict(zip(name[copies.index], copies.dup_tier, strict=True)) == {
        "zz-copy-resized-skm-0009.jpg": "perceptual",
        "zz-copy-mirrored-skm-0009.jpg": "semantic",
    }
    # the round's simulated answers were imported and aggregated into settled labels
    selected = ws.catalog.selection("round-1")
    assert len(selected) == 10
    assert items.loc[selected, "settled"].eq(1).all()
    assert items.loc[selected, "label"].isin(EMOTIONS).all()
    assert "SIMULATED ANNOTATORS" in first
    # the release: three splits, the settled labels among its label sources, cited build
    release = ws.root / "releases" / "0.1.0"
    assert {p.name.split("-")[0] for p in (release / "data").glob("*.parquet")} == {
        "train",
        "validation",
        "test",
    }
    manifest = json.loads((release / "manifest.json").read_text())
    assert "BOOTSTRAP RELEASE" in first
    frames = pd.concat(
        pd.read_parquet(p, columns=["label_source"]) for p in (release / "data").glob("*.parquet")
    )
    assert Counter(frames.label_source) == {"annotation": 10, "weak": len(frames) - 10}
    assert manifest  # written, with its checksums
    # the UniEmoX smoke run wrote a checkpoint, and the summary says it is not a real model
    assert (tmp_path / "demo" / "uniemox" / "run" / "last.pt").is_file()
    assert "not a real model" in first
    assert "Summary" in first and str(release) in first

    second = _build(pipeline)
    assert "nothing to do: every step is up to date" in second
    assert "running" not in second
    assert ws.status() == counts


def test_demo_inputs_are_deterministic_and_rewrite_nothing(tmp_path: Path) -> None:
    settings = DemoInputsSettings(out=tmp_path / "in", base_url="http://127.0.0.1:9/")
    first = write_demo_inputs(None, settings, False)
    rows = sample_manifest()
    assert first.folder_images == len(rows) // 2 + 2
    assert first.written == first.folder_images + 1  # every image, and the URL list
    lines = first.url_list.read_text().splitlines()
    assert len(lines) == 1 + len(rows) - len(rows) // 2 + 1  # header, the even rows, the dead link
    assert all(line.startswith("http://127.0.0.1:9/") for line in lines[1:])
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    again = write_demo_inputs(None, settings, False)
    assert again.written == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == stamps


def test_demo_inputs_refuse_a_folder_without_samples(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"holds no manifest\.csv"):
        write_demo_inputs(None, DemoInputsSettings(out=tmp_path / "in", samples=tmp_path / "nothing"), False)
    assert not (tmp_path / "in").exists()  # nothing half-written


def test_simulated_export_of_an_empty_round_is_empty(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    export = write_simulated_export(ws, "round-x", tmp_path / "export.json")
    assert (export.tasks, export.answers) == (0, 0)
    assert json.loads((tmp_path / "export.json").read_text()) == []


def test_bundled_tiny_teacher_is_the_tests_tiny_clip() -> None:
    from uniemox.testing import TINY_CLIP

    assert json.loads((PIPELINES / "demo" / "uniemox-tiny-clip.json").read_text()) == TINY_CLIP


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_validates_against_the_registry(recipe: str) -> None:
    load_stages()
    pipeline = load_pipeline(PIPELINES / recipe)
    assert pipeline.steps
    assert all(step.stage.name == get_stage(step.stage.name).name for step in pipeline.steps)


def test_emo8_recipe_covers_every_emotion_and_style_with_safe_licences() -> None:
    load_stages()
    pipeline = load_pipeline(PIPELINES / "emo8.yaml")
    searches: list[Any] = [s.settings for s in pipeline.steps if s.stage.name == "ingest-openverse"]
    pairs = Counter((s.label, s.domain) for s in searches)
    assert pairs == Counter({(e, d): 1 for e in EMOTIONS for d in DOMAINS})  # all 40 pairs, once each
    for s in searches:
        assert len(s.query) >= 3, f"{s.label} x {s.domain}: several queries per pair"
        assert set(s.licenses) <= {"cc0", "pdm", "by", "by-sa"}, "no NC or ND licences"
        assert s.licenses and s.exclude and s.max_results == searches[0].max_results
    stages = [s.stage.name for s in pipeline.steps]
    for needed in ("embed", "dedup", "suggest", "select", "annotate-round", "annotate-aggregate", "audit"):
        assert needed in stages
    assert stages[-4:] == ["split", "release", "push", "uniemox-pretrain"]
    embeds: list[Any] = [s.settings for s in pipeline.steps if s.stage.name == "embed"]
    embed_models = {e.model for e in embeds}
    assert any(m.startswith("open_clip:") for m in embed_models)  # a real pretrained CLIP
    pretrain: Any = pipeline.steps[-1].settings
    assert (pretrain.model, pretrain.teacher, pretrain.teacher_pretrained) == (
        "mae_vit_large_patch16", "ViT-B-16", "openai",
    )  # fmt: skip


def test_a_recipe_with_an_unknown_setting_is_refused_with_its_line(tmp_path: Path) -> None:
    load_stages()
    text = (PIPELINES / "from-hf.yaml").read_text().replace("probe: linear", "probe: linear, colour: blue")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(PipelineError) as error:
        load_pipeline(bad)
    line = text.splitlines().index(next(t for t in text.splitlines() if "colour: blue" in t)) + 1
    assert f"bad.yaml:{line}: steps[3].settings.colour: unknown setting of stage 'audit'" in str(error.value)


def test_docs_pipelines_names_every_registered_stage() -> None:
    text = (REPO / "docs" / "pipelines.md").read_text()
    missing = [name for name in load_stages() if f"`{name}`" not in text]
    assert not missing, f"docs/pipelines.md does not describe these stages: {missing}"


def test_make_demo_builds_the_demo_pipeline() -> None:
    makefile = (REPO / "Makefile").read_text()
    target = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "emo8 build pipelines/demo.yaml" in target
    readme = (REPO / "README.md").read_text()
    assert readme.index("make demo") < readme.index("make test") < 400  # the two commands open the README
    assert "docs/pipelines.md" in readme
