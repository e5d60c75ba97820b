"""The catalog and workspace: transactions, idempotent registration, content merging, atomic objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from emo8 import Workspace, WorkspaceError
from emo8.core.catalog import ItemOutcome, OriginRecord, item_id_for

REQUIRED_COLUMNS = [
    "item_id", "source", "url", "source_path", "status", "reason", "http_status", "sha256", "width", "height",
    "format", "license", "author", "title", "keyword", "domain", "weak_label", "brightness", "colorfulness",
    "phash", "dhash", "pixel_hash", "ingested_at",
]  # fmt: skip


def _url(i: int) -> OriginRecord:
    return OriginRecord(
        origin_key=f"http://example.org/{i}.jpg", source="urls", url=f"http://example.org/{i}.jpg"
    )


def test_items_frame_has_documented_columns(ws: Workspace) -> None:
    ws.catalog.register([_url(1)])
    frame = ws.items()
    assert set(REQUIRED_COLUMNS) <= set(frame.columns)
    assert frame.loc[0, "status"] == "pending"
    assert frame.loc[0, "item_id"] == item_id_for("http://example.org/1.jpg")


def test_register_is_idempotent(ws: Workspace) -> None:
    assert ws.catalog.register([_url(i) for i in range(5)]) == (5, 0)
    assert ws.catalog.register([_url(i) for i in range(7)]) == (2, 5)
    assert len(ws.items()) == 7
    assert len(ws.origins()) == 7


def test_duplicate_origin_in_one_batch_counts_once(ws: Workspace) -> None:
    assert ws.catalog.register([_url(1), _url(1), _url(2)]) == (2, 1)
    assert len(ws.items()) == 2


def test_same_bytes_merge_onto_one_item_with_both_origins(ws: Workspace) -> None:
    a, b = (
        _url(1),
        OriginRecord(origin_key="file:/x/1.jpg", source="folder", source_path="/x/1.jpg", license="CC0"),
    )
    ws.catalog.register([a, b])
    id_a, id_b = item_id_for(a.origin_key), item_id_for(b.origin_key)
    ws.catalog.apply([ItemOutcome(id_a, "valid", sha256="ab" * 32, signals={"width": 10, "height": 12})])
    merged = ws.catalog.apply([ItemOutcome(id_b, "valid", sha256="ab" * 32)])
    assert merged == {id_b: id_a}
    items = ws.items()
    assert items.item_id.tolist() == [id_a]
    assert items.loc[0, "license"] == "CC0"  # filled from the merged origin
    assert sorted(ws.origins(id_a).origin_key) == sorted([a.origin_key, b.origin_key])


def test_transaction_rolls_back_on_error(ws: Workspace) -> None:
    ws.catalog.register([_url(1)])
    with pytest.raises(RuntimeError), ws.catalog.transaction() as db:
        db.execute("UPDATE items SET status = 'valid'")
        raise RuntimeError("killed half-way")
    assert ws.items().status.tolist() == ["pending"]


def test_apply_rejects_nothing_silently_for_unknown_items(ws: Workspace) -> None:
    assert ws.catalog.apply([ItemOutcome("doesnotexist", "valid", sha256="cd" * 32)]) == {}
    assert ws.items().empty


def test_ensure_columns_and_update_items(ws: Workspace) -> None:
    ws.catalog.register([_url(1), _url(2)])
    ids = ws.items().item_id.tolist()
    ws.catalog.ensure_columns({"person_boxes": "TEXT", "num_faces": "INTEGER"})
    ws.catalog.ensure_columns({"person_boxes": "TEXT"})  # idempotent
    ws.catalog.update_items(ids, {"person_boxes": [[[0, 0, 5, 5, 0.9]], []], "num_faces": [1, 0]})
    frame = ws.items(["item_id", "person_boxes", "num_faces"])
    assert frame.person_boxes.tolist() == [[[0, 0, 5, 5, 0.9]], []]  # parsed JSON lists
    with pytest.raises(ValueError, match="values for"):
        ws.catalog.update_items(ids, {"num_faces": [1]})


def test_status_counts(ws: Workspace) -> None:
    ws.catalog.register([_url(i) for i in range(3)])
    first = ws.items().item_id[0]
    ws.catalog.apply([ItemOutcome(first, "failed", "http_404", http_status=404, attempts=1)])
    counts = ws.status()
    assert counts["status"] == {"pending": 2, "failed": 1}
    assert counts["reason"] == {"http_404": 1}


def test_open_rejects_a_non_workspace(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="not an Emo8 workspace"):
        Workspace.open(tmp_path)
    (tmp_path / "emo8.json").write_text("{not json")
    with pytest.raises(WorkspaceError, match="cannot read"):
        Workspace.open(tmp_path)


def test_store_object_is_content_addressed_and_atomic(ws: Workspace) -> None:
    digest, created = ws.objects.put(b"\xff\xd8hello", "jpeg")
    path = ws.object_path(digest, "jpeg")
    assert created and path == ws.objects_dir / digest[:2] / f"{digest}.jpg"
    assert path.read_bytes() == b"\xff\xd8hello"
    assert ws.objects.put(b"\xff\xd8hello", "jpeg") == (digest, False)
    assert not [p for p in ws.tmp_dir.iterdir() if p.name.startswith(".part-")]


def test_selections_keep_rank_and_never_duplicate(ws: Workspace) -> None:
    ws.catalog.register([_url(i) for i in range(4)])
    ids = ws.items().item_id.tolist()
    assert ws.catalog.save_selection("r1", ids[:2], "uncertainty") == 2
    assert ws.catalog.save_selection("r1", [ids[1], ids[2]], "uncertainty") == 1
    assert ws.catalog.selection("r1") == ids[:3]
    assert ws.catalog.selection("nope") == []
    assert ws.catalog.rounds() == {"r1": 3}
