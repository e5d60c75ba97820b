"""``reports/dedup.html``: a self-contained gallery of duplicate clusters for a human to review.

Largest clusters first; the canonical item leads each row, every member shows its tier and score; contaminated
items are listed with the reference image they match. Thumbnails are inline base64 JPEGs, so the file can be
mailed or archived alone. Size is bounded by ``max_clusters`` x ``max_members``.
"""

from __future__ import annotations

import html
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from emo8.core import reporting
from emo8.core.workspace import Workspace
from emo8.ingest.sources import read_local

THUMB_SIDE = 160

_TEMPLATE = jinja2.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Emo8 dedup report</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.5em}
table.s{border-collapse:collapse} table.s td{padding:2px 10px 2px 0}
.cluster{border:1px solid #ccc;border-radius:6px;margin:10px 0;padding:8px}
.row{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;width:{{ side }}px;font-size:11px;overflow-wrap:anywhere}
code{color:#777;font-size:10px}.none{color:#999}
figure img{max-width:{{ side }}px;max-height:{{ side }}px;display:block;border:2px solid #ddd}
figure.canon img{border-color:#2a7}
.t-exact{color:#06c}.t-perceptual{color:#a60}.t-semantic{color:#a0a}.t-semdedup{color:#777}
.t-contaminated{color:#c00;font-weight:bold}
</style></head><body>
<h1>Emo8 dedup report{% if report.dry_run %} (dry run: catalog unchanged){% endif %}</h1>
<table class="s">
<tr><td>items considered</td><td>{{ report["items"] }}</td></tr>
<tr><td>clusters with duplicates</td><td>{{ report["clusters"] }}</td></tr>
<tr><td>status after</td><td>{{ status }}</td></tr>
<tr><td>duplicates per tier</td><td>{{ per_tier }}</td></tr>
<tr><td>thresholds</td><td>{{ thresholds }}</td></tr>
{% for note in report["notes"] %}<tr><td>note</td><td>{{ note }}</td></tr>{% endfor %}
</table>
{% if contaminated %}
<h2>Contaminated: matches of the reference set ({{ n_contaminated }}{% if n_contaminated > contaminated|length %},
first {{ contaminated|length }} shown{% endif %})</h2>
{% for c in contaminated %}<div class="cluster"><div class="row">
<figure><img src="{{ c.thumb }}" alt=""><figcaption><span class="t-contaminated">{{ c.tier }} {{ c.score }}</span>
<br>{{ c.name | safe }}<br><code>{{ c.item_id }}</code></figcaption></figure>
{% if c.ref_thumb %}<figure><img src="{{ c.ref_thumb }}" alt=""><figcaption>reference<br>{{ c.ref }}</figcaption>
</figure>{% else %}<figure><figcaption>{{ c.ref }}</figcaption></figure>{% endif %}
</div></div>{% endfor %}
{% endif %}
<h2>Clusters, largest first ({{ clusters|length }} of {{ report["clusters"] }} shown)</h2>
{% for cl in clusters %}<div class="cluster"><div>cluster of {{ cl.size }}{% if cl.size > cl.members|length + 1 %}
({{ cl.members|length }} members shown){% endif %}</div><div class="row">
<figure class="canon"><img src="{{ cl.canon.thumb }}" alt=""><figcaption><b>canonical</b> {{ cl.canon.name | safe }}
<br>{{ cl.canon.size }} <code>{{ cl.canon.item_id }}</code></figcaption></figure>
{% for m in cl.members %}<figure><img src="{{ m.thumb }}" alt=""><figcaption><span class="t-{{ m.tier }}">{{ m.tier }}
{{ m.score }}</span>{% if m.inliers %} {{ m.inliers }} inliers{% endif %}
{% if m.via %}<br>via {{ m.via }} ({{ m.links }} links){% endif %}<br>{{ m.name | safe }}
<br>{{ m.size }} <code>{{ m.item_id }}</code></figcaption></figure>
{% endfor %}
</div></div>{% endfor %}
</body></html>
""",
    autoescape=True,
)


def thumbnail(source: bytes | str) -> str:
    """Return a ``data:`` URI of a small JPEG of ``source`` (bytes or path); empty when unreadable."""
    return reporting.thumbnail(source, THUMB_SIDE, 70)


def _size(width: Any, height: Any) -> str:
    if pd.isna(width) or pd.isna(height):
        return ""
    return f"{int(width)}x{int(height)}"


def _evidence(value: Any) -> str:
    """An integer piece of evidence (inliers of geometric verification, links), empty when absent."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or int(value) < 0:
        return ""
    return str(int(value))


def _score(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{float(value):.3f}"


def render_html(
    ws: Workspace,
    items: pd.DataFrame,
    frame: pd.DataFrame,
    report: dict[str, Any],
    max_clusters: int = 200,
    max_members: int = 12,
) -> str:
    """Render the gallery for the candidate ``items`` and their dedup outcome ``frame`` (same row order)."""
    paths = {
        str(i): str(ws.object_path(str(sha), None if pd.isna(fmt) else str(fmt)))
        for i, sha, fmt in zip(items.item_id, items.sha256, items.format, strict=True)
    }
    dims = {str(i): _size(w, h) for i, w, h in zip(items.item_id, items.width, items.height, strict=True)}

    names = reporting.item_lookup(ws, list(paths))

    def thumb(item_id: str) -> str:
        return thumbnail(paths[item_id])

    def name(item_id: str) -> str:
        return reporting.name_html(names.get(item_id))

    members = frame[frame.dup_of.notna()]
    sizes = members.groupby("dup_of").size().sort_values(ascending=False, kind="stable")
    clusters = []
    for canon, size in sizes.head(max_clusters).items():
        rows = members[members.dup_of == canon].sort_values("dup_score", ascending=False).head(max_members)
        clusters.append(
            {
                "size": int(size) + 1,
                "canon": {
                    "item_id": str(canon),
                    "thumb": thumb(str(canon)),
                    "size": dims[str(canon)],
                    "name": name(str(canon)),
                },
                "members": [
                    {
                        "item_id": str(r.item_id),
                        "thumb": thumb(str(r.item_id)),
                        "name": name(str(r.item_id)),
                        "tier": r.dup_tier,
                        "score": _score(r.dup_score),
                        "inliers": _evidence(getattr(r, "dup_inliers", None)),
                        "via": str(r.dup_via) if isinstance(getattr(r, "dup_via", None), str) else "",
                        "links": _evidence(getattr(r, "dup_links", None)),
                        "size": dims[str(r.item_id)],
                    }
                    for r in rows.itertuples()
                ],
            }
        )
    bad = frame[frame.status == "contaminated"]
    contaminated = []
    for r in bad.head(max_clusters).itertuples():
        ref = str(r.contaminated_by or "")
        ref_thumb = ""
        if ref and not ref.startswith("cluster:"):
            try:
                ref_thumb = thumbnail(read_local(ref))
            except Exception:
                ref_thumb = ""
        contaminated.append(
            {
                "item_id": str(r.item_id),
                "thumb": thumb(str(r.item_id)),
                "name": name(str(r.item_id)),
                "tier": r.contaminated_tier or "",
                "score": _score(r.contaminated_score),
                "ref": ref,
                "ref_thumb": ref_thumb,
            }
        )
    return _TEMPLATE.render(
        report=report,
        side=THUMB_SIDE,
        status=html.unescape(", ".join(f"{k}={v}" for k, v in report["status"].items())),
        per_tier=", ".join(f"{k}={v}" for k, v in report["duplicates_per_tier"].items()) or "none",
        thresholds=", ".join(f"{k}={v}" for k, v in report["thresholds"].items()),
        clusters=clusters,
        contaminated=contaminated,
        n_contaminated=len(bad),
    )
