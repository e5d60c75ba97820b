"""``emo8 audit``, ``split``, ``release``, ``push``, ``takedown``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emo8.cli.app import app
from emo8.cli.common import (
    DEFAULT_WORKERS,
    PANEL_RELEASE,
    Quiet,
    Workers,
    WorkspaceOpt,
    console,
    exit_on,
    out,
)
from emo8.cli.stages import open_workspace


@app.command("audit", rich_help_panel=PANEL_RELEASE)
def audit_cmd(
    workspace: WorkspaceOpt = Path("."),
    out_path: Annotated[
        Path | None, typer.Option("--out", help="HTML report (default reports/audit.html).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Embedding model key for the probe.")] = None,
    probe: Annotated[str, typer.Option(help="Probe for confident learning: linear or knn.")] = "linear",
    min_agreement: Annotated[float, typer.Option(help="Agreement below this is 'low'.")] = 0.6,
    queue: Annotated[
        str | None, typer.Option(help="Save the flagged items as this annotation round's selection.")
    ] = None,
    workers: Workers = DEFAULT_WORKERS,
    quiet: Quiet = False,
) -> None:
    """Audit label quality, distributions, bias and image quality (HTML + JSON report)."""
    from emo8.release.audit import AuditConfig, audit

    ws = open_workspace(workspace)
    config = AuditConfig(
        out=out_path, model=model, probe=probe, min_agreement=min_agreement, queue=queue, workers=workers,
        progress=not quiet,
    )  # fmt: skip
    with exit_on((ValueError, 2)):
        result = audit(ws, config)
    kinds = ", ".join(f"{k} {v}" for k, v in result.label_kinds.items()) or "none"
    out.print(f"[bold]audit[/]: {result.items} valid items, {result.labelled} labelled ({kinds})")
    if not result.labelled:
        out.print("  [yellow]no labelled items[/]: the label-quality sections are skipped")
    for key, sec in result.sections.items():
        text = f"skipped: {sec.skipped}" if sec.skipped else sec.summary
        out.print(f"  [bold]{key}[/]: {text}")
    if queue:
        out.print(f"  queued {result.queued} new item(s) for round {queue!r}")
    out.print(f"  report: {result.html} and {result.json} ({result.seconds:.1f}s)")


@app.command("split", rich_help_panel=PANEL_RELEASE)
def split_cmd(
    workspace: WorkspaceOpt = Path("."),
    ratios: Annotated[str, typer.Option(help="train,validation,test shares.")] = "0.8,0.05,0.15",
    seed: Annotated[int, typer.Option(help="Fixes the placement order of new groups.")] = 0,
    reassign: Annotated[
        bool, typer.Option("--reassign", help="Ignore existing splits (existing items may move).")
    ] = False,
    model: Annotated[str | None, typer.Option(help="Embedding model key for the cosine check.")] = None,
    phash_max_distance: Annotated[int | None, typer.Option(help="pHash radius (default: dedup's).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Compute and verify, write nothing.")] = False,
    quiet: Quiet = False,
) -> None:
    """Group-aware, stratified, stable train/validation/test splits, verified free of near-duplicate leaks."""
    from emo8.release.split import SPLITS, SplitConfig, SplitError, assign_splits, parse_ratios

    ws = open_workspace(workspace)
    with exit_on((SplitError, 2)):
        config = SplitConfig(
            ratios=parse_ratios(ratios), seed=seed, reassign=reassign, model=model,
            phash_max_distance=phash_max_distance, progress=not quiet,
        )  # fmt: skip
        result, _items = assign_splits(ws, config, write=not dry_run)
    total = sum(result.counts.values()) or 1
    shares = ", ".join(f"{s} {result.counts[s]} ({result.counts[s] / total:.1%})" for s in SPLITS)
    out.print(
        f"[bold]split[/]{' (dry run)' if dry_run else ''}: {result.candidates} items in {result.groups} groups"
    )
    out.print(f"  released candidates: {shares}")
    out.print(
        f"  new {result.new}, kept {result.kept}, moved {result.moved} (to keep near-duplicates together)"
    )
    if result.oversized_keys:
        out.print(f"  not kept together (too large): {result.oversized_keys}")
    colour = "green" if result.leaks.clean else "red"
    out.print(f"  leak check: [{colour}]{result.leaks.summary()}[/]")
    if not result.leaks.clean:
        raise typer.Exit(1)


@app.command("release", rich_help_panel=PANEL_RELEASE)
def release_cmd(
    version: Annotated[str, typer.Option("--version", help="Semantic version X.Y.Z.")],
    workspace: WorkspaceOpt = Path("."),
    fmt: Annotated[str, typer.Option("--format", help="hf, imagefolder or both.")] = "hf",
    min_agreement: Annotated[
        float | None, typer.Option(help="Also require this agreement of annotated labels.")
    ] = None,
    allow_weak_labels: Annotated[
        bool,
        typer.Option(
            "--allow-weak-labels", help="Bootstrap only: also release items whose only label is a weak label."
        ),
    ] = False,
    no_imported_labels: Annotated[
        bool, typer.Option("--no-imported-labels", help="Do not release labels from `emo8 labels import`.")
    ] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", help="Release directory.")] = None,
    imagefolder_out: Annotated[
        Path | None, typer.Option(help="ImageFolder root (default <out>/imagefolder).")
    ] = None,
    repo: Annotated[str | None, typer.Option(help="Hub repo ORG/NAME for the card's usage snippet.")] = None,
    max_shard_mb: Annotated[float, typer.Option(help="Image MB per parquet shard.")] = 500.0,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite an existing release.")] = False,
    allow_leaks: Annotated[
        bool, typer.Option("--allow-leaks", help="Release despite cross-split leaks.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Write a versioned Hugging Face dataset release (and/or an ImageFolder tree) with card and CHANGELOG."""
    from emo8.core.curation import LabelPolicy
    from emo8.release.publish import NothingToRelease, ReleaseConfig, ReleaseError, parse_formats, release

    ws = open_workspace(workspace)
    config = ReleaseConfig(
        version=version,
        formats=parse_formats(fmt),
        labels=LabelPolicy(min_agreement, allow_weak_labels, not no_imported_labels),
        out=out_dir, imagefolder_out=imagefolder_out, max_shard_bytes=int(max_shard_mb * 1024 * 1024),
        overwrite=overwrite, repo_id=repo, allow_leaks=allow_leaks, progress=not quiet,
    )  # fmt: skip
    with exit_on((NothingToRelease, 1, "no release"), (ReleaseError, 2)):
        result = release(ws, config)
    total = sum(result.splits.values())
    out.print(f"[bold]release {result.version}[/]: {total} images at {result.path}")
    out.print("  splits: " + ", ".join(f"{k} {v}" for k, v in result.splits.items()))
    out.print("  classes: " + ", ".join(f"{k} {v}" for k, v in result.classes.items()))
    out.print("  label sources: " + ", ".join(f"{k} {v}" for k, v in sorted(result.label_sources.items())))
    if result.label_sources.get("weak"):
        out.print(
            f"  [yellow]BOOTSTRAP RELEASE[/]: {result.label_sources['weak']} labels are weak labels from source "
            "metadata, not settled annotations (label_source = weak)"
        )
    if result.held_back:
        out.print("  held back: " + ", ".join(f"{k} {v}" for k, v in sorted(result.held_back.items())))
    if result.newly_split:
        out.print(f"  assigned splits to {result.newly_split} new item(s) first")
    out.print(f"  leak check: {result.leaks.summary()}")
    if result.previous:
        out.print(f"  vs {result.previous}: " + ", ".join(f"{k} {v}" for k, v in result.changes.items()))
    shards = sum(f.endswith(".parquet") for f in result.files)
    out.print(f"  parquet: {result.parquet_bytes / 1e6:.1f} MB in {shards} shard(s)")
    if result.imagefolder is not None:
        out.print(f"  imagefolder: {result.imagefolder}")
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/] {warning}")


@app.command("push", rich_help_panel=PANEL_RELEASE)
def push_cmd(
    version: Annotated[str, typer.Option("--version", help="The local release X.Y.Z.")],
    repo: Annotated[str, typer.Option("--repo", help="Hub dataset repo ORG/NAME.")],
    workspace: WorkspaceOpt = Path("."),
    private: Annotated[bool, typer.Option("--private", help="Create the repository private.")] = False,
    endpoint: Annotated[
        str | None, typer.Option(help="Hub URL (default HF_ENDPOINT or huggingface.co).")
    ] = None,
    xet: Annotated[
        bool | None, typer.Option("--xet/--no-xet", help="Xet uploads (default: only on huggingface.co).")
    ] = None,
) -> None:
    """Upload a release to the Hugging Face Hub as one commit and tag it vX.Y.Z (token: HF_TOKEN or login)."""
    from emo8.release.hub import PushConfig, PushError, PushInputError, push_release

    ws = open_workspace(workspace)
    with exit_on((PushInputError, 2), (PushError, 1)):
        result = push_release(ws, PushConfig(version, repo, private, endpoint, xet=xet))
    if result.noop:
        out.print(f"[bold]{repo}[/] already has {result.tag} with identical content: nothing to do")
        return
    out.print(
        f"[bold]pushed {version}[/] to {repo} ({result.url}): commit {result.commit}, tag {result.tag}; "
        f"{len(result.uploaded)} file(s) uploaded, {len(result.unchanged)} unchanged, {len(result.deleted)} deleted"
    )


@app.command("takedown", rich_help_panel=PANEL_RELEASE)
def takedown_cmd(
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded verbatim).")],
    workspace: WorkspaceOpt = Path("."),
    sha256: Annotated[str | None, typer.Option("--sha256", help="sha256 of the image bytes.")] = None,
    url: Annotated[
        str | None, typer.Option("--url", help="Image URL or the page it was published on.")
    ] = None,
    author: Annotated[str | None, typer.Option("--author", help="Every image of this author.")] = None,
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the stored bytes.")] = False,
) -> None:
    """Remove an image and every copy of it from all later releases (by hash, URL or author)."""
    from emo8.core.takedown import TakedownError, TakedownRequest, take_down

    ws = open_workspace(workspace)
    with exit_on((TakedownError, 2)):
        result = take_down(ws, TakedownRequest(reason, sha256=sha256, url=url, author=author, purge=purge))
    out.print(
        f"[bold]{result.takedown_id}[/] ({result.selector}): {result.matched} item(s) matched, "
        f"{len(result.removed)} removed with their copies; {len(result.hashes)} hash(es) recorded"
    )
    if purge:
        out.print(
            f"  purged {result.purged_objects} stored object(s); deleted reports: {result.purged_reports or 'none'}"
        )
    if result.in_local_releases:
        console.print(
            f"[yellow]warning:[/] already in local release(s) {', '.join(result.in_local_releases)}: releases are "
            "immutable; withdraw them (and their Hub tags) if they were published"
        )
