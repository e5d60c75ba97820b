"""``reports/suggest.html``: how good the label suggestions are, for a person to read.

Written by ``emo8 suggest`` next to ``reports/suggest.json``, from the same held-out (out-of-fold) predictions on
the labelled items: accuracy, macro-F1 and ECE per source and for the pooled suggestion, a reliability diagram, the
confusion matrix of the pooled suggestion, and the figures per domain. Self-contained: inline PNG charts only.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from emo8.core.reporting import REPORT_CSS, figure, png
from emo8.core.taxonomy import EMOTIONS
from emo8.core.workspace import Workspace

#: Display names of the prediction sources and poolings.
SOURCE_NAMES = {
    "zero_shot": "CLIP zero-shot",
    "knn": "kNN vote",
    "probe": "linear probe",
    "combined_uncalibrated": "pooled, before calibration",
    "combined": "pooled and calibrated (the suggestion)",
}
#: Shorter names for chart axes.
SHORT_NAMES = {"combined_uncalibrated": "pooled", "combined": "suggestion (pooled + calibrated)"}
#: Confidence bins of the reliability diagram.
RELIABILITY_BINS = 10

_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emo8 suggestions</title>
<style>{{ css }}</style></head><body>
<h1>Emo8 suggestions: {{ root }}</h1>
<p>Model <code>{{ model }}</code>, version <code>{{ version }}</code>. {{ labelled }} labelled items
({{ by_source }}); {{ suggested }} item(s) suggested this run. Generated {{ when }}.</p>
<nav><a href="#sources">Per source</a><a href="#reliability">Reliability</a><a href="#confusion">Confusion matrix</a>
<a href="#domains">Per domain</a><a href="#classes">Per class</a></nav>
{% for n in notes %}<p class="note">{{ n }}</p>{% endfor %}
<h2 id="sources">Accuracy and calibration per source</h2>
{% if sources %}
<p>Held-out figures on the labelled items ({{ evaluation_note }}). Majority-class baseline accuracy:
{{ baseline }}. Pooling weights: {{ weights }}; temperature {{ temperature }}.</p>
{% if skipped %}<p>Sources not used: {{ skipped | join("; ") }}.</p>{% endif %}
<table><tr><th>source</th><th>items</th><th>accuracy</th><th>macro-F1</th><th>ECE</th><th>NLL</th></tr>
{% for r in sources %}<tr><td>{{ r.name }}</td><td class="n">{{ r.n }}</td><td class="n">{{ r.accuracy }}</td>
<td class="n">{{ r.macro_f1 }}</td><td class="n">{{ r.ece }}</td><td class="n">{{ r.nll }}</td></tr>{% endfor %}
</table>
<div class="plots">{% for caption, img in source_plots %}
<img alt="{{ caption }}" title="{{ caption }}" src="data:image/png;base64,{{ img }}">{% endfor %}</div>
{% else %}<p class="note">No held-out figures: {{ evaluation_note }}</p>{% endif %}
<h2 id="reliability">Reliability diagram</h2>
{% if reliability %}<p>Confidence of the top suggestion against how often it is right, in {{ bins }} bins; the
diagonal is perfect calibration. ECE is the bin-weighted gap.</p>
<div class="plots"><img alt="Reliability diagram" src="data:image/png;base64,{{ reliability }}"></div>
{% else %}<p class="note">No labelled items to draw it from.</p>{% endif %}
<h2 id="confusion">Confusion matrix of the suggestion</h2>
{% if confusion %}<p>Rows: the given label; columns: the suggestion (held-out). Each row is normalised to the share
of its items; the number is the count.</p>
<div class="plots"><img alt="Confusion matrix" src="data:image/png;base64,{{ confusion }}"></div>
{% else %}<p class="note">No labelled items to draw it from.</p>{% endif %}
<h2 id="domains">Per domain</h2>
{% if domains %}
<table><tr><th>domain</th><th>items</th>{% for s in domain_sources %}<th>accuracy: {{ s }}</th>{% endfor %}
<th>ECE: suggestion</th></tr>
{% for d in domains %}<tr><td>{{ d.name }}</td><td class="n">{{ d.n }}</td>{% for a in d.accuracy %}
<td class="n">{{ a }}</td>{% endfor %}<td class="n">{{ d.ece }}</td></tr>{% endfor %}</table>
<div class="plots">{% if domain_plot %}<img alt="Accuracy per domain" src="data:image/png;base64,{{ domain_plot }}">
{% endif %}</div>
{% else %}<p class="note">No per-domain figures.</p>{% endif %}
<h2 id="classes">Per class</h2>
<table><tr><th>emotion</th><th>labelled items</th><th>suggested (this run)</th></tr>
{% for c in classes %}<tr><td>{{ c.name }}</td><td class="n">{{ c.labelled }}</td><td class="n">{{ c.suggested }}</td>
</tr>{% endfor %}</table>
</body></html>
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def reliability(
    probs: np.ndarray, y: np.ndarray, bins: int = RELIABILITY_BINS
) -> list[tuple[float, float, int]]:
    """``[(mean confidence, accuracy, items)]`` per non-empty equal-width confidence bin of the top class."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    which = np.clip(np.digitize(conf, np.linspace(0.0, 1.0, bins + 1)[1:-1], right=True), 0, bins - 1)
    return [
        (float(conf[which == b].mean()), float(correct[which == b].mean()), int((which == b).sum()))
        for b in range(bins)
        if (which == b).any()
    ]


def reliability_chart(table: Mapping[str, np.ndarray], y: np.ndarray, bins: int = RELIABILITY_BINS) -> str:
    """The reliability diagram of every source and pooling, as base64 PNG."""
    fig, ax = figure(
        "Reliability diagram (held-out)", "confidence of the top suggestion", "accuracy", 6.0, 4.6
    )
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect calibration")
    for name, probs in table.items():
        points = reliability(probs, y, bins)
        if points:
            style = {"linewidth": 2.5} if name == "combined" else {"linewidth": 1, "alpha": 0.8}
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=SOURCE_NAMES.get(name, name),
                    **style)  # fmt: skip
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    return png(fig)


def confusion_chart(probs: np.ndarray, y: np.ndarray) -> str:
    """Row-normalised confusion matrix (given label x suggestion) with counts, as base64 PNG."""
    k = len(EMOTIONS)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (y, probs.argmax(axis=1)), 1)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = figure(
        "Confusion matrix of the suggestion (held-out)", "suggested emotion", "given label", 6.4, 5.4
    )
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), list(EMOTIONS), rotation=45, ha="right")
    ax.set_yticks(range(k), list(EMOTIONS))
    for (r, c), value in np.ndenumerate(counts):
        if value:
            ax.text(c, r, str(value), ha="center", va="center", fontsize=8,
                    color="white" if shares[r, c] > 0.6 else "black")  # fmt: skip
    fig.colorbar(image, ax=ax, label="share of the row")
    return png(fig)


def _grouped_bars(
    groups: Sequence[str], series: Mapping[str, Sequence[float]], title: str, xlabel: str, ylabel: str
) -> str:
    fig, ax = figure(title, xlabel, ylabel, max(6.0, 0.9 * len(groups) + 2), 3.6)
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(len(groups)) + i * width, values, width, label=name)
    ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, list(groups), rotation=30, ha="right")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    return png(fig)


def render(report: Mapping[str, Any], table: Mapping[str, np.ndarray], y: np.ndarray, root: str) -> str:
    """The HTML page for a suggest report (the dict written to ``suggest.json``) and its held-out predictions."""
    from jinja2 import Environment

    metrics = report.get("metrics") or {}
    overall = metrics.get("overall") or {}
    order = [s for s in SOURCE_NAMES if s in overall] + [s for s in overall if s not in SOURCE_NAMES]
    sources = [
        {
            "name": SOURCE_NAMES.get(s, s),
            "n": overall[s].get("n", 0),
            **{k: _fmt(overall[s].get(k)) for k in ("accuracy", "macro_f1", "ece", "nll")},
        }
        for s in order
    ]
    source_plots = []
    if order:
        names = [str(SHORT_NAMES.get(s, SOURCE_NAMES.get(s, s))) for s in order]
        source_plots.append(
            (
                "Accuracy and ECE per source",
                _grouped_bars(
                    names,
                    {
                        "accuracy": [float(overall[s].get("accuracy", 0.0)) for s in order],
                        "ECE": [float(overall[s].get("ece", 0.0)) for s in order],
                    },
                    "Accuracy and calibration error per source (held-out)",
                    "source",
                    "accuracy / ECE",
                ),
            )
        )
    has_preds = len(y) > 0 and "combined" in table
    per_domain: dict[str, dict[str, Any]] = dict(metrics.get("per_domain") or {})
    domain_sources = [s for s in order if s in ("zero_shot", "knn", "probe", "combined")]
    domains: list[dict[str, Any]] = [
        {
            "name": str(d),
            "n": int(dict(v.get("combined") or next(iter(v.values()), {})).get("n", 0)),
            "accuracy": [_fmt((v.get(s) or {}).get("accuracy")) for s in domain_sources],
            "ece": _fmt((v.get("combined") or {}).get("ece")),
        }
        for d, v in sorted(per_domain.items())
    ]
    domain_plot = ""
    if domains and domain_sources:
        domain_plot = _grouped_bars(
            [str(d["name"]) for d in domains],
            {
                SHORT_NAMES.get(s, SOURCE_NAMES.get(s, s)): [
                    float((per_domain[d["name"]].get(s) or {}).get("accuracy", 0.0)) for d in domains
                ]
                for s in domain_sources
            },
            "Held-out accuracy per domain",
            "domain",
            "accuracy",
        )
    labels = report.get("labels") or {}
    per_class = labels.get("per_class") or {}
    predicted = report.get("predicted_per_class") or {}
    pooling = report.get("pooling") or {}
    skipped = dict(report.get("skipped_sources") or {})
    env = Environment(autoescape=True)
    return env.from_string(_TEMPLATE).render(
        css=REPORT_CSS,
        root=root,
        model=report.get("model", ""),
        version=report.get("version", ""),
        labelled=labels.get("n", 0),
        by_source=", ".join(f"{k} {v}" for k, v in sorted((labels.get("by_source") or {}).items())) or "none",
        suggested=report.get("suggested", 0),
        when=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        notes=[n for n in report.get("notes") or [] if not (skipped and " skipped" in str(n))],
        skipped=[f"{SOURCE_NAMES.get(k, k)}: {v}" for k, v in sorted(skipped.items())],
        evaluation_note=metrics.get("note", "no labelled items"),
        baseline=_fmt(metrics.get("majority_baseline")),
        weights=", ".join(
            f"{SOURCE_NAMES.get(k, k)} {_fmt(v, 2)}" for k, v in (pooling.get("weights") or {}).items()
        )
        or "n/a",
        temperature=_fmt(pooling.get("temperature"), 2),
        sources=sources,
        source_plots=source_plots,
        bins=RELIABILITY_BINS,
        reliability=reliability_chart(table, y) if has_preds else "",
        confusion=confusion_chart(np.asarray(table["combined"]), y) if has_preds else "",
        domains=domains,
        domain_sources=[SHORT_NAMES.get(s, SOURCE_NAMES.get(s, s)) for s in domain_sources],
        domain_plot=domain_plot,
        classes=[
            {"name": e, "labelled": int(per_class.get(e, 0)), "suggested": int(predicted.get(e, 0))}
            for e in EMOTIONS
        ],
    )


def write_suggest_html(
    ws: Workspace, report: Mapping[str, Any], table: Mapping[str, np.ndarray], y: np.ndarray
) -> Path:
    """Write ``reports/suggest.html`` (atomically) for ``report`` (as in ``suggest.json``) and the held-out
    probabilities ``table`` of the labelled items whose labels are ``y``; return its path."""
    from emo8.core.workspace import _atomic_write

    path = ws.reports_dir / "suggest.html"
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(
        path, render(report, table, np.asarray(y, dtype=np.int64), str(ws.root)).encode(), ws.tmp_dir
    )
    return path
