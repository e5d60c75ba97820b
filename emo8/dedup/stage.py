"""The ``dedup`` stage: its settings (declared once, for the CLI and pipelines) and how its result reads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emo8.core.similarity import MAX_NEIGHBOURS, SearchConfig
from emo8.core.stage import (
    PANEL_CURATE,
    CommaList,
    Stage,
    StageSettings,
    Summary,
    device_setting,
    register_stage,
    setting,
    workers_setting,
)
from emo8.core.workspace import Workspace
from emo8.embed.base import EmbeddingStoreError, EncoderKeyError, ModelKey, WeightsError

if TYPE_CHECKING:
    from emo8.dedup.tiers import DedupResult

TIERS = ("exact", "perceptual", "semantic")


class DedupSettings(StageSettings):
    """Settings of ``emo8 dedup`` / a pipeline's ``dedup`` step."""

    phash_max_distance: int | None = setting(
        None, "pHash Hamming distance of 64 bits (default: benchmarked, see docs).", ge=0, le=64
    )
    dhash_max_distance: int | None = setting(
        None, "dHash distance a pHash match must also have (-1: no second opinion).", ge=-1, le=64
    )
    embed_min_similarity: float | None = setting(
        None, "Cosine of a semantic match (default: benchmarked per model).", ge=-1.0, le=1.0
    )
    model: ModelKey | None = setting(None, "Embeddings to use (default: the stored one).")
    dry_run: bool = setting(False, "Reports only; the catalog is untouched.")
    against: str | None = setting(
        None, "Folder or HF dataset (e.g. a test split): matches become contaminated.", path_like=True
    )
    semdedup_eps: tuple[float, ...] = setting((), "SemDeDup eps to report; repeat it for several.")
    semdedup_apply: bool = setting(False, "Also mark SemDeDup removals at the smallest eps.")
    tiers: CommaList = setting(TIERS, "Tiers to run, in priority order; repeat it for several.")
    max_neighbours: int = setting(
        MAX_NEIGHBOURS, "Matches an item keeps per tier, best-ranked first (0: all).", ge=0
    )
    workers: int = workers_setting()
    device: str = device_setting()


def run_dedup(ws: Workspace, settings: DedupSettings, progress: bool) -> DedupResult:
    """Run :func:`emo8.dedup.tiers.dedup` with ``settings``."""
    from emo8.dedup.tiers import DedupConfig, dedup  # torch: loaded when the stage runs, not with the CLI

    thresholds: dict[str, Any] = {}
    if settings.phash_max_distance is not None:
        thresholds["phash_max_distance"] = settings.phash_max_distance
    if settings.dhash_max_distance is not None:
        thresholds["dhash_max_distance"] = (
            None if settings.dhash_max_distance < 0 else settings.dhash_max_distance
        )
    config = DedupConfig(
        **thresholds, embed_min_similarity=settings.embed_min_similarity, model=settings.model,
        dry_run=settings.dry_run, against=settings.against, semdedup_eps=settings.semdedup_eps,
        semdedup_apply=settings.semdedup_apply, tiers=settings.tiers, workers=settings.workers, device=settings.device,
        progress=progress, search=SearchConfig(max_neighbours=settings.max_neighbours),
    )  # fmt: skip
    return dedup(ws, config)


def summarize_dedup(result: DedupResult, settings: DedupSettings) -> Summary:
    """Items, clusters and duplicates per tier; contamination; SemDeDup rates; where the reports are."""
    report = result.report
    per_tier = ", ".join(f"{k}={v}" for k, v in report["duplicates_per_tier"].items()) or "none"
    lines = [
        f"[bold]dedup[/]{' (dry run)' if settings.dry_run else ''}: {report['items']} items, "
        f"{report['clusters']} cluster(s), duplicates {per_tier}; {result.changed} item(s) changed in "
        f"{report['seconds']:.1f}s",
        "  status: " + ", ".join(f"{k}={v}" for k, v in report["status"].items()),
    ]
    if report["contamination"]:
        c = report["contamination"]
        lines.append(
            f"  against {c['against']}: {c['reference_images']} reference images, {c['direct_matches']} direct "
            f"match(es), {c['contaminated_items']} item(s) contaminated"
        )
    if report["semdedup"]:
        rates = ", ".join(f"eps {k}: {v['rate']:.1%}" for k, v in report["semdedup"]["eps"].items())
        lines.append(f"  SemDeDup removal rates: {rates}")
    lines += [f"  note: {note}" for note in report["notes"]]
    lines.append(f"  reports: {result.json_path}, {result.html_path}")
    return Summary(lines)


DEDUP = register_stage(
    Stage(
        name="dedup",
        settings=DedupSettings,
        run=run_dedup,
        summarize=summarize_dedup,
        command=("dedup",),
        help="Find exact, perceptual and semantic duplicates; mark them (nothing is deleted); write reports.",
        usage_errors=(ValueError, WeightsError, EncoderKeyError),
        runtime_errors=(EmbeddingStoreError,),
        reads=("table:items", "dir:embeddings"),
        writes=("table:items", "dir:dedup"),
        panel=PANEL_CURATE,
    )
)
