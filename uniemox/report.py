"""Tables from evaluation runs: rows = methods (the run's initialisation and mode), columns = datasets, cells =
top-1 (or another metric) in percent, like the tables of the UniEmoX paper; plus a long CSV of every number."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

COLUMNS = ("method", "run", "dataset", "split", "mode", "init", "fraction", "polarity", "n", "top1", "top3",
           "macro_f1", "vote_agreement")  # fmt: skip


def _metrics_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a run directory nor a metrics.json")
    found = sorted({*path.glob("metrics.json"), *path.glob("eval-*/metrics.json")})
    if not found:
        raise ValueError(
            f"{path} holds no metrics.json (run `uniemox evaluate` or finish `uniemox finetune`)"
        )
    return found


def _method(m: dict[str, Any]) -> str:
    init = str(m.get("init") or m.get("run") or "?")
    name = Path(init).parent.name if init.endswith((".pt", ".pth")) and Path(init).parent.name else init
    label = f"{name} ({m.get('mode', 'finetune')}"
    if m.get("fraction", 1.0) not in (1, 1.0, None):
        label += f", {100 * float(m['fraction']):g}% data"
    return label + ")"


def collect(runs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """One row per metrics.json found in ``runs`` (run directories or files); eval-* copies of a run's own
    test metrics.json are read once."""
    rows, seen = [], set()
    for run in runs:
        for f in _metrics_files(Path(run)):
            m = json.loads(f.read_text())
            if "top1" not in m:
                raise ValueError(f"{f} is not a metrics file (no top1)")
            key = (m.get("checkpoint"), m.get("dataset"), m.get("split"), m.get("polarity"))
            if key in seen:
                continue
            seen.add(key)
            row = {k: m.get(k) for k in COLUMNS}
            row["method"] = _method(m)
            row["run"] = m.get("run") or f.parent.name
            rows.append(row)
    return rows


def _dataset_label(r: dict[str, Any]) -> str:
    """The column: the dataset, with the split unless it is ``test`` and ``2-class`` in polarity mode."""
    notes = [n for n in ((r.get("split") or "test") != "test" and str(r["split"]), r.get("polarity") and "2-class")
             if n]  # fmt: skip
    return f"{r['dataset']} ({', '.join(notes)})" if notes else str(r["dataset"])


def markdown_table(rows: Sequence[dict[str, Any]], metric: str = "top1") -> str:
    """Methods x datasets; cells ``metric`` in percent (top-3 in brackets when the metric is top-1)."""
    if metric not in ("top1", "top3", "macro_f1", "vote_agreement"):
        raise ValueError(f"unknown metric {metric!r}; choose top1, top3, macro_f1 or vote_agreement")
    datasets = list(dict.fromkeys(_dataset_label(r) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells: dict[tuple[str, str], str] = {}
    for r in rows:
        v = r.get(metric)
        text = "-" if v is None else f"{100 * float(v):.2f}"
        if metric == "top1" and r.get("top3") is not None:
            text += f" ({100 * float(r['top3']):.2f})"
        cells[(r["method"], _dataset_label(r))] = text
    title = {"top1": "top-1 % (top-3 %)", "top3": "top-3 %", "macro_f1": "macro-F1 %",
             "vote_agreement": "vote agreement %"}[metric]  # fmt: skip
    lines = [f"| method \\ {title} | " + " | ".join(datasets) + " |", "|---|" + "---:|" * len(datasets)]
    for method in methods:
        lines.append(f"| {method} | " + " | ".join(cells.get((method, d), "-") for d in datasets) + " |")
    return "\n".join(lines) + "\n"


def csv_table(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: r.get(k) for k in COLUMNS})
    return buf.getvalue()


def write_report(rows: Sequence[dict[str, Any]], out: str | Path | None, metric: str = "top1") -> str:
    """Markdown table (returned; also ``OUT.md``) and the long CSV (``OUT.csv``) when ``out`` is given."""
    if not rows:
        raise ValueError("no runs to report")
    text = markdown_table(rows, metric)
    if out is not None:
        base = Path(out)
        base.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{base}.md").write_text(text)
        Path(f"{base}.csv").write_text(csv_table(rows))
    return text
