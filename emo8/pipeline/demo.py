"""``make demo``: build a small Emo8 workspace from the bundled sample images, offline.

Half of the samples are ingested from a folder; the other half are served by a loopback HTTP server and ingested
from a URL list, so the polite downloader runs for real (plus one dead link, to show how failures are recorded).
Every later stage of the pipeline joins here as it lands.
"""

from __future__ import annotations

import csv
import functools
import json
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from PIL import Image, ImageOps
from typer.testing import CliRunner

from emo8.cli import app

SAMPLES = Path(__file__).parents[1] / "samples"

#: Stand-in weak labels for the demo's URL list (as a keyword-seeded crawl would give): sample category -> emotion.
#: They only let the demo show a bootstrap release; they are not emotion annotations.
DEMO_WEAK_LABELS = {
    "painting": "awe",
    "animals": "amusement",
    "landscape": "contentment",
    "people": "excitement",
}


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """Serve ``directory`` over HTTP on a free loopback port; yield the base URL (no trailing slash)."""
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def sample_manifest() -> list[dict[str, str]]:
    """Return the rows of the bundled samples' manifest (file, domain, category, license, attribution...)."""
    with open(SAMPLES / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def run(root: Path) -> int:
    """Build the demo workspace under ``root`` (recreated from scratch); return the process exit code."""
    if root.exists():
        shutil.rmtree(root)
    incoming = root / "incoming"
    folder = incoming / "folder"
    folder.mkdir(parents=True)
    rows = sample_manifest()
    local, remote = rows[1::2], rows[::2]  # the folder gets len // 2 rows, the URL list the rest
    for row in local:
        shutil.copy(SAMPLES / row["file"], folder / Path(row["file"]).name)
    # copies for dedup to find, named to register after the original (which therefore stays canonical)
    cat = Image.open(SAMPLES / "images" / "skm-0009.jpg").convert("RGB")
    cat.resize((cat.width // 2, cat.height // 2)).save(folder / "zz-copy-resized-skm-0009.jpg")
    ImageOps.mirror(cat).save(folder / "zz-copy-mirrored-skm-0009.jpg")
    workspace = str(root / "workspace")
    runner = CliRunner()

    def emo8(*args: str) -> None:
        print(f"\n$ emo8 {' '.join(args)}", flush=True)
        result = runner.invoke(app, list(args), catch_exceptions=False)
        print(result.output, end="", flush=True)
        if result.exit_code != 0:
            raise SystemExit(result.exit_code)

    emo8("init", workspace)
    emo8("ingest", "folder", str(folder), "-w", workspace, "--domain", "mixed", "--quiet")
    with serve_directory(SAMPLES) as base_url:
        url_list = incoming / "urls.csv"
        with open(url_list, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["url", "caption", "license", "author", "domain", "label"])
            for row in remote:
                writer.writerow(
                    [f"{base_url}/{row['file']}", row["category"], row["license"], "", row["domain"],
                     DEMO_WEAK_LABELS.get(row["category"], "")]
                )  # fmt: skip
            writer.writerow([f"{base_url}/images/missing.jpg", "a dead link", "", "", "", ""])
        emo8("ingest", "urls", str(url_list), "-w", workspace, "--allow-private-networks", "--quiet")
    emo8("embed", "-w", workspace, "--model", "efficientnet-lite0", "--quiet")  # dedup
    emo8("dedup", "-w", workspace, "--quiet")
    # Suggest and select. Offline there is no CLIP text tower, so suggestions are kNN votes (and a probe
    # once classes have 5 labels) learnt from the URL list's stand-in weak labels.
    print("\n# suggestions learn from the stand-in weak labels (categories as emotions)", flush=True)
    emo8("suggest", "-w", workspace, "--model", "efficientnet-lite0", "--quiet")
    emo8("select", "-w", workspace, "--budget", "10", "--round", "round-1")
    emo8("detect-people", "-w", workspace, "--quiet")
    # Annotate. A live round runs in a Label Studio server (`emo8 annotate serve`, `push`, `pull`); the
    # offline demo imports a Label Studio JSON export of round-1 answered by three SIMULATED annotators instead.
    export = incoming / "round-1-export.json"
    write_simulated_export(Path(workspace), "round-1", export)
    print(
        "\n# SIMULATED ANNOTATORS: a Label Studio export written by the demo, not human answers", flush=True
    )
    emo8("annotate", "import", str(export), "--round", "round-1", "-w", workspace)
    emo8("annotate", "aggregate", "-w", workspace)
    # Curation: leak-free splits, a release, the audit. No annotation round has settled labels in the
    # demo, so the release is a bootstrap from the URL list's weak labels, and says so.
    emo8("split", "-w", workspace, "--quiet")
    print(
        "\n# BOOTSTRAP RELEASE: weak labels from the URL list (stand-ins), not settled annotations",
        flush=True,
    )
    emo8(
        "release", "-w", workspace, "--version", "0.1.0", "--allow-weak-labels", "--format", "both", "--quiet"
    )
    emo8("audit", "-w", workspace, "--quiet")
    emo8("status", "-w", workspace)
    pretrain_on_release(root / "workspace" / "releases" / "0.1.0", root / "uniemox")
    print("\n" + "\n".join(summary_lines(Path(workspace))), flush=True)
    return 0


def summary_lines(workspace: Path) -> list[str]:
    """The demo's closing summary: the key numbers (items in, rejected, duplicates, labelled, per split) and where
    each report and release lies."""
    from emo8.core.workspace import Workspace
    from emo8.pipeline.status import workspace_status

    ws = Workspace.open(workspace)
    status = workspace_status(ws)
    counts = status.status
    rejected = {k: v for k, v in counts.items() if k in ("invalid", "failed", "skipped")}
    labels = status.labels
    lines = [
        "# Summary",
        f"items in:    {status.items} (valid {status.valid})",
        f"rejected:    {sum(rejected.values())}"
        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(rejected.items()))})" if rejected else ""),
        f"duplicates:  {counts.get('duplicate', 0)} (contaminated {counts.get('contaminated', 0)})",
        f"labelled:    {labels.get('settled annotation', 0)} settled by annotation, "
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
    lines.append(f"workspace:   {ws.root}")
    return lines


def write_simulated_export(workspace: Path, round_name: str, path: Path) -> None:
    """Write a Label Studio JSON export of ``round_name`` answered by three simulated annotators (demo only).

    Each item's "true" answer is its weak label (else its suggestion); one answer in four picks the next emotion
    instead, so agreement statistics have something to measure.
    """
    from emo8.annotate.labelconfig import LabelConfig
    from emo8.core.taxonomy import EMOTIONS
    from emo8.core.workspace import Workspace

    ws = Workspace.open(workspace)
    config = LabelConfig.load(None)
    items = ws.items(["item_id", "weak_label", "suggested_label"]).set_index("item_id")
    tasks = []
    for t, item_id in enumerate(ws.catalog.selection(round_name)):
        candidates = [items.at[item_id, "weak_label"], items.at[item_id, "suggested_label"], "contentment"]
        truth = str(next(c for c in candidates if isinstance(c, str) and c in EMOTIONS))
        annotations = []
        for a in range(3):
            choice = truth if (t + a) % 4 else EMOTIONS[(EMOTIONS.index(truth) + 1) % len(EMOTIONS)]
            annotations.append({
                "id": 3 * t + a + 1, "completed_by": {"id": a + 1, "email": f"annotator{a + 1}@demo.invalid"},
                "result": config.choice_result(choice), "was_cancelled": False, "ground_truth": False,
                "lead_time": 5.0 + a, "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z",
            })  # fmt: skip
        tasks.append({"id": t + 1, "data": {"item_id": item_id}, "annotations": annotations})
    path.write_text(json.dumps(tasks, indent=1))


def pretrain_on_release(release: Path, out: Path) -> None:
    """UniEmoX: a few CPU steps of a tiny student on the demo release.

    No CLIP weights can be had offline, so the teacher is a tiny, RANDOMLY initialised CLIP, asked for explicitly;
    real runs use ``--teacher ViT-B-16 --teacher-pretrained openai`` (the default).
    """
    from uniemox.cli import app as uniemox_app
    from uniemox.testing import tiny_teacher

    out.mkdir(parents=True, exist_ok=True)
    args = [
        "pretrain", "--data", str(release), "--out", str(out / "run"), "--model", "mae_vit_tiny_patch16",
        "--img-size", "32", "--patch-size", "8", "--embed-dim", "32", "--depth", "2", "--num-heads", "2",
        "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2", "--batch-size", "8",
        "--max-steps", "4", "--warmup-steps", "2", "--ckpt-every", "4", "--num-workers", "0",
        "--teacher", str(tiny_teacher(out)), "--teacher-pretrained", "random",
    ]  # fmt: skip
    print("\n# UniEmoX smoke run: tiny student, tiny RANDOM teacher (no CLIP weights offline)", flush=True)
    print(f"$ uniemox {' '.join(args)}", flush=True)
    result = CliRunner().invoke(uniemox_app, args, catch_exceptions=False)
    print(result.output[-2000:], end="", flush=True)
    if result.exit_code != 0:
        raise SystemExit(result.exit_code)


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("demo-workspace")
    raise SystemExit(run(root))


if __name__ == "__main__":
    main()
