"""Group-aware, stratified, stable train/validation/test splits without near-duplicate leakage.

:func:`assign_splits` gives every candidate item (``valid`` items and the ``duplicate`` items of their dedup
clusters) one of :data:`SPLITS` and stores it in the catalog column ``split``:

1. **Groups.** Items that must share a split are linked by the rules of :data:`GROUPING_RULES`: one dedup
   cluster (canonical item and its duplicates), near-duplicates (every pair dedup confirmed, geometrically
   verified crops and edits included, :func:`emo8.core.curation.dedup_pairs`; and, for items dedup has not seen yet,
   pHash within the dedup radius and embedding cosine above dedup's unverified threshold), one source page
   (e.g. Openverse's landing page), one author (groups larger than ``max_group_fraction`` of the items are too
   large to keep together and are reported instead). Groups are the connected components of these links.
2. **Stability.** Items that already have a split keep it. A new item joins the split of its group. If new links
   join groups that sit in different splits, the group goes to the split holding most of its items and the others
   move (reported as ``moved``): leak-freedom wins over stability. ``reassign=True`` starts from scratch.
3. **Stratification.** New groups are placed one at a time, largest first and otherwise in an order fixed by the
   seed, into the split with the largest *deficit*: how far the split is below its target share of the group's
   strata (label x domain) plus how far it is below its target share overall (so that tiny strata still fill the
   validation and test splits).
4. **Verification.** :func:`find_leaks` searches the released candidates for cross-split near-duplicate pairs
   (dedup's confirmed pairs, pHash, and cosine when embeddings exist) and the result says how many there are
   (zero, by construction, unless a grouping rule was switched off).

Deterministic: the same catalog, ratios and seed give the same splits, whatever paths or URLs the images came from
(groups are ordered by content, not by item id).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from emo8.core.catalog import SPLITS
from emo8.core.curation import (
    EXACT_COSINE_LIMIT,
    DedupPairs,
    best_label,
    cluster_ids,
    cosine_pairs,
    dedup_pairs,
    dedup_thresholds,
    frame,
    hamming_pairs,
    hash_codes,
    present,
    workspace_embeddings,
)
from emo8.core.progress import stage_steps
from emo8.core.similarity import components
from emo8.core.workspace import Workspace

#: Statuses that take part in splitting: released candidates and the duplicates that tie clusters together.
SPLIT_STATUSES = ("valid", "duplicate")

#: Metadata keys (in an item's ``meta`` JSON) that name the web page an image was published on.
PAGE_KEYS = ("landing_url", "foreign_landing_url", "page_url", "source_page", "page", "post_url")

_COLUMNS = (
    "status", "split", "split_group", "domain", "label", "weak_label", "suggested_label", "phash", "author",
    "meta", "dup_of", "cluster_id", "sha256", "settled",
)  # fmt: skip


class SplitError(ValueError):
    """Invalid split settings (ratios that do not sum to 1, an unknown grouping rule...)."""


@dataclass(frozen=True)
class SplitConfig:
    """How to split.

    Parameters
    ----------
    ratios
        Target shares of ``train``, ``validation`` and ``test`` (non-negative, summing to 1).
    seed
        Fixes the order in which new groups are placed (and so the splits), nothing else.
    group_by
        Names from :data:`GROUPING_RULES`; items linked by any of them share a split.
    max_group_fraction
        Page and author groups with more items than this share of the candidates (and more than
        ``min_group_cap``) are not kept together: a split cannot be stratified around one giant group.
    min_group_cap
        Page and author groups up to this size are always kept together.
    phash_max_distance, embed_min_similarity
        Near-duplicate thresholds; None takes the ones dedup recorded in the workspace config.
    model
        Embedding model key for the cosine check; None takes dedup's, or the only one present.
    reassign
        Ignore existing assignments and split from scratch.
    progress
        Show a progress bar over the grouping rules and the leak check.
    """

    ratios: tuple[float, float, float] = (0.8, 0.05, 0.15)
    seed: int = 0
    group_by: tuple[str, ...] = ("cluster", "near_duplicate", "page", "author")
    max_group_fraction: float = 0.02
    min_group_cap: int = 50
    phash_max_distance: int | None = None
    embed_min_similarity: float | None = None
    model: str | None = None
    reassign: bool = False
    progress: bool = True

    def validate(self) -> None:
        """Raise :class:`SplitError` on invalid settings."""
        if len(self.ratios) != len(SPLITS) or any(r < 0 for r in self.ratios):
            raise SplitError(f"ratios must be {len(SPLITS)} non-negative numbers, got {self.ratios}")
        if abs(sum(self.ratios) - 1.0) > 1e-6:
            raise SplitError(f"ratios must sum to 1, got {self.ratios} (sum {sum(self.ratios):.4f})")
        unknown = [g for g in self.group_by if g not in GROUPING_RULES]
        if unknown:
            raise SplitError(f"unknown grouping rule(s) {unknown}; known: {', '.join(GROUPING_RULES)}")


def parse_ratios(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.05,0.15"`` (or percentages ``"80,5,15"``) into three ratios summing to 1."""
    try:
        values = [float(v) for v in text.replace("/", ",").split(",") if v.strip()]
    except ValueError as exc:
        raise SplitError(f"cannot read ratios {text!r}: {exc}") from exc
    if len(values) != len(SPLITS):
        raise SplitError(f"expected {len(SPLITS)} ratios (train,validation,test), got {text!r}")
    total = sum(values)
    if total > 1.5:  # percentages
        values = [v / 100.0 for v in values]
    return (values[0], values[1], values[2])


@dataclass
class LeakReport:
    """Cross-split near-duplicate pairs among a set of items (see :func:`find_leaks`)."""

    items: int
    phash_max_distance: int
    phash_items: int
    phash_pairs: int
    phash_exact: bool
    embed_model: str | None = None
    embed_min_similarity: float | None = None
    embed_items: int = 0
    embed_pairs: int = 0
    embed_exact: bool = True
    dedup_pairs: int = 0
    not_deduplicated: int = 0
    leaks: list[dict[str, Any]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """True when no near-duplicate pair crosses a split boundary."""
        return not self.leaks

    def summary(self) -> str:
        """One human-readable line."""
        checks = f"pHash <= {self.phash_max_distance} over {self.phash_items} items"
        checks += f", {self.dedup_pairs} dedup-confirmed pairs"
        if self.not_deduplicated:
            checks += f" ({self.not_deduplicated} items not deduplicated yet: run `emo8 dedup`)"
        if self.embed_model:
            checks += (
                f", cosine >= {self.embed_min_similarity} ({self.embed_model}) over {self.embed_items} items"
            )
        else:
            checks += ", no embeddings (cosine check skipped)"
        verdict = "0 cross-split near-duplicate pairs" if self.clean else f"{len(self.leaks)} LEAKS"
        return f"{verdict} ({checks})"

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["clean"] = self.clean
        out["leaks"] = self.leaks[:100]
        out["leak_count"] = len(self.leaks)
        return out


@dataclass
class SplitResult:
    """What :func:`assign_splits` did."""

    config: dict[str, Any]
    candidates: int
    counts: dict[str, int]
    new: int
    kept: int
    moved: int
    groups: int
    largest_group: int
    oversized_keys: dict[str, int]
    by_stratum: dict[str, dict[str, int]]
    leaks: LeakReport
    moved_items: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["leaks"] = self.leaks.as_dict()
        out["moved_items"] = self.moved_items[:100]
        return out


# -- grouping rules ----------------------------------------------------------------------------------------------


@dataclass
class _Context:
    items: pd.DataFrame
    config: SplitConfig
    phash_max_distance: int
    embed_min_similarity: float
    embeddings: tuple[str, list[str], np.ndarray] | None
    pairs: DedupPairs | None = None
    oversized: dict[str, int] = field(default_factory=dict)
    exact: dict[str, bool] = field(default_factory=dict)

    def key_cap(self) -> int:
        return max(self.config.min_group_cap, int(self.config.max_group_fraction * len(self.items)))


#: A rule returns ``(pairs int[m, 2], keys)``: index pairs to link, and/or one key per row (None = no key).
GroupingRule = Callable[[_Context], tuple[np.ndarray, list[Any] | None]]
GROUPING_RULES: dict[str, GroupingRule] = {}

_NO_PAIRS = np.zeros((0, 2), dtype=np.int64)


def grouping_rule(name: str) -> Callable[[GroupingRule], GroupingRule]:
    """Decorator: register a grouping rule under ``name`` (usable in :attr:`SplitConfig.group_by`)."""

    def register(fn: GroupingRule) -> GroupingRule:
        GROUPING_RULES[name] = fn
        return fn

    return register


@grouping_rule("cluster")
def _cluster_rule(ctx: _Context) -> tuple[np.ndarray, list[Any] | None]:
    return _NO_PAIRS, list(cluster_ids(ctx.items))


@grouping_rule("near_duplicate")
def _near_duplicate_rule(ctx: _Context) -> tuple[np.ndarray, list[Any] | None]:
    pairs = [near_duplicate_pairs_phash(ctx.items, ctx.phash_max_distance)]
    if ctx.pairs is not None:
        pairs.append(ctx.pairs.rows(list(ctx.items["item_id"])))
    if ctx.embeddings is not None:
        pairs.append(near_duplicate_pairs_embed(ctx.items, ctx.embeddings, ctx.embed_min_similarity))
    return np.concatenate(pairs), None


def _capped(ctx: _Context, name: str, keys: list[Any]) -> list[Any]:
    counts = Counter(k for k in keys if k is not None)
    cap = ctx.key_cap()
    too_big = {k for k, n in counts.items() if n > cap}
    if too_big:
        ctx.oversized[name] = len(too_big)
    return [None if k in too_big else k for k in keys]


@grouping_rule("page")
def _page_rule(ctx: _Context) -> tuple[np.ndarray, list[Any] | None]:
    keys: list[Any] = []
    for meta in ctx.items["meta"]:
        page = None
        if present(meta):
            try:
                decoded = json.loads(meta)
            except (TypeError, ValueError):
                decoded = {}
            if isinstance(decoded, dict):
                page = next((str(decoded[k]) for k in PAGE_KEYS if present(decoded.get(k))), None)
        keys.append(page)
    return _NO_PAIRS, _capped(ctx, "page", keys)


@grouping_rule("author")
def _author_rule(ctx: _Context) -> tuple[np.ndarray, list[Any] | None]:
    keys: list[Any] = []
    for author, meta in zip(ctx.items["author"], ctx.items["meta"], strict=True):
        key = None
        if present(meta):
            try:
                decoded = json.loads(meta)
            except (TypeError, ValueError):
                decoded = {}
            if isinstance(decoded, dict) and present(decoded.get("creator_url")):
                key = "url:" + str(decoded["creator_url"]).strip().lower()
        if key is None and present(author):
            key = "name:" + " ".join(str(author).lower().split())
        keys.append(key)
    return _NO_PAIRS, _capped(ctx, "author", keys)


def near_duplicate_pairs_phash(items: pd.DataFrame, max_distance: int) -> np.ndarray:
    """Row-index pairs of ``items`` whose ``phash`` values are within ``max_distance`` bits (FAISS binary)."""
    codes, valid = hash_codes(items["phash"])
    rows = np.flatnonzero(valid)
    pairs = hamming_pairs(codes[rows], max_distance)
    return rows[pairs] if len(pairs) else _NO_PAIRS


def near_duplicate_pairs_embed(
    items: pd.DataFrame, embeddings: tuple[str, list[str], np.ndarray], min_similarity: float
) -> np.ndarray:
    """Row-index pairs of ``items`` whose embeddings have cosine >= ``min_similarity`` (FAISS range search)."""
    _key, ids, matrix = embeddings
    position = {item_id: i for i, item_id in enumerate(ids)}
    rows, vectors = [], []
    for row, item_id in enumerate(items["item_id"]):
        at = position.get(str(item_id))
        if at is not None:
            rows.append(row)
            vectors.append(at)
    if len(rows) < 2:
        return _NO_PAIRS
    pairs = cosine_pairs(matrix[np.asarray(vectors)], min_similarity)
    return np.asarray(rows, dtype=np.int64)[pairs] if len(pairs) else _NO_PAIRS


# -- leak verification ---------------------------------------------------------------------------------------------


def find_leaks(
    items: pd.DataFrame,
    phash_max_distance: int,
    embeddings: tuple[str, list[str], np.ndarray] | None = None,
    embed_min_similarity: float | None = None,
    split_column: str = "split",
    pairs: DedupPairs | None = None,
) -> LeakReport:
    """Search ``items`` (with ``item_id``, ``phash``, ``sha256`` and ``split_column``) for near-duplicate pairs
    in different splits.

    Parameters
    ----------
    items
        The items to check, typically those a release ships.
    phash_max_distance
        Hamming radius on the 64-bit pHash.
    embeddings
        ``(model key, item ids, normalised matrix)`` or None to skip the cosine check.
    embed_min_similarity
        Cosine threshold for the embedding check.
    pairs
        Dedup's confirmed pairs (:func:`emo8.core.curation.dedup_pairs`): crops, pads, rotations and other edits that
        geometric verification confirmed, which neither hash nor cosine may catch.

    Returns
    -------
    A :class:`LeakReport` whose ``leaks`` lists each crossing pair (sha256s, splits, which check found it).
    """
    items = items.reset_index(drop=True)
    splits = items[split_column].to_numpy(dtype=object)
    _codes, valid = hash_codes(items["phash"])
    report = LeakReport(
        items=len(items),
        phash_max_distance=phash_max_distance,
        phash_items=int(valid.sum()),
        phash_pairs=0,
        phash_exact=True,  # flat index, or multi-index hashing with enough flips: exact either way
    )
    checks: list[tuple[str, np.ndarray]] = []
    if pairs is not None:
        confirmed = pairs.rows(list(items["item_id"]))
        report.dedup_pairs = len(confirmed)
        report.not_deduplicated = int((~items["item_id"].astype(str).isin(pairs.covered)).sum())
        checks.append(("dedup", confirmed))
    else:
        report.not_deduplicated = len(items)
    found_pairs = near_duplicate_pairs_phash(items, phash_max_distance)
    report.phash_pairs = len(found_pairs)
    checks.append(("phash", found_pairs))
    if embeddings is not None and embed_min_similarity is not None:
        key, ids, _matrix = embeddings
        known = set(ids)
        report.embed_model = key
        report.embed_min_similarity = embed_min_similarity
        report.embed_items = int(sum(str(i) in known for i in items["item_id"]))
        report.embed_exact = report.embed_items <= EXACT_COSINE_LIMIT
        found_pairs = near_duplicate_pairs_embed(items, embeddings, embed_min_similarity)
        report.embed_pairs = len(found_pairs)
        checks.append(("embedding", found_pairs))
    seen: set[tuple[int, int]] = set()
    for check, found in checks:
        for a, b in found:
            pair = (min(int(a), int(b)), max(int(a), int(b)))
            if splits[a] != splits[b] and pair not in seen:
                seen.add(pair)
                report.leaks.append(
                    {
                        "check": check,
                        "a": str(items.at[int(a), "sha256"] or items.at[int(a), "item_id"]),
                        "b": str(items.at[int(b), "sha256"] or items.at[int(b), "item_id"]),
                        "splits": [str(splits[a]), str(splits[b])],
                    }
                )
    return report


# -- assignment ------------------------------------------------------------------------------------------------------


def _hash_order(seed: int, key: str) -> str:
    return hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).hexdigest()


def _stratum(label: Any, domain: Any) -> str:
    return f"{label if present(label) else '?'}|{domain if present(domain) else '?'}"


def load_candidates(ws: Workspace) -> pd.DataFrame:
    """The items that take part in splitting (``status`` in :data:`SPLIT_STATUSES`), in catalog order."""
    marks = ", ".join(f"'{s}'" for s in SPLIT_STATUSES)
    return frame(ws, _COLUMNS, where=f"status IN ({marks})").reset_index(drop=True)


def assign_splits(
    ws: Workspace, config: SplitConfig = SplitConfig(), write: bool = True
) -> tuple[SplitResult, pd.DataFrame]:
    """Assign a split to every candidate item; see the module docstring for the policy.

    Parameters
    ----------
    ws
        The workspace; its catalog gains the columns ``split`` and ``split_group`` (only changed rows are
        written, so re-running on an unchanged catalog changes nothing).
    config
        :class:`SplitConfig`.
    write
        False computes and verifies without touching the catalog (dry run).

    Returns
    -------
    ``(result, items)``: the :class:`SplitResult` (also written to ``reports/split.json`` when ``write``) and the
    candidates with their ``split`` and ``split_group``.
    """
    config.validate()
    if write:
        from emo8.core.takedown import enforce

        enforce(ws)  # copies of taken-down images ingested since are removed before anything is split
    items = load_candidates(ws)
    embeddings = workspace_embeddings(ws, config.model)
    radius, similarity = dedup_thresholds(ws, embeddings[0] if embeddings else None)
    radius = config.phash_max_distance if config.phash_max_distance is not None else radius
    similarity = config.embed_min_similarity if config.embed_min_similarity is not None else similarity
    confirmed = dedup_pairs(ws)
    ctx = _Context(items, config, radius, similarity, embeddings, confirmed)
    n = len(items)

    pair_sets: list[np.ndarray] = []
    key_sets: list[list[Any]] = []
    with stage_steps("split", [f"grouping by {g}" for g in config.group_by], config.progress) as done:
        for name in config.group_by:
            pairs, keys = GROUPING_RULES[name](ctx)
            pair_sets.append(pairs)
            if keys is not None:
                key_sets.append(keys)
            done(name)
    labels = components(n, pair_sets, key_sets) if n else np.zeros(0, dtype=np.int64)

    item_ids = items["item_id"].astype(str).to_numpy()
    released = (items["status"] == "valid").to_numpy()
    strata = [_stratum(lab, dom) for lab, dom in zip(best_label(items), items["domain"], strict=True)]
    existing = (
        [None] * n
        if config.reassign
        else [s if isinstance(s, str) and s in SPLITS else None for s in items["split"]]
    )

    members: dict[int, list[int]] = defaultdict(list)
    for row, group in enumerate(labels):
        members[int(group)].append(row)
    group_key = {g: min(item_ids[r] for r in rows) for g, rows in members.items()}
    # the seed orders groups by their content (the smallest sha256), not by item ids, which derive from where an
    # image was found: the same images and seed give the same splits wherever they were ingested from
    content = [c if isinstance(c, str) and c else i for c, i in zip(items["sha256"], item_ids, strict=True)]
    order_key = {g: min(content[r] for r in rows) for g, rows in members.items()}

    ratios = np.asarray(config.ratios, dtype=np.float64)
    counts: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(len(SPLITS)))
    seen: Counter[str] = Counter()
    total_counts = np.zeros(len(SPLITS))
    total_seen = 0
    final: list[str | None] = [None] * n
    moved_items: list[str] = []
    kept = 0

    def place(rows: list[int], split_index: int) -> None:
        nonlocal total_seen
        for r in rows:
            final[r] = SPLITS[split_index]
            if released[r]:
                counts[strata[r]][split_index] += 1
                seen[strata[r]] += 1
                total_counts[split_index] += 1
                total_seen += 1

    new_groups: list[int] = []
    for group, rows in members.items():
        prior = Counter(existing[r] for r in rows if existing[r] is not None)
        if not prior:
            new_groups.append(group)
            continue
        top = max(prior.items(), key=lambda kv: (kv[1], -SPLITS.index(kv[0])))[0]
        for r in rows:
            if existing[r] is not None:
                if existing[r] == top:
                    kept += 1
                else:
                    moved_items.append(item_ids[r])
        place(rows, SPLITS.index(top))

    def weight(group: int) -> int:
        return sum(1 for r in members[group] if released[r])

    new_groups.sort(key=lambda g: (-weight(g), _hash_order(config.seed, order_key[g])))
    for group in new_groups:
        rows = members[group]
        strata_here = Counter(strata[r] for r in rows if released[r])
        w = sum(strata_here.values())
        deficit: np.ndarray = np.zeros(len(SPLITS))
        for stratum, c in strata_here.items():
            deficit = deficit + c * (ratios * (seen[stratum] + c) - counts[stratum])
        deficit = deficit + max(w, 1) * (ratios * (total_seen + max(w, 1)) - total_counts)
        score: np.ndarray = np.where(ratios > 0, deficit, -np.inf)
        best = float(np.max(score))
        ties = [i for i in range(len(SPLITS)) if score[i] >= best - 1e-9]
        choice = min(ties, key=lambda i: _hash_order(config.seed, f"{order_key[group]}:{i}"))
        place(rows, choice)
    new_count = sum(1 for e in existing if e is None)

    items = items.copy()
    items["split"] = final
    items["split_group"] = [group_key[int(g)] for g in labels]
    with stage_steps("split", ["leak check"], config.progress) as done:
        report = find_leaks(
            items[items["status"] == "valid"],
            radius,
            embeddings,
            similarity if embeddings else None,
            pairs=confirmed,
        )
        done("leak check")
    by_stratum: dict[str, dict[str, int]] = {}
    for stratum, per_split in sorted(counts.items()):
        by_stratum[stratum] = {s: int(per_split[i]) for i, s in enumerate(SPLITS)}
    sizes = Counter(int(g) for g in labels)
    result = SplitResult(
        config={
            "ratios": list(config.ratios),
            "seed": config.seed,
            "group_by": list(config.group_by),
            "phash_max_distance": radius,
            "embed_min_similarity": similarity if embeddings else None,
            "embed_model": embeddings[0] if embeddings else None,
            "reassign": config.reassign,
        },
        candidates=n,
        counts={s: int(total_counts[i]) for i, s in enumerate(SPLITS)},
        new=new_count,
        kept=kept,
        moved=len(moved_items),
        groups=len(members),
        largest_group=max(sizes.values()) if sizes else 0,
        oversized_keys=dict(ctx.oversized),
        by_stratum=by_stratum,
        leaks=report,
        moved_items=moved_items,
    )
    if write:
        _write(ws, items, config, result)
    return result, items


def _write(ws: Workspace, items: pd.DataFrame, config: SplitConfig, result: SplitResult) -> None:
    ws.catalog.ensure_columns({"split": "TEXT", "split_group": "TEXT"})
    current = frame(ws, ["split", "split_group"])
    now = dict(
        zip(current["item_id"], zip(current["split"], current["split_group"], strict=True), strict=True)
    )
    changed = [
        (str(i), s, g)
        for i, s, g in zip(items["item_id"], items["split"], items["split_group"], strict=True)
        if now.get(str(i)) != (s, g)
    ]
    if changed:
        ws.catalog.update_items(
            [c[0] for c in changed],
            {"split": [c[1] for c in changed], "split_group": [c[2] for c in changed]},
        )
    settings = {"ratios": list(config.ratios), "seed": config.seed, "group_by": list(config.group_by)}
    if ws.config.get("split") != settings:
        ws.config["split"] = settings
        ws.save_config()
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    (ws.reports_dir / "split.json").write_text(json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n")


def stored_config(ws: Workspace) -> SplitConfig:
    """The split settings last used in this workspace (defaults if none)."""
    saved = ws.config.get("split") or {}
    default = SplitConfig()
    ratios = saved.get("ratios", default.ratios)
    return SplitConfig(
        ratios=(float(ratios[0]), float(ratios[1]), float(ratios[2])),
        seed=int(saved.get("seed", default.seed)),
        group_by=tuple(saved.get("group_by", default.group_by)),
    )
