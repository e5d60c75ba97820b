"""The ingest driver's own bookkeeping: batches for the decode workers capped by count and by bytes, the garbage
collector's pace during the download loop (restored afterwards), and registration in chunks."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from emo8 import Workspace
from emo8.core.catalog import OriginRecord
from emo8.ingest.download import FetchResult
from emo8.ingest.run import HandOffBatch, collector_paced, hand_off_bytes
from emo8.ingest.transfer import TransferArena


def _body(key: str, size: int) -> FetchResult:
    return FetchResult(key, f"http://example.org/{key}", ok=True, data=b"x" * size)


def test_a_batch_is_full_at_its_count_or_its_bytes_whichever_comes_first() -> None:
    by_count = HandOffBatch(max_items=3, max_bytes=1000)
    assert [by_count.add(_body(str(i), 10)) for i in range(3)] == [False, False, True]
    by_bytes = HandOffBatch(max_items=64, max_bytes=100)
    assert [by_bytes.add(_body(str(i), 40)) for i in range(3)] == [False, False, True]  # 120 bytes >= 100
    taken = by_bytes.take()
    assert [r.key for r in taken] == ["0", "1", "2"]
    assert (by_bytes.results, by_bytes.size) == ([], 0)  # empty again, bytes counted afresh
    assert not by_bytes.add(_body("3", 99)) and by_bytes.add(_body("4", 1))


def test_batches_in_flight_fill_at_most_half_the_arena() -> None:
    arena = TransferArena(1 << 20)
    try:
        limit = hand_off_bytes(arena, in_flight=6)
        assert limit > 0 and 6 * limit <= arena.size // 2
        # a full batch (the limit plus one body just under it) still fits once the other five are placed
        for _ in range(5):
            assert arena.place([b"x" * limit]) is not None
        assert arena.place([b"y" * (limit - 1), b"z" * (limit - 1)]) is not None
    finally:
        arena.close()
    assert hand_off_bytes(None, in_flight=6) > 1 << 40  # spooled to files: no cap but the count


def test_the_collector_is_restored_after_the_loop_even_on_error() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError), collector_paced(young_every=12_345):
        assert gc.get_threshold()[0] == 12_345 and gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > frozen  # what existed before the loop is out of the collector's way
        raise RuntimeError("the download loop failed")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_a_callers_own_freeze_is_left_alone() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with collector_paced():
            pass
        assert gc.get_freeze_count() == frozen  # not unfrozen by the ingest
    finally:
        gc.unfreeze()


def _record(i: int) -> OriginRecord:
    url = f"https://example.org/{i}.jpg"
    return OriginRecord(origin_key=url, source="urls", url=url, meta={"row": i})


def test_registration_counts_repeats_across_chunks_once(tmp_path: Path) -> None:
    ws = Workspace.init(tmp_path / "ws")
    records = [_record(i) for i in range(1200)]
    records[700] = _record(3)  # a repeat in the second chunk of 500 of a row of the first
    records[1100] = _record(1050)  # and one within the third chunk, after its first appearance
    records.append(_record(1199))  # and a repeat at the very end
    assert ws.catalog.register(records) == (1198, 3)
    assert len(ws.items()) == 1198
    assert ws.catalog.register(iter(records)) == (0, len(records))  # a generator works as well
    origins = ws.catalog.origins()
    assert len(origins) == 1198 and origins.origin_key.is_unique
