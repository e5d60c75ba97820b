"""The ``audit``, ``split``, ``release`` and ``push`` stages: their settings (declared once, for the CLI and
pipelines) and how their results read."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import field_validator

from emo8.core.curation import LabelPolicy
from emo8.core.stage import (
    PANEL_RELEASE,
    Stage,
    StageSettings,
    Summary,
    register_stage,
    setting,
    workers_setting,
)
from emo8.core.workspace import Workspace
from emo8.release.audit import AuditConfig, AuditResult, audit
from emo8.release.hub import PushConfig, PushError, PushInputError, PushResult, push_release
from emo8.release.publish import (
    FORMATS,
    NothingToRelease,
    ReleaseConfig,
    ReleaseError,
    ReleaseResult,
    StaleInput,
    parse_formats,
    release,
)
from emo8.release.split import SPLITS, SplitConfig, SplitError, SplitResult, assign_splits, parse_ratios

# -- audit ------------------------------------------------------------------------------------------------------------


class AuditSettings(StageSettings):
    """Settings of ``emo8 audit`` / a pipeline's ``audit`` step."""

    out: Path | None = setting(None, "HTML report (default reports/audit.html).")
    model: str | None = setting(None, "Embedding model key for the probe.")
    probe: Literal["linear", "knn"] = setting("linear", "Probe for confident learning: linear or knn.")
    min_agreement: float = setting(0.6, "Agreement below this is 'low'.", ge=0.0, le=1.0)
    queue: str | None = setting(None, "Save the flagged items as this annotation round's selection.")
    workers: int = workers_setting()


def run_audit(ws: Workspace, settings: AuditSettings, progress: bool) -> AuditResult:
    """Run :func:`emo8.release.audit.audit` with ``settings``."""
    config = AuditConfig(
        out=settings.out, model=settings.model, probe=settings.probe, min_agreement=settings.min_agreement,
        queue=settings.queue, workers=settings.workers, progress=progress,
    )  # fmt: skip
    return audit(ws, config)


def summarize_audit(result: AuditResult, settings: AuditSettings) -> Summary:
    """Items and labels; one line per section; where the report is."""
    kinds = ", ".join(f"{k} {v}" for k, v in result.label_kinds.items()) or "none"
    lines = [f"[bold]audit[/]: {result.items} valid items, {result.labelled} labelled ({kinds})"]
    if not result.labelled:
        lines.append("  [yellow]no labelled items[/]: the label-quality sections are skipped")
    for key, sec in result.sections.items():
        text = f"skipped: {sec.skipped}" if sec.skipped else sec.summary
        lines.append(f"  [bold]{key}[/]: {text}")
    if settings.queue:
        lines.append(f"  queued {result.queued} new item(s) for round {settings.queue!r}")
    lines.append(f"  report: {result.html} and {result.json} ({result.seconds:.1f}s)")
    return Summary(lines)


AUDIT = register_stage(
    Stage(
        name="audit",
        settings=AuditSettings,
        run=run_audit,
        summarize=summarize_audit,
        command=("audit",),
        help="Audit label quality, distributions, bias and image quality (HTML + JSON report).",
        usage_errors=(ValueError,),
        reads=("table:items", "dir:embeddings"),
        writes=("dir:reports",),
        panel=PANEL_RELEASE,
    )
)


# -- split ------------------------------------------------------------------------------------------------------------


class SplitSettings(StageSettings):
    """Settings of ``emo8 split`` / a pipeline's ``split`` step."""

    ratios: str = setting("0.8,0.05,0.15", "train,validation,test shares.")
    seed: int = setting(0, "Fixes the placement order of new groups.")
    reassign: bool = setting(False, "Ignore existing splits (existing items may move).", flag="--reassign")
    model: str | None = setting(None, "Embedding model key for the cosine check.")
    phash_max_distance: int | None = setting(None, "pHash radius (default: dedup's).", ge=0, le=64)
    dry_run: bool = setting(False, "Compute and verify, write nothing.", flag="--dry-run")

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, value: str) -> str:
        try:
            SplitConfig(ratios=parse_ratios(value)).validate()
        except SplitError as exc:
            raise ValueError(str(exc)) from exc
        return value


def run_split(ws: Workspace, settings: SplitSettings, progress: bool) -> SplitResult:
    """Run :func:`emo8.release.split.assign_splits` with ``settings`` (nothing written with ``dry_run``)."""
    config = SplitConfig(
        ratios=parse_ratios(settings.ratios), seed=settings.seed, reassign=settings.reassign, model=settings.model,
        phash_max_distance=settings.phash_max_distance, progress=progress,
    )  # fmt: skip
    result, _items = assign_splits(ws, config, write=not settings.dry_run)
    return result


def summarize_split(result: SplitResult, settings: SplitSettings) -> Summary:
    """Shares per split, what moved, the leak check (leaks are a problem: exit 1, a build stops)."""
    total = sum(result.counts.values()) or 1
    shares = ", ".join(f"{s} {result.counts[s]} ({result.counts[s] / total:.1%})" for s in SPLITS)
    lines = [
        f"[bold]split[/]{' (dry run)' if settings.dry_run else ''}: {result.candidates} items in "
        f"{result.groups} groups",
        f"  released candidates: {shares}",
        f"  new {result.new}, kept {result.kept}, moved {result.moved} (to keep near-duplicates together)",
    ]
    if result.oversized_keys:
        lines.append(f"  not kept together (too large): {result.oversized_keys}")
    colour = "green" if result.leaks.clean else "red"
    lines.append(f"  leak check: [{colour}]{result.leaks.summary()}[/]")
    problem = None
    if not result.leaks.clean:
        problem = (
            f"the splits leak: {result.leaks.summary()} (e.g. {result.leaks.leaks[0]}); `emo8 split --reassign` "
            "recomputes every split (existing items may move); a release refuses leaking splits unless --allow-leaks"
        )
    return Summary(lines, problem=problem)


SPLIT = register_stage(
    Stage(
        name="split",
        settings=SplitSettings,
        run=run_split,
        summarize=summarize_split,
        command=("split",),
        help="Group-aware, stratified, stable train/validation/test splits, verified free of near-duplicate leaks.",
        usage_errors=(SplitError,),
        reads=("table:items", "dir:embeddings", "dir:dedup"),
        writes=("table:items", "dir:reports"),  # reports/split.json
        panel=PANEL_RELEASE,
    )
)


# -- release ----------------------------------------------------------------------------------------------------------


class ReleaseSettings(StageSettings):
    """Settings of ``emo8 release`` / a pipeline's ``release`` step."""

    version: str = setting(..., "Semantic version X.Y.Z.", flag="--version")
    format: str = setting("hf", "hf, imagefolder or both.")
    min_agreement: float | None = setting(
        None, "Also require this agreement of annotated labels.", ge=0.0, le=1.0
    )
    allow_weak_labels: bool = setting(
        False,
        "Bootstrap only: also release items whose only label is a weak label.",
        flag="--allow-weak-labels",
    )
    no_imported_labels: bool = setting(
        False, "Do not release labels from `emo8 labels import`.", flag="--no-imported-labels"
    )
    out: Path | None = setting(None, "Release directory.")
    imagefolder_out: Path | None = setting(None, "ImageFolder root (default <out>/imagefolder).")
    repo: str | None = setting(None, "Hub repo ORG/NAME for the card's usage snippet.")
    max_shard_mb: float = setting(500.0, "Image MB per parquet shard.", gt=0)
    overwrite: bool = setting(False, "Rewrite an existing release.", flag="--overwrite")
    allow_leaks: bool = setting(False, "Release despite cross-split leaks.", flag="--allow-leaks")
    assign_splits: bool = setting(
        True,
        "Give items without a split one first, with the workspace's split settings (--no-assign-splits: "
        "stop and ask for `emo8 split`).",
    )

    @field_validator("format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        unknown = [f for f in parse_formats(value) if f not in FORMATS]
        if unknown or not parse_formats(value):
            raise ValueError(f"unknown format {value!r}; choose from {', '.join(FORMATS)} or both")
        return value


def run_release(
    ws: Workspace, settings: ReleaseSettings, progress: bool
) -> ReleaseResult | NothingToRelease | StaleInput:
    """Run :func:`emo8.release.publish.release` with ``settings``; a catalog with nothing releasable, or with
    inputs an earlier stage has not settled, is returned (the summary reports it as the problem)."""
    config = ReleaseConfig(
        version=settings.version,
        formats=parse_formats(settings.format),
        labels=LabelPolicy(settings.min_agreement, settings.allow_weak_labels, not settings.no_imported_labels),
        out=settings.out, imagefolder_out=settings.imagefolder_out,
        max_shard_bytes=int(settings.max_shard_mb * 1024 * 1024), overwrite=settings.overwrite,
        repo_id=settings.repo, allow_leaks=settings.allow_leaks, assign_splits=settings.assign_splits,
        progress=progress,
    )  # fmt: skip
    try:
        return release(ws, config)
    except (NothingToRelease, StaleInput) as exc:
        return exc


def summarize_release(
    result: ReleaseResult | NothingToRelease | StaleInput, settings: ReleaseSettings
) -> Summary:
    """Images per split and class, label sources, what was held back, the leak check, the change log."""
    if isinstance(result, (NothingToRelease, StaleInput)):
        return Summary(problem=str(result))
    total = sum(result.splits.values())
    lines = [
        f"[bold]release {result.version}[/]: {total} images at {result.path}",
        "  splits: " + ", ".join(f"{k} {v}" for k, v in result.splits.items()),
        "  classes: " + ", ".join(f"{k} {v}" for k, v in result.classes.items()),
        "  label sources: " + ", ".join(f"{k} {v}" for k, v in sorted(result.label_sources.items())),
    ]
    if result.label_sources.get("weak"):
        lines.append(
            f"  [yellow]BOOTSTRAP RELEASE[/]: {result.label_sources['weak']} labels are weak labels from source "
            "metadata, not settled annotations (label_source = weak)"
        )
    if result.held_back:
        lines.append("  held back: " + ", ".join(f"{k} {v}" for k, v in sorted(result.held_back.items())))
    if result.newly_split:
        lines.append(f"  assigned splits to {result.newly_split} new item(s) first")
    lines.append(f"  leak check: {result.leaks.summary()}")
    if result.previous:
        lines.append(f"  vs {result.previous}: " + ", ".join(f"{k} {v}" for k, v in result.changes.items()))
    shards = sum(f.endswith(".parquet") for f in result.files)
    lines.append(f"  parquet: {result.parquet_bytes / 1e6:.1f} MB in {shards} shard(s)")
    if result.imagefolder is not None:
        lines.append(f"  imagefolder: {result.imagefolder}")
    if result.build is not None:
        lines.append(f"  built by: {result.build}")
    return Summary(lines, warnings=list(result.warnings))


RELEASE = register_stage(
    Stage(
        name="release",
        settings=ReleaseSettings,
        run=run_release,
        summarize=summarize_release,
        command=("release",),
        help="Write a versioned Hugging Face dataset release (and/or an ImageFolder tree) with card and CHANGELOG.",
        usage_errors=(ReleaseError,),
        reads=("table:items", "table:takedown_hashes", "dir:embeddings", "dir:dedup"),
        writes=("dir:releases",),
        panel=PANEL_RELEASE,
    )
)


# -- push -------------------------------------------------------------------------------------------------------------


class PushSettings(StageSettings):
    """Settings of ``emo8 push`` / a pipeline's ``push`` step."""

    version: str = setting(..., "The local release X.Y.Z.", flag="--version")
    repo: str = setting(..., "Hub dataset repo ORG/NAME.", flag="--repo")
    private: bool = setting(False, "Create the repository private.", flag="--private")
    endpoint: str | None = setting(
        None, "Hub URL (default HF_ENDPOINT or huggingface.co).", fingerprint=False
    )
    xet: bool | None = setting(
        None, "Xet uploads (default: only on huggingface.co).", flag="--xet/--no-xet", fingerprint=False
    )


def run_push(ws: Workspace, settings: PushSettings, progress: bool) -> PushResult:
    """Run :func:`emo8.release.hub.push_release` with ``settings``."""
    config = PushConfig(
        settings.version, settings.repo, settings.private, settings.endpoint, xet=settings.xet
    )
    return push_release(ws, config)


def summarize_push(result: PushResult, settings: PushSettings) -> Summary:
    """The commit and tag, or that the Hub already had this release."""
    if result.noop:
        return Summary(
            [f"[bold]{settings.repo}[/] already has {result.tag} with identical content: nothing to do"]
        )
    return Summary(
        [
            f"[bold]pushed {settings.version}[/] to {settings.repo} ({result.url}): commit {result.commit}, tag "
            f"{result.tag}; {len(result.uploaded)} file(s) uploaded, {len(result.unchanged)} unchanged, "
            f"{len(result.deleted)} deleted"
        ]
    )


PUSH = register_stage(
    Stage(
        name="push",
        settings=PushSettings,
        run=run_push,
        summarize=summarize_push,
        command=("push",),
        help="Upload a release to the Hugging Face Hub as one commit and tag it vX.Y.Z (token: HF_TOKEN or login).",
        usage_errors=(PushInputError,),
        runtime_errors=(PushError,),
        reads=("dir:releases",),
        writes=(),
        panel=PANEL_RELEASE,
    )
)
