"""The HTML reports people read: labelled charts, flagged items shown as images with their names, suggest.html."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from releasefixtures import *  # noqa: F403  (the workspace fixtures)
from suggestfixtures import MODEL, category_labels, lite0_template, lite0_ws  # noqa: F401  (fixtures)

from emo8 import Workspace
from emo8.core.reporting import ChartError, figure, item_name, missing_labels, png
from emo8.core.taxonomy import EMOTIONS
from emo8.dedup.tiers import DedupConfig, dedup
from emo8.ingest.run import IngestOptions, ingest
from emo8.ingest.sources import create_source
from emo8.label.suggest import SuggestConfig, suggest
from emo8.label.suggest_report import render
from emo8.release.audit import AuditConfig, audit

HASH = re.compile(r"\b[0-9a-f]{64}\b")
NAN = re.compile(r"\bnan(x)?\b", re.IGNORECASE)


def _section(html: str, key: str) -> str:
    """The HTML of the report section with id ``key`` (up to the next section heading)."""
    start = html.index(f'<h2 id="{key}">')
    end = html.find("<h2 ", start + 1)
    return html[start : end if end > 0 else len(html)]


def test_a_chart_without_title_or_axis_labels_is_refused() -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert missing_labels(fig) == ["axes 0: title", "axes 0: x label", "axes 0: y label"]
    with pytest.raises(ChartError, match="title"):
        png(fig)
    fig, ax = figure("A title", "x", "")
    with pytest.raises(ChartError, match="y label"):
        png(fig)
    fig, ax = figure("Counts", "class", "items")
    image = ax.imshow(np.eye(3))
    fig.colorbar(image, ax=ax)  # a colour bar is not a chart of its own
    assert missing_labels(fig) == [] and len(png(fig)) > 100


def test_item_names_are_urls_or_file_names() -> None:
    assert item_name("https://example.org/a.jpg", None) == "https://example.org/a.jpg"
    assert item_name(None, "/data/incoming/cat.jpg") == "cat.jpg"
    assert item_name(float("nan"), "hf://ds/train/3/image") == "hf://ds/train/3/image"
    assert item_name(None, None) == ""


def test_audit_flagged_tables_show_thumbnails_and_file_names(labelled_ws: Workspace) -> None:
    items = labelled_ws.items(["item_id", "source_path"], where="status = 'valid' AND settled = 1")
    low = items.head(3)
    labelled_ws.catalog.update_items(
        list(low["item_id"]),
        {
            "settled": [0, 0, 0],
            "unsettled_reason": ["tie", "unclear", "low_agreement"],
            "agreement": [0.4] * 3,
        },
    )
    result = audit(labelled_ws, AuditConfig(progress=False))  # every chart passed reporting.png's label check
    html = result.html.read_text()
    section = _section(html, "low_agreement")
    table = section[section.index("<table class='items'>") : section.index("</table>")]
    rows = table.split("<tr>")[2:]
    assert len(rows) == 3
    names = {Path(p).name for p in low["source_path"]}
    for row in rows:
        assert "<td class='thumb'><img src='data:image/jpeg;base64," in row
        assert sum(name in row for name in names) == 1, row[-400:]
    assert all(any(name in row for row in rows) for name in names)
    assert not HASH.search(table), "a flagged-items table shows a 64-character hash"
    assert "<th>image</th><th>file or URL</th>" in table
    plots = re.findall(r'<img alt="([^"]+)" title="[^"]+" src="data:image/png;base64,', html)
    assert {"Items per class", "Label x domain", "Image sizes (pixels)"} <= set(plots)


def test_empty_flagged_table_says_none(labelled_ws: Workspace) -> None:
    result = audit(labelled_ws, AuditConfig(progress=False))
    section = _section(result.html.read_text(), "low_agreement")
    assert "<p class='none'>none</p>" in section and "<table class='items'>" not in section


def test_dedup_report_names_each_image(ws: Workspace, sample_paths: list[Path], tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    photo = next(p for p in sample_paths if Image.open(p).width >= 300)
    shutil.copy(photo, incoming / photo.name)
    with Image.open(photo) as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(incoming / "zz-smaller-copy.jpg")
    ingest(ws, create_source("folder", directory=str(incoming)), IngestOptions(workers=1, progress=False))
    result = dedup(ws, DedupConfig(tiers=("exact", "perceptual")))
    assert result.html_path is not None
    html = result.html_path.read_text()
    assert result.report["clusters"] == 1
    assert photo.name in html and "zz-smaller-copy.jpg" in html


def test_suggest_writes_an_html_report(lite0_ws: Workspace, sample_rows: list[dict[str, str]]) -> None:  # noqa: F811
    labels = category_labels(lite0_ws, sample_rows)
    ids = list(labels)
    lite0_ws.catalog.ensure_columns({"imported_label": "TEXT"})
    lite0_ws.catalog.update_items(ids, {"imported_label": [labels[i] for i in ids]})
    summary = suggest(lite0_ws, SuggestConfig(model=MODEL, min_labels_per_class=2), progress=False)
    path = lite0_ws.reports_dir / "suggest.html"
    assert summary.html_path == str(path) and path.is_file()
    html = path.read_text()
    for key in ("sources", "reliability", "confusion", "domains", "classes"):
        assert f'<h2 id="{key}">' in html, key
    sources = _section(html, "sources")
    assert "kNN vote" in sources and "pooled and calibrated (the suggestion)" in sources and "ECE" in sources
    assert "data:image/png;base64," in _section(html, "reliability")
    assert "data:image/png;base64," in _section(html, "confusion")
    assert "(none)" in _section(html, "domains")  # the folder ingest has no domain
    assert len(re.findall(r"data:image/png;base64,", html)) >= 4
    assert not NAN.search(html)


def test_suggest_html_without_labels_has_no_nan() -> None:
    report = {"model": "m", "version": "sg-0", "labels": {"n": 0}, "metrics": {"note": "no labelled items"}}
    html = render(report, {}, np.zeros(0, dtype=np.int64), "/ws")
    assert "No labelled items to draw it from." in html and not NAN.search(html)
    assert all(e in html for e in EMOTIONS)
