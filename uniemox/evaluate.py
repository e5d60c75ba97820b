"""Evaluation and inference with a fine-tuned classifier: metrics, confusion matrices, predictions, embeddings.

Every path (evaluate, predict, embed, and the validation inside fine-tuning) preprocesses images with the
checkpoint's :class:`~uniemox.classifier.Preprocess` and batches them through :func:`batched`, so the same image
gives the same probabilities whichever command asks.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

from uniemox.benchmarks import IMAGE_EXTENSIONS, LabeledSource, class_mapping, open_benchmark
from uniemox.classifier import (
    Backbone,
    BackboneRequest,
    InitError,
    build_backbone,
    load_classifier,
)

log = logging.getLogger(__name__)


# --- metrics --------------------------------------------------------------------------------------------------


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def _js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint)."""
    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(a > 0, a * np.log2(a / np.clip(b, 1e-12, None)), 0.0)
        return np.asarray(terms.sum(axis=1))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def compute_metrics(
    probs: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    domains: Sequence[str | None] | None = None,
    soft: np.ndarray | None = None,
) -> dict[str, Any]:
    """Top-1, top-3 (top-k with k = min(3, C)), macro-F1, per-class accuracy, confusion matrix; per-domain
    accuracy when ``domains`` is given; agreement with the human vote distributions when ``soft`` is given.

    Macro-F1 averages the per-class F1 over the classes that occur among the labels or the predictions (as
    scikit-learn does); a class's F1 is 0 when it has no true positives.
    """
    n, c = probs.shape
    if n == 0:
        raise ValueError("no predictions to evaluate")
    preds = probs.argmax(axis=1)
    k = min(3, c)
    topk = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    cm = confusion_matrix(labels, preds, c)
    tp, true_n, pred_n = np.diag(cm).astype(float), cm.sum(1).astype(float), cm.sum(0).astype(float)
    precision = np.divide(tp, pred_n, out=np.zeros(c), where=pred_n > 0)
    recall = np.divide(tp, true_n, out=np.zeros(c), where=true_n > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(c), where=(precision + recall) > 0
    )
    present = (true_n > 0) | (pred_n > 0)
    out: dict[str, Any] = {
        "n": int(n),
        "classes": list(classes),
        "top1": float((preds == labels).mean()),
        f"top{k}": float((topk == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(f1[present].mean()),
        "per_class_accuracy": {
            cls: (float(recall[i]) if true_n[i] else None) for i, cls in enumerate(classes)
        },
        "per_class_f1": {cls: float(f1[i]) for i, cls in enumerate(classes)},
        "support": {cls: int(true_n[i]) for i, cls in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }
    if k != 3:
        out["top3"] = out[f"top{k}"]
    if domains is not None:
        by_domain: dict[str, list[bool]] = {}
        for d, ok in zip(domains, preds == labels, strict=True):
            by_domain.setdefault(d or "unknown", []).append(bool(ok))
        out["per_domain_accuracy"] = {d: float(np.mean(v)) for d, v in sorted(by_domain.items())}
        out["per_domain_n"] = {d: len(v) for d, v in sorted(by_domain.items())}
    if soft is not None:
        out["vote_agreement"] = float(soft[np.arange(n), preds].mean())  # share of annotators who agree
        out["vote_majority_accuracy"] = float((preds == soft.argmax(axis=1)).mean())
        out["vote_js_divergence"] = float(_js_divergence(probs, soft).mean())
    return out


def plot_confusion(cm: np.ndarray, classes: Sequence[str], title: str, path: Path) -> Path:
    """Row-normalised confusion matrix as a PNG, with counts in the cells, a title and axis labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = max(4.0, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black",
                    fontsize=8)  # fmt: skip
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- batched inference ----------------------------------------------------------------------------------------


class _Images(Dataset[tuple[torch.Tensor, int]]):
    def __init__(self, load: Callable[[int], Image.Image], n: int, transform: Callable[[Any], torch.Tensor]):
        self.load, self.n, self.transform = load, n, transform

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.load(i).convert("RGB")), i


@torch.no_grad()
def batched(
    fn: Callable[[torch.Tensor], torch.Tensor],
    load: Callable[[int], Image.Image],
    n: int,
    transform: Callable[[Any], torch.Tensor],
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Apply ``fn`` (a model in eval mode) to ``n`` images in order -> float32 (n, ...) on the CPU."""
    device = torch.device(device)
    loader = DataLoader(_Images(load, n, transform), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda")  # fmt: skip
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    parts = []
    for x, _ in loader:
        with autocast:
            parts.append(fn(x.to(device, non_blocking=True)).float().cpu())
    return torch.cat(parts).numpy() if parts else np.zeros((0,), np.float32)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def source_probs(
    model: nn.Module, source: LabeledSource, transform: Callable[[Any], torch.Tensor], **kw: Any
) -> np.ndarray:
    """Softmax probabilities (N, C) of ``model`` on every image of ``source``."""
    model.eval()
    return batched(
        lambda x: F.softmax(model(x).float(), dim=-1), source.load_image, len(source), transform, **kw
    )


# --- commands -------------------------------------------------------------------------------------------------


@dataclass
class EvalRequest:
    ckpt: str
    data: str
    dataset: str
    split: str = "test"
    polarity: bool = False
    out: str | None = None  # default: <ckpt dir>/eval-<dataset>-<split>
    batch_size: int = 64
    num_workers: int = 0
    device: str = "auto"
    image_col: str | None = None
    label_col: str | None = None


def evaluate(req: EvalRequest) -> dict[str, Any]:
    """Evaluate a fine-tuned classifier on one split; writes metrics.json, confusion.{json,png} and
    predictions.csv into ``req.out`` and returns the metrics."""
    device = resolve_device(req.device)
    clf = load_classifier(req.ckpt, device)
    source = open_benchmark(req.dataset, req.data, req.split, polarity=req.polarity, image_col=req.image_col,
                            label_col=req.label_col)  # fmt: skip
    mapping = class_mapping(clf.classes, source.classes)  # (C_data, C_model)
    probs = source_probs(clf.model, source, clf.preprocess.eval_transform(), batch_size=req.batch_size,
                         num_workers=req.num_workers, device=device)  # fmt: skip
    if mapping.shape[0] != mapping.shape[1] or not np.array_equal(mapping, np.eye(len(mapping))):
        probs = probs @ mapping.T
        probs = probs / np.clip(probs.sum(1, keepdims=True), 1e-12, None)
    metrics = compute_metrics(probs, source.labels, source.classes, source.domains, source.soft)
    ckpt_path = Path(req.ckpt)
    run_dir = ckpt_path if ckpt_path.is_dir() else ckpt_path.parent
    meta = clf.meta
    metrics.update({
        "dataset": source.dataset, "split": req.split, "polarity": req.polarity, "data": str(req.data),
        "checkpoint": str(req.ckpt), "run": run_dir.name, "trained_on": clf.dataset,
        "init": meta.get("init"), "mode": "linear-probe" if meta.get("linear_probe") else "finetune",
        "fraction": meta.get("fraction", 1.0),
    })  # fmt: skip
    out = Path(req.out) if req.out else run_dir / f"eval-{source.dataset}-{req.split}"
    write_eval_outputs(out, metrics, probs, source)
    return metrics


def write_eval_outputs(out: Path, metrics: dict[str, Any], probs: np.ndarray, source: LabeledSource) -> None:
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    cm = np.asarray(metrics["confusion_matrix"])
    (out / "confusion.json").write_text(json.dumps({"classes": list(source.classes), "matrix": cm.tolist(),
                                                    "rows": "true class", "columns": "predicted class"}))  # fmt: skip
    title = f"{metrics.get('run', '')}: {source.dataset} {source.split} (top-1 {100 * metrics['top1']:.1f}%)"
    plot_confusion(cm, source.classes, title, out / "confusion.png")
    frame = pd.DataFrame({"id": source.ids, "label": [source.classes[i] for i in source.labels],
                          "pred": [source.classes[i] for i in probs.argmax(1)]})  # fmt: skip
    for j, cls in enumerate(source.classes):
        frame[f"p_{cls}"] = probs[:, j]
    frame.to_csv(out / "predictions.csv", index=False)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively) under the named directories, in a stable order."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} is neither an image file nor a directory")
    if not files:
        raise ValueError(f"no images found in {', '.join(map(str, inputs))}")
    return files


def _open(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img


class _PathLoader:
    def __init__(self, files: list[Path]) -> None:
        self.files = files

    def __call__(self, i: int) -> Image.Image:
        try:
            return _open(self.files[i])
        except OSError as exc:
            raise ValueError(f"cannot read image {self.files[i]}: {exc}") from exc


def predict(
    ckpt: str,
    inputs: Sequence[str | Path],
    out: str | Path | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
) -> Any:
    """Per-class probabilities and the top label of each image -> a DataFrame (also written to ``out`` CSV)."""
    import pandas as pd

    dev = resolve_device(device)
    clf = load_classifier(ckpt, dev)
    files = list_images(inputs)
    clf.model.eval()
    probs = batched(lambda x: F.softmax(clf.model(x).float(), dim=-1), _PathLoader(files), len(files),
                    clf.preprocess.eval_transform(), batch_size=batch_size, num_workers=num_workers,
                    device=dev)  # fmt: skip
    frame = pd.DataFrame({"path": [str(f) for f in files], "label": [clf.classes[i] for i in probs.argmax(1)],
                          "confidence": probs.max(1)})  # fmt: skip
    for j, cls in enumerate(clf.classes):
        frame[f"p_{cls}"] = probs[:, j]
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(out, index=False)
    return frame


def embedding_backbone(ckpt: str, weights: str | None = None, pool: str = "cls") -> Backbone:
    """The backbone of a fine-tuned classifier, or any ``--init`` source (pretraining checkpoint, encoder key)."""
    try:
        return load_classifier(ckpt).model.backbone
    except InitError:
        pass
    except (FileNotFoundError, IsADirectoryError):
        if not ckpt.startswith(("timm:", "open_clip:", "efficientnet-lite0")):
            raise
    backbone, _ = build_backbone(BackboneRequest(init=ckpt, weights=weights, pool=pool))
    return backbone


def embed(
    ckpt: str,
    data: str,
    dataset: str,
    out: str | Path,
    *,
    split: str = "train",
    weights: str | None = None,
    pool: str = "cls",
    batch_size: int = 64,
    num_workers: int = 0,
    device: str = "auto",
) -> dict[str, Any]:
    """Pooled backbone features of one split -> ``out/features.npy`` (float32, N x D, L2-normalised rows are
    ``features_normalised.npy``) and ``out/ids.parquet`` (row order: id, label, split, domain)."""
    import pandas as pd

    dev = resolve_device(device)
    backbone = embedding_backbone(ckpt, weights, pool).eval().to(dev)
    source = open_benchmark(dataset, data, split)
    feats = batched(backbone, source.load_image, len(source), backbone.preprocess.eval_transform(),
                    batch_size=batch_size, num_workers=num_workers, device=dev)  # fmt: skip
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / "features.npy", feats.astype(np.float32))
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    np.save(out_dir / "features_normalised.npy", (feats / np.clip(norms, 1e-12, None)).astype(np.float32))
    pd.DataFrame({"id": source.ids, "label": [source.classes[i] for i in source.labels], "split": split,
                  "domain": source.domains or [None] * len(source)}).to_parquet(out_dir / "ids.parquet")  # fmt: skip
    info = {"n": len(source), "dim": int(feats.shape[1]), "out": str(out_dir), "source": ckpt}
    (out_dir / "embed.json").write_text(json.dumps(info, indent=2))
    return info
