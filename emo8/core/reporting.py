"""Shared pieces of the self-contained HTML reports (audit, dedup, suggest): charts, thumbnails, item names.

* :func:`figure` / :func:`png`: matplotlib (Agg) charts that always carry a title and both axis labels;
  :func:`png` refuses a chart without them (:func:`missing_labels` says what is missing);
* :func:`thumbnail`: an inline ``data:`` JPEG of a stored image;
* :func:`item_name`: what a person recognises an item by: its URL, else its original file name;
* :func:`item_table`: an HTML table of flagged items with a thumbnail and that name in front of every row.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

import pandas as pd

from emo8.core.curation import present
from emo8.core.workspace import Workspace

#: The base style of every report page: text, headings, tables, notes, plots, navigation.
REPORT_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}"
    "h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}"
    "table{border-collapse:collapse;font-size:13px;margin:.5em 0}"
    "td,th{border:1px solid #ddd;padding:2px 6px;text-align:left;vertical-align:middle}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".note,.skipped{color:#8a6d3b;background:#fcf8e3;padding:.5em;border:1px solid #faebcc}"
    ".plots img{margin:4px;vertical-align:top}nav a{margin-right:1em}"
)
#: Longer side of a thumbnail inside a table row, in pixels.
ROW_THUMB_SIDE = 72


class ChartError(ValueError):
    """A chart without a title or an axis label."""


def figure(title: str, xlabel: str, ylabel: str, width: float = 6.0, height: float = 3.4) -> tuple[Any, Any]:
    """A new figure with one axes titled ``title`` with axis labels ``xlabel`` and ``ylabel``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax


def missing_labels(fig: Any) -> list[str]:
    """What each chart axes of ``fig`` lacks (``"axes 0: title"``...); colour bars are not charts."""
    missing = []
    for index, ax in enumerate(fig.get_axes()):
        if ax.get_label() == "<colorbar>":
            continue
        for part, text in (
            ("title", ax.get_title()),
            ("x label", ax.get_xlabel()),
            ("y label", ax.get_ylabel()),
        ):
            if not text.strip():
                missing.append(f"axes {index}: {part}")
    return missing


def png(fig: Any, dpi: int = 90) -> str:
    """The figure as base64 PNG (then closed).

    Raises
    ------
    ChartError
        When a chart lacks its title or an axis label (every report chart must say what it shows).
    """
    import matplotlib.pyplot as plt

    missing = missing_labels(fig)
    if missing:
        plt.close(fig)
        raise ChartError(f"chart without {', '.join(missing)}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def thumbnail(source: bytes | str, side: int = 128, quality: int = 75) -> str:
    """A ``data:`` URI of a JPEG of ``source`` (bytes or path), longer side at most ``side``; empty if unreadable."""
    from emo8.core.imaging import load_rgb

    try:
        image = load_rgb(source, max_side=side)
    except Exception:  # an unreadable image is reported by the stages that read it; here it has no thumbnail
        return ""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def item_name(url: Any, source_path: Any) -> str:
    """The item's URL, else its original file name (an ``hf://`` locator as it is); empty if neither is known."""
    if present(url):
        return str(url)
    if present(source_path):
        text = str(source_path)
        return text if "://" in text else PurePosixPath(text.replace("\\", "/")).name
    return ""


def item_lookup(ws: Workspace, item_ids: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """``item_id -> {sha256, format, name, location}`` for thumbnails and names (all items, or ``item_ids``)."""
    rows = ws.catalog.items(["item_id", "sha256", "format", "url", "source_path"])
    if item_ids is not None:
        rows = rows[rows["item_id"].isin(set(item_ids))]
    return {
        str(r.item_id): {
            "sha256": r.sha256 if present(r.sha256) else None,
            "format": r.format if present(r.format) else None,
            "name": item_name(r.url, r.source_path),
            "location": str(r.url)
            if present(r.url)
            else (str(r.source_path) if present(r.source_path) else ""),
        }
        for r in rows.itertuples(index=False)
    }


def item_thumbnail(ws: Workspace, info: Mapping[str, Any] | None, side: int = ROW_THUMB_SIDE) -> str:
    """The thumbnail of an item from :func:`item_lookup` (empty when it has no stored bytes)."""
    if not info or not info.get("sha256"):
        return ""
    return thumbnail(str(ws.object_path(str(info["sha256"]), info.get("format"))), side)


def name_html(info: Mapping[str, Any] | None) -> str:
    """The item's name as HTML: a link for a URL, the file name (full path on hover) otherwise."""
    if not info or not info.get("name"):
        return "<span class='none'>(unknown origin)</span>"
    name, location = str(info["name"]), str(info.get("location") or "")
    if name.startswith(("http://", "https://")):
        return f"<a href='{html.escape(name, quote=True)}'>{html.escape(name)}</a>"
    return f"<span title='{html.escape(location, quote=True)}'>{html.escape(name)}</span>"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3g}"
    return html.escape(str(value))


def item_table(
    ws: Workspace,
    frame: pd.DataFrame,
    lookup: Mapping[str, Mapping[str, Any]],
    hide: Sequence[str] = ("sha256",),
    side: int = ROW_THUMB_SIDE,
) -> str:
    """``frame`` as an HTML table; when it has an ``item_id`` column each row starts with the item's thumbnail and
    its file name or URL, and the columns in ``hide`` (the 64-character hash) are left out."""
    if frame.empty:
        return "<p class='none'>none</p>"
    has_items = "item_id" in frame.columns
    columns = [c for c in frame.columns if not (has_items and c in hide)]
    head = (["image", "file or URL"] if has_items else []) + [str(c) for c in columns]
    out = [
        "<table class='items'><thead><tr>",
        *(f"<th>{html.escape(h)}</th>" for h in head),
        "</tr></thead><tbody>",
    ]
    for row in frame.itertuples(index=False):
        values = dict(zip(frame.columns, row, strict=True))
        cells = []
        if has_items:
            info = lookup.get(str(values["item_id"]))
            uri = item_thumbnail(ws, info, side)
            cells.append(
                f"<td class='thumb'><img src='{uri}' alt='' loading='lazy'></td>" if uri else "<td></td>"
            )
            cells.append(f"<td class='name'>{name_html(info)}</td>")
        cells += [f"<td>{_cell(values[c])}</td>" for c in columns]
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


#: CSS for :func:`item_table` (include it in the report's ``<style>``).
ITEM_TABLE_CSS = (
    f"table.items td.thumb{{width:{ROW_THUMB_SIDE}px;text-align:center}}"
    f"table.items td.thumb img{{max-width:{ROW_THUMB_SIDE}px;max-height:{ROW_THUMB_SIDE}px}}"
    "table.items td.name{max-width:320px;word-break:break-all}.none{color:#999}"
)
