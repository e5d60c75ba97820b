"""Annotation round trip against a local Label Studio: push N tasks with predictions, pull N annotations.

Starts a fresh Label Studio (its own virtual environment, a temporary data directory, a free loopback port; the
migrated template database makes the start take seconds) and a workspace with N synthetic valid items, each with a
suggestion (label, 8 probabilities, version).

- **push**: ``emo8.annotate.rounds.push_round`` for a round of N items: project creation, the server's task list
  read back (for idempotency), then N tasks with one prediction each imported in batches.
- **pull**: ``emo8.annotate.rounds.pull_round`` for a round of N tasks holding one annotation each (three real
  annotator accounts, round-robin). Community Label Studio has no bulk annotation API, so that project's tasks are
  imported with their annotations inline (``completed_by`` set to the annotators) instead of N single POSTs;
  pull then reads them exactly as it reads hand-made annotations, page by page, and commits them in one
  transaction. A second pull (nothing changed) is timed too.

Prints wall time and tasks/s for each, and the CPU model.

    .venv/bin/python benchmarks/annotate_roundtrip.py [--tasks 10000] [--batch-size 500] [--page-size 500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from machine import cpu_model  # noqa: E402

from emo8 import Workspace  # noqa: E402
from emo8.annotate.client import Client, ClientConfig  # noqa: E402
from emo8.annotate.labelconfig import LabelConfig  # noqa: E402
from emo8.annotate.rounds import PullOptions, PushOptions, project_title, pull_round, push_round  # noqa: E402
from emo8.annotate.server import ServerConfig, create_annotator, start_server, stop_server  # noqa: E402
from emo8.annotate.store import AnnotationStore  # noqa: E402
from emo8.core.catalog import ItemOutcome, OriginRecord  # noqa: E402
from emo8.core.taxonomy import EMOTIONS  # noqa: E402


def make_workspace(root: Path, n: int) -> tuple[Workspace, list[str]]:
    """A workspace with ``n`` valid items (synthetic sha256, no bytes needed to push) and suggestions."""
    ws = Workspace.init(root)
    records = [
        OriginRecord(origin_key=f"bench:{i}", source="bench", url=f"http://example.org/{i}.jpg")
        for i in range(n)
    ]
    ws.catalog.register(records)
    ids = list(ws.items(["item_id"])["item_id"])
    ws.catalog.apply(
        ItemOutcome(
            item_id=i,
            status="valid",
            sha256=hashlib.sha256(i.encode()).hexdigest(),
            signals={"format": "jpeg"},
        )
        for i in ids
    )
    ws.catalog.ensure_columns(
        {"suggested_label": "TEXT", "suggestion_probs": "TEXT", "suggestion_version": "TEXT"}
    )
    probs = []
    for k in range(n):
        p = [0.04] * 8
        p[k % 8] = 0.72
        probs.append(p)
    ws.catalog.update_items(
        ids,
        {
            "suggested_label": [EMOTIONS[k % 8] for k in range(n)],
            "suggestion_probs": probs,
            "suggestion_version": ["bench-v1"] * n,
        },
    )
    return ws, ids


def annotated_project(client: Client, ws: Workspace, ids: list[str], users: list[int], batch: int) -> int:
    """Create the pull round's project: one task per item, each with one annotation by one of ``users``."""
    config = LabelConfig.load()
    project = client.create_project(title=project_title(ws, "bench-pull"), label_config=config.xml)
    for start in range(0, len(ids), batch):
        tasks = []
        for k, item_id in enumerate(ids[start : start + batch], start=start):
            tasks.append(
                {
                    "data": {"image": f"/data/local-files/?d=objects/{item_id}.jpg", "item_id": item_id},
                    "annotations": [
                        {
                            "result": config.choice_result(EMOTIONS[(k * 7) % 8]),
                            "completed_by": users[k % len(users)],
                            "lead_time": 3.0 + k % 5,
                        }
                    ],
                }
            )
        client.import_tasks(int(project.id), tasks)
    store = AnnotationStore(ws.catalog)
    store.save_round("bench-pull", server_url=client.url, project_id=int(project.id), overlap=1)
    return int(project.id)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--page-size", type=int, default=500)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary directory.")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="emo8-annotate-bench-"))
    print(f"CPU: {cpu_model()}; scratch {scratch}", flush=True)
    t0 = time.perf_counter()
    server = start_server(ServerConfig(data_dir=scratch / "labelstudio", document_root=scratch), log=print)
    print(f"server healthy in {time.perf_counter() - t0:.1f}s at {server.url}", flush=True)
    results: dict[str, float] = {}
    try:
        client = Client(server.url, server.api_key, ClientConfig(timeout=600.0))
        ws, ids = make_workspace(scratch / "ws", args.tasks)
        ws.catalog.save_selection("bench-push", ids, "bench")

        t = time.perf_counter()
        push = push_round(
            ws,
            "bench-push",
            client,
            PushOptions(gold_rate=0.0, local_files_root=scratch, batch_size=args.batch_size),
        )
        results["push_s"] = time.perf_counter() - t
        assert push.new_tasks == args.tasks and push.with_predictions == args.tasks, push
        t = time.perf_counter()
        again = push_round(ws, "bench-push", client, PushOptions(gold_rate=0.0, local_files_root=scratch))
        results["repush_s"] = time.perf_counter() - t
        assert again.new_tasks == 0, again

        users = []
        for name in ("b0", "b1", "b2"):
            create_annotator(server.url, server.api_key, f"{name}@emo8.bench", f"Pw-{name}-4f1e9a7c")
        users = [uid for uid, email in client.users().items() if email.endswith("@emo8.bench")]
        t = time.perf_counter()
        annotated_project(client, ws, ids, users, args.batch_size)
        results["setup_annotated_project_s"] = time.perf_counter() - t

        t = time.perf_counter()
        pulled = pull_round(ws, "bench-pull", client, PullOptions(page_size=args.page_size))
        results["pull_s"] = time.perf_counter() - t
        assert pulled.annotations == args.tasks and pulled.changes.new == args.tasks, pulled
        t = time.perf_counter()
        repulled = pull_round(ws, "bench-pull", client, PullOptions(page_size=args.page_size))
        results["repull_s"] = time.perf_counter() - t
        assert repulled.changes.new == 0 and repulled.changes.unchanged == args.tasks, repulled
        annotators = (
            AnnotationStore(ws.catalog).annotations(["bench-pull"])["annotator"].value_counts().to_dict()
        )
    finally:
        stop_server(server.pid)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    n = args.tasks
    print(
        json.dumps(
            {
                "cpu": cpu_model(),
                "tasks": n,
                "batch_size": args.batch_size,
                "page_size": args.page_size,
                **{k: round(v, 2) for k, v in results.items()},
                "push_tasks_per_s": round(n / results["push_s"], 1),
                "pull_annotations_per_s": round(n / results["pull_s"], 1),
                "repull_annotations_per_s": round(n / results["repull_s"], 1),
                "annotators": annotators,
            },
            indent=2,
        )
    )
    print(
        f"push {n} tasks with predictions: {results['push_s']:.1f}s ({n / results['push_s']:.0f} tasks/s); "
        f"pull {n} annotations: {results['pull_s']:.1f}s ({n / results['pull_s']:.0f} tasks/s); "
        f"re-pull (no change): {results['repull_s']:.1f}s; re-push (nothing to add): {results['repush_s']:.1f}s"
    )


if __name__ == "__main__":
    main()
