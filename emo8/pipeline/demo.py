"""Demo-only stages of ``pipelines/demo.yaml`` (what ``make demo`` builds, offline, from the bundled samples).

The demo is an ordinary pipeline file run by ``emo8 build``; these stages only stand in for what the real world
provides when the real recipe (``pipelines/emo8.yaml``) runs:

- ``demo-inputs`` writes the demo's sources: half of the bundled samples into a folder (plus a resized and a
  mirrored copy of one photo, for dedup to find) and a URL list of the other half (plus one dead link), whose URLs
  point at the build's ``serve:`` server, so the polite downloader runs for real on loopback;
- ``demo-annotators`` writes the Label Studio JSON export of an annotation round answered by SIMULATED
  annotators, which the real ``annotate-import`` stage then reads (people answer a real round in Label Studio);
- ``demo-summary`` prints the key numbers and where the release, the reports and the smoke run are.

Every output is deterministic and a file is rewritten only when its bytes change, so a second build finds the
inputs unchanged and does nothing. These stages have no CLI command (``command=()``): they exist for the demo.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from emo8.core.stage import Stage, StageSettings, Summary, path_digest, register_stage, setting
from emo8.core.workspace import Workspace

__all__ = [
    "DEMO_ANNOTATORS",
    "DEMO_INPUTS",
    "DEMO_SUMMARY",
    "DEMO_WEAK_LABELS",
    "SAMPLES",
    "sample_manifest",
    "summary_lines",
    "write_simulated_export",
]

SAMPLES = Path(__file__).parents[1] / "samples"

#: Where ``pipelines/demo.yaml`` serves the samples folder (its ``serve:`` port).
DEFAULT_BASE_URL = "http://127.0.0.1:8765"

#: Stand-in weak labels for the demo's URL list (as a keyword-seeded crawl would give): sample category -> emotion.
#: They only let the demo show a bootstrap release; they are not emotion annotations.
DEMO_WEAK_LABELS = {
    "painting": "awe",
    "animals": "amusement",
    "landscape": "contentment",
    "people": "excitement",
}

#: The photo the demo copies twice (resized, mirrored); the copies sort after it, so the original stays canonical.
COPIED_SAMPLE = "images/skm-0009.jpg"


def sample_manifest(samples: Path = SAMPLES) -> list[dict[str, str]]:
    """Return the rows of the bundled samples' manifest (file, domain, category, license, attribution...)."""
    if not (samples / "manifest.csv").is_file():
        raise FileNotFoundError(
            f"{samples} holds no manifest.csv: `samples` must be the bundled sample folder ({SAMPLES})"
        )
    with open(samples / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _write_if_changed(path: Path, data: bytes) -> bool:
    """Write ``data`` to ``path`` unless it already holds exactly these bytes (mtimes stay, so folder digests
    stay); return whether it wrote."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return True


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


# -- demo-inputs ------------------------------------------------------------------------------------------------


class DemoInputsSettings(StageSettings):
    """Settings of a pipeline's ``demo-inputs`` step."""

    out: Path = setting(..., "Folder for the demo's inputs: folder/ (images) and urls.csv (the URL list).")
    samples: Path = setting(SAMPLES, "The bundled sample images and their manifest.csv.")
    base_url: str = setting(
        DEFAULT_BASE_URL, "Where the build's `serve:` server serves the samples folder (its port must match)."
    )


@dataclass
class DemoInputs:
    """What ``demo-inputs`` wrote: the folder and its image count, the URL list and its rows, files rewritten."""

    folder: Path
    folder_images: int
    url_list: Path
    urls: int
    written: int


def write_demo_inputs(ws: Workspace | None, settings: DemoInputsSettings, progress: bool) -> DemoInputs:
    """Split the samples: odd manifest rows (and two edited copies) into ``out/folder``, even rows into
    ``out/urls.csv`` with the stand-in weak labels of :data:`DEMO_WEAK_LABELS`, plus one dead link."""
    rows = sample_manifest(settings.samples)
    local, remote = rows[1::2], rows[::2]  # the folder gets len // 2 rows, the URL list the rest
    folder = settings.out / "folder"
    written = 0
    for row in local:
        written += _write_if_changed(
            folder / Path(row["file"]).name, (settings.samples / row["file"]).read_bytes()
        )
    with Image.open(settings.samples / COPIED_SAMPLE) as original:
        photo = original.convert("RGB")
    name = Path(COPIED_SAMPLE).name
    copies = {
        f"zz-copy-resized-{name}": photo.resize((photo.width // 2, photo.height // 2)),
        f"zz-copy-mirrored-{name}": ImageOps.mirror(photo),
    }
    for copy_name, image in copies.items():
        written += _write_if_changed(folder / copy_name, _jpeg(image))
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["url", "caption", "license", "author", "domain", "label"])
    base = settings.base_url.rstrip("/")
    for row in remote:
        label = DEMO_WEAK_LABELS.get(row["category"], "")
        writer.writerow([f"{base}/{row['file']}", row["category"], row["license"], "", row["domain"], label])
    writer.writerow([f"{base}/images/missing.jpg", "a dead link", "", "", "", ""])
    url_list = settings.out / "urls.csv"
    written += _write_if_changed(url_list, text.getvalue().encode())
    return DemoInputs(folder, len(local) + len(copies), url_list, len(remote) + 1, written)


def summarize_demo_inputs(result: DemoInputs, settings: DemoInputsSettings) -> Summary:
    return Summary(
        [
            f"[bold]demo inputs[/]: {result.folder_images} images in {result.folder} (2 are edited copies for "
            f"dedup to find), {result.urls} URLs in {result.url_list} (1 dead link; stand-in weak labels) served "
            f"at {settings.base_url}; {result.written} file(s) written"
        ]
    )


# -- demo-annotators --------------------------------------------------------------------------------------------


class DemoAnnotatorsSettings(StageSettings):
    """Settings of a pipeline's ``demo-annotators`` step."""

    round: str = setting(..., "The annotation round (its selection) the SIMULATED annotators answer.")
    out: Path = setting(..., "The Label Studio JSON export to write (then read by `annotate-import`).")
    annotators: int = setting(3, "Simulated annotators per task.", ge=1, le=9)


@dataclass
class SimulatedExport:
    """The export ``demo-annotators`` wrote: its path, tasks, answers and whether the file changed."""

    path: Path
    tasks: int
    answers: int
    written: bool


def write_simulated_export(
    workspace: Workspace | Path, round_name: str, path: Path, annotators: int = 3
) -> SimulatedExport:
    """Write a Label Studio JSON export of ``round_name`` answered by simulated annotators (demo only).

    Each item's "true" answer is its weak label (else its suggestion, else contentment); one answer in four picks
    the next emotion instead, so agreement statistics have something to measure.
    """
    from emo8.annotate.labelconfig import LabelConfig
    from emo8.core.taxonomy import EMOTIONS

    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    config = LabelConfig.load(None)
    items = ws.items(["item_id", "weak_label", "suggested_label"]).set_index("item_id")
    tasks: list[dict[str, Any]] = []
    answered = 0
    for t, item_id in enumerate(ws.catalog.selection(round_name)):
        candidates = [items.at[item_id, "weak_label"], items.at[item_id, "suggested_label"], "contentment"]
        truth = str(next(c for c in candidates if isinstance(c, str) and c in EMOTIONS))
        answers = []
        for a in range(annotators):
            choice = truth if (t + a) % 4 else EMOTIONS[(EMOTIONS.index(truth) + 1) % len(EMOTIONS)]
            answers.append({
                "id": annotators * t + a + 1,
                "completed_by": {"id": a + 1, "email": f"simulated-annotator{a + 1}@demo.invalid"},
                "result": config.choice_result(choice), "was_cancelled": False, "ground_truth": False,
                "lead_time": 5.0 + a, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            })  # fmt: skip
        tasks.append({"id": t + 1, "data": {"item_id": item_id}, "annotations": answers})
        answered += len(answers)
    written = _write_if_changed(path, json.dumps(tasks, indent=1).encode())
    return SimulatedExport(path, len(tasks), answered, written)


def run_demo_annotators(ws: Workspace, settings: DemoAnnotatorsSettings, progress: bool) -> SimulatedExport:
    """:func:`write_simulated_export` for the step's round."""
    return write_simulated_export(ws, settings.round, settings.out, settings.annotators)


def summarize_demo_annotators(result: SimulatedExport, settings: DemoAnnotatorsSettings) -> Summary:
    lines = [
        f"[bold]SIMULATED ANNOTATORS[/] (demo only, not human answers): {settings.annotators} per task answered "
        f"{result.tasks} task(s) of round {settings.round}: {result.answers} answers in {result.path}"
        + ("" if result.written else " (unchanged)")
    ]
    warnings = [] if result.tasks else [f"round {settings.round} selects no items: the export is empty"]
    return Summary(lines, warnings)


# -- demo-summary -----------------------------------------------------------------------------------------------


class DemoSummarySettings(StageSettings):
    """Settings of a pipeline's ``demo-summary`` step."""

    pretrain_out: Path | None = setting(None, "The UniEmoX smoke run's folder (to point at its checkpoint).")


def summary_lines(workspace: Workspace | Path, pretrain_out: Path | None = None) -> list[str]:
    """The demo's closing summary: the key numbers (items in, rejected, duplicates, labelled, per split) and where
    each report and release lies."""
    from emo8.pipeline.status import workspace_status

    ws = workspace if isinstance(workspace, Workspace) else Workspace.open(workspace)
    status = workspace_status(ws)
    counts = status.status
    rejected = {k: v for k, v in counts.items() if k in ("invalid", "failed", "skipped")}
    labels = status.labels
    lines = [
        "[bold]Summary[/]",
        f"items in:    {status.items} (valid {status.valid})",
        f"rejected:    {sum(rejected.values())}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(rejected.items()))})" if rejected else ""),
        f"duplicates:  {counts.get('duplicate', 0)} (contaminated {counts.get('contaminated', 0)})",
        f"labelled:    {labels.get('settled annotation', 0)} settled by annotation (SIMULATED annotators), "
        f"{labels.get('unsettled annotation', 0)} annotated but unsettled, "
        f"{labels.get('imported label', 0)} imported, {labels.get('weak label only', 0)} weak label only",
        "splits:      " + (", ".join(f"{k} {v}" for k, v in status.splits.items()) or "none"),
    ]
    for release in status.releases:
        lines.append(
            f"release {release.version}: {release.images} images ("
            + ", ".join(f"{k} {v}" for k, v in release.splits.items())
            + f"); card {Path(release.path) / 'README.md'}"
        )
    lines.append("reports:")
    lines += [f"  {path}" for path in status.reports]
    if pretrain_out is not None:
        checkpoint = pretrain_out / "last.pt"
        lines.append(
            f"UniEmoX smoke run (tiny model, RANDOM teacher: not a real model): "
            f"{checkpoint if checkpoint.is_file() else f'no checkpoint in {pretrain_out}'}"
        )
    lines.append(f"workspace:   {ws.root}")
    return lines


def run_demo_summary(ws: Workspace, settings: DemoSummarySettings, progress: bool) -> list[str]:
    """:func:`summary_lines` of the workspace."""
    return summary_lines(ws, settings.pretrain_out)


def summarize_demo(lines: list[str], settings: DemoSummarySettings) -> Summary:
    return Summary(lines)


DEMO_INPUTS = register_stage(
    Stage(
        name="demo-inputs",
        settings=DemoInputsSettings,
        run=write_demo_inputs,
        summarize=summarize_demo_inputs,
        command=(),
        help="Demo only: write half the bundled samples (and two edited copies) to a folder, the rest to a URL list.",
        usage_errors=(FileNotFoundError,),
        reads=(),
        writes=(),
        inputs=lambda s: path_digest(s.samples),  # never its own outputs: they exist after the first run
    )
)

DEMO_ANNOTATORS = register_stage(
    Stage(
        name="demo-annotators",
        settings=DemoAnnotatorsSettings,
        run=run_demo_annotators,
        summarize=summarize_demo_annotators,
        command=(),
        help="Demo only: a Label Studio export of a round answered by SIMULATED annotators.",
        usage_errors=(KeyError, ValueError),
        reads=("table:items", "table:selections"),
        writes=(),
    )
)

DEMO_SUMMARY = register_stage(
    Stage(
        name="demo-summary",
        settings=DemoSummarySettings,
        run=run_demo_summary,
        summarize=summarize_demo,
        command=(),
        help="Demo only: the key numbers, and where the release, the reports and the smoke run are.",
        reads=("table:items", "dir:releases", "dir:reports"),
        writes=(),
        inputs=lambda s: path_digest(s.pretrain_out) if s.pretrain_out is not None else "-",
    )
)
