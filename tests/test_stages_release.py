"""The audit, split, release, push and UniEmoX stages: one settings model each, the same from the CLI and from
``stage.run``; bad settings name the option; a release reads (and only verifies) what earlier stages recorded, and
cites the build that made its workspace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import ValidationError
from releasefixtures import *  # noqa: F403  (the workspace fixtures)
from typer.testing import CliRunner

from emo8.cli import app
from emo8.core.buildinfo import write_current_build
from emo8.core.stage import DEFAULT_WORKERS, Stage
from emo8.core.takedown import TakedownRequest, take_down
from emo8.core.workspace import Workspace
from emo8.release.publish import ReleaseResult, StaleInput
from emo8.release.stage import AUDIT, PUSH, RELEASE, SPLIT, ReleaseSettings, SplitSettings
from uniemox.cli import app as uniemox_app
from uniemox.datapath import DataPathError
from uniemox.stage import EVALUATE, FINETUNE, PRETRAIN, PretrainSettings, resolve_data

COMMON = {"ctx", "workspace", "quiet"}
EMO8_STAGES = [AUDIT, SPLIT, RELEASE, PUSH]
UNIEMOX_STAGES = [PRETRAIN, FINETUNE, EVALUATE]


def _command(program: typer.Typer, stage: Stage[Any, Any]) -> Any:
    return typer.main.get_command(program).commands[stage.command[-1]]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("program", "stage"),
    [(app, s) for s in EMO8_STAGES] + [(uniemox_app, s) for s in UNIEMOX_STAGES],
    ids=[s.name for s in EMO8_STAGES + UNIEMOX_STAGES],
)
def test_cli_params_are_the_model_fields(program: typer.Typer, stage: Stage[Any, Any]) -> None:
    names = {p.name for p in _command(program, stage).params}
    assert names - COMMON == set(stage.settings.model_fields)
    assert ("workspace" in names) == stage.workspace  # uniemox commands read data wherever it is


def test_old_spellings_still_work() -> None:
    pretrain = {o: p for p in _command(uniemox_app, PRETRAIN).params for o in p.opts}
    assert pretrain["--workers"] is pretrain["--num-workers"]
    assert pretrain["--quiet"] is pretrain["--no-progress"]
    finetune = {o: p for p in _command(uniemox_app, FINETUNE).params for o in p.opts}
    assert finetune["--quiet"] is finetune["--no-verbose"] and "--num-workers" in finetune
    release = {o: p for p in _command(app, RELEASE).params for o in p.opts}
    assert {"--version", "--format", "--out", "--allow-weak-labels", "--no-imported-labels"} <= set(release)


@pytest.mark.parametrize(
    ("program", "args", "option"),
    [
        (app, ["audit", "--probe", "forest"], "--probe"),
        (app, ["split", "--ratios", "0.5,0.5,0.5"], "--ratios"),
        (app, ["release", "--version", "1.0.0", "--format", "tarball"], "--format"),
        (app, ["release", "--version", "1.0.0", "--max-shard-mb", "0"], "--max-shard-mb"),
        (uniemox_app, ["pretrain", "--data", ".", "--out", "o", "--mask-ratio", "1.0"], "--mask-ratio"),
        (uniemox_app, ["finetune", "--data", ".", "--out", "o", "--fraction", "0"], "--fraction"),
    ],
)
def test_bad_settings_exit_2_naming_the_option(
    program: typer.Typer, args: list[str], option: str, plain_ws: Workspace
) -> None:
    if program is app:
        args = [args[0], "-w", str(plain_ws.root), *args[1:]]
    result = CliRunner().invoke(program, args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


def test_a_pipeline_step_gets_the_same_checks() -> None:
    with pytest.raises(ValidationError, match="sum to 1"):
        SplitSettings.model_validate({"ratios": "0.5,0.5,0.5"})
    with pytest.raises(ValidationError, match="extra"):
        ReleaseSettings.model_validate({"version": "1.0.0", "verison": "1.0.1"})
    with pytest.raises(ValidationError, match="version"):
        ReleaseSettings.model_validate({})


def _catalog_rows(ws: Workspace) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in ws.catalog.connect().execute("SELECT * FROM items ORDER BY item_id")]


def test_stages_run_in_order_and_release_only_reads(labelled_ws: Workspace) -> None:
    # without splits, a strict release stops and names the command that settles it; nothing is written
    strict = ReleaseSettings(version="1.0.0", assign_splits=False)
    outcome = RELEASE.run(labelled_ws, strict, False)
    assert isinstance(outcome, StaleInput) and "run `emo8 split`" in str(outcome)
    summary = RELEASE.summarize(outcome, strict)
    assert summary.problem and "no split" in summary.problem
    assert not (labelled_ws.releases_dir / "1.0.0").exists()

    split = SPLIT.run(labelled_ws, SplitSettings(ratios="0.7,0.1,0.2"), False)
    assert split.leaks.clean and sum(split.counts.values()) == split.candidates > 0
    assert SPLIT.summarize(split, SplitSettings()).problem is None

    before = _catalog_rows(labelled_ws)
    result = RELEASE.run(labelled_ws, strict, False)
    assert isinstance(result, ReleaseResult) and result.newly_split == 0
    assert _catalog_rows(labelled_ws) == before  # the release wrote nothing into the catalog
    assert 0 < sum(result.splits.values()) <= split.candidates
    lines = "\n".join(RELEASE.summarize(result, strict).lines)
    assert "release 1.0.0" in lines and "built by" not in lines

    report = AUDIT.run(labelled_ws, AUDIT.settings(), False)
    assert report.labelled > 0 and report.html.is_file()
    assert "audit" in AUDIT.summarize(report, AUDIT.settings()).lines[0]


def test_cli_release_without_splits_can_be_told_to_stop(labelled_ws: Workspace) -> None:
    runner = CliRunner()
    base = ["release", "-w", str(labelled_ws.root), "--version", "1.0.0", "-q"]
    stopped = runner.invoke(app, [*base, "--no-assign-splits"])
    assert stopped.exit_code == 1 and "emo8 split" in stopped.output
    done = runner.invoke(app, base)  # the default assigns them, as `emo8 split` would
    assert done.exit_code == 0, done.output
    assert "assigned splits to" in done.output


def test_an_unrecorded_copy_of_a_taken_down_image_stops_the_release(labelled_ws: Workspace) -> None:
    SPLIT.run(labelled_ws, SplitSettings(), False)
    items = labelled_ws.items(["item_id", "sha256"], where="status = 'valid'")
    victim = str(items["item_id"].iloc[0])
    take_down(labelled_ws, TakedownRequest("rights holder", sha256=str(items["sha256"].iloc[0])))
    # a copy the catalog does not mark removed (as if it arrived after the take-down, unseen by ingest or split)
    labelled_ws.catalog.update_items([victim], {"status": ["valid"], "reason": [None]})
    outcome = RELEASE.run(labelled_ws, ReleaseSettings(version="1.0.0", assign_splits=False), False)
    assert isinstance(outcome, StaleInput)
    assert "taken-down" in str(outcome) and "emo8 split" in str(outcome)
    result = CliRunner().invoke(app, ["split", "-w", str(labelled_ws.root), "-q"])  # applies the take-down
    assert result.exit_code == 0, result.output
    released = RELEASE.run(labelled_ws, ReleaseSettings(version="1.0.0"), False)
    assert isinstance(released, ReleaseResult)
    manifest = json.loads((released.path / "manifest.json").read_text())
    assert str(items["sha256"].iloc[0]) not in manifest["items"]


def _record(tmp_path: Path) -> dict[str, Any]:
    """A build record shaped like the one ``emo8 build`` writes."""
    return {
        "run_id": "20260101T000000Z-abc",
        "started_at": "2026-01-01T00:00:00Z",
        "status": "running",
        "code_version": "9.9.9+gdeadbeef",
        "pipeline": {
            "name": "demo",
            "description": "test",
            "path": str(tmp_path / "pipelines" / "demo.yaml"),
            "sha256": "ab" * 32,
            "text": "emo8: 1\nname: demo\n",
        },
        "steps": [
            {"name": "dedup", "stage": "dedup", "status": "done", "seconds": 1.5, "summary": ["x"],
             "settings": {"phash_max_distance": 7, "workers": DEFAULT_WORKERS,
                          "tiers": ["exact", "perceptual", "semantic"]},
             "settings_fingerprint": "f1"},
            {"name": "split", "stage": "split", "status": "done",
             "settings": {"ratios": "0.7,0.1,0.2", "seed": 0}, "settings_fingerprint": "f2"},
            {"name": "release", "stage": "release", "status": "running",
             "settings": {"version": "1.0.0", "repo": "a|b", "imagefolder_out": "/" + "x" * 70 + "/folder"},
             "settings_fingerprint": "f3"},
        ],
    }  # fmt: skip


def test_the_release_cites_the_build_record(labelled_ws: Workspace, tmp_path: Path) -> None:
    import emo8.dedup.stage  # noqa: F401  (registers dedup: its defaults are left out of the card's table)

    write_current_build(labelled_ws, _record(tmp_path))
    result = CliRunner().invoke(app, ["release", "-w", str(labelled_ws.root), "--version", "1.0.0", "-q"])
    assert result.exit_code == 0, result.output
    assert "built by: " in result.output and "demo.yaml (sha256 abababababab)" in result.output
    out = labelled_ws.releases_dir / "1.0.0"
    card = (out / "README.md").read_text()
    section = card.split("## How this release was built", 1)[1].split("\n## ", 1)[0]
    assert str(tmp_path / "pipelines" / "demo.yaml") in section and "ab" * 32 in section
    assert "9.9.9+gdeadbeef" in section
    assert "| `dedup` | `dedup` | phash_max_distance=7 |" in section  # defaults (workers, tiers) left out
    assert '| `split` | `split` | ratios="0.7,0.1,0.2" |' in section
    assert 'repo="a\\|b"' in section  # a pipe cannot break the table
    assert (
        'imagefolder_out="...' + "x" * 48 + '/folder"' in section and "x" * 49 not in section
    )  # long paths keep their end
    manifest = json.loads((out / "manifest.json").read_text())
    build = manifest["build"]
    assert build["pipeline"]["sha256"] == "ab" * 32 and build["pipeline"]["text"].startswith("emo8: 1")
    assert build["code_version"] == "9.9.9+gdeadbeef"
    assert [s["stage"] for s in build["steps"]] == ["dedup", "split", "release"]
    assert build["steps"][0]["settings"]["workers"] == DEFAULT_WORKERS  # the manifest keeps every setting
    assert "started_at" not in json.dumps(build) and "status" not in build["steps"][0]  # how, not when


def test_a_hand_made_release_says_so(labelled_ws: Workspace) -> None:
    result = RELEASE.run(labelled_ws, ReleaseSettings(version="1.0.0"), False)
    assert isinstance(result, ReleaseResult) and result.build is None
    card = (result.path / "README.md").read_text()
    assert "no `emo8 build` record" in card
    assert json.loads((result.path / "manifest.json").read_text())["build"] is None


def test_push_input_errors_exit_2(labelled_ws: Workspace) -> None:
    result = CliRunner().invoke(
        app, ["push", "-w", str(labelled_ws.root), "--version", "9.9.9", "--repo", "org/name"]
    )
    assert result.exit_code == 2 and "9.9.9" in result.output and "Traceback" not in result.output


# -- uniemox ----------------------------------------------------------------------------------------------------------


def test_data_latest_is_the_workspace_newest_release(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    with pytest.raises(DataPathError, match="no release yet"):
        resolve_data("latest", ws)
    for version in ("1.2.0", "1.10.0", "1.9.3"):
        (ws.releases_dir / version).mkdir(parents=True)
        (ws.releases_dir / version / "manifest.json").write_text("{}")
    assert resolve_data("latest", ws) == str(ws.releases_dir / "1.10.0")
    assert resolve_data("some/dir", ws) == "some/dir"
    with pytest.raises(DataPathError, match="pipeline"):
        resolve_data("latest", None)
    result = CliRunner().invoke(uniemox_app, ["pretrain", "--data", "latest", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--data latest" in result.output
    assert not (tmp_path / "o").exists()


def _tiny(data: str, out: Path, teacher: Path, **extra: Any) -> PretrainSettings:
    return PretrainSettings.model_validate(
        {"data": data, "out": out, "model": "mae_vit_tiny_patch16", "img_size": 32, "patch_size": 8,
         "embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2,
         "teacher": str(teacher), "teacher_pretrained": "random", "batch_size": 4, "warmup_steps": 1,
         "max_steps": 2, "ckpt_every": 0, "num_workers": 0, "device": "cpu", **extra}
    )  # fmt: skip


def test_pretrain_stage_on_the_latest_release(tmp_path: Path) -> None:
    from finetunefixtures import make_emo8_release

    from uniemox.testing import tiny_teacher

    ws = Workspace.init(tmp_path / "ws")
    release_dir = make_emo8_release(ws.releases_dir / "0.1.0", n=16)
    (release_dir / "manifest.json").write_text("{}")
    settings = _tiny("latest", tmp_path / "run", tiny_teacher(tmp_path))
    result = PRETRAIN.run(ws, settings, False)
    assert result["steps"] == 2 and (tmp_path / "run" / "last.pt").is_file()
    line = PRETRAIN.summarize(result, settings).lines[-1]
    assert json.loads(line)["steps"] == 2
    # a resume compares only the settings a step names: a longer run is fine, a new mask ratio is refused
    longer = PRETRAIN.settings.model_validate(
        {"data": "latest", "out": tmp_path / "run", "resume": "auto", "max_steps": 3, "device": "cpu"}
    )
    assert PRETRAIN.run(ws, longer, False)["steps"] == 3
    changed = PRETRAIN.settings.model_validate({**longer.model_dump(exclude_unset=True), "mask_ratio": 0.5})
    with pytest.raises(ValueError, match="mask_ratio"):
        PRETRAIN.run(ws, changed, False)


def test_items_dedup_has_not_seen_are_warned_about(labelled_ws: Workspace) -> None:
    import pandas as pd

    from emo8.core.curation import PAIRS_FILE, PAIRS_ITEMS_FILE

    items = labelled_ws.items(["item_id"], where="status = 'valid'")["item_id"].astype(str).tolist()
    (labelled_ws.root / PAIRS_FILE).parent.mkdir(parents=True, exist_ok=True)
    empty = {"a": pd.Series([], dtype=str), "b": pd.Series([], dtype=str), "tier": pd.Series([], dtype=str),
             "score": pd.Series([], dtype=float), "inliers": pd.Series([], dtype="Int64")}  # fmt: skip
    pd.DataFrame(empty).to_parquet(labelled_ws.root / PAIRS_FILE)
    pd.DataFrame({"item_id": items[3:]}).to_parquet(labelled_ws.root / PAIRS_ITEMS_FILE)  # the last dedup run
    result = RELEASE.run(labelled_ws, ReleaseSettings(version="1.0.0"), False)
    assert isinstance(result, ReleaseResult)
    warning = next(w for w in result.warnings if "emo8 dedup" in w)
    assert warning.startswith("3 released item(s) arrived after the last `emo8 dedup`")
    assert RELEASE.summarize(result, ReleaseSettings(version="1.0.0")).warnings[0] == warning


def test_split_leaks_are_a_problem_that_stops_a_build(labelled_ws: Workspace) -> None:
    import dataclasses

    result = SPLIT.run(labelled_ws, SplitSettings(dry_run=True), False)
    assert SPLIT.summarize(result, SplitSettings(dry_run=True)).problem is None
    leak = {"a": "x", "b": "y", "split_a": "train", "split_b": "test", "kind": "phash"}
    leaking = dataclasses.replace(result, leaks=dataclasses.replace(result.leaks, leaks=[leak]))
    summary = SPLIT.summarize(leaking, SplitSettings())
    assert summary.problem and "--reassign" in summary.problem and "--allow-leaks" in summary.problem
    assert "leak check: [red]" in summary.lines[-1]
