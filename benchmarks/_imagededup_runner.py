"""Runs imagededup inside its own virtual environment for benchmarks/neardup.py (called by subprocess).

Usage: ``.venv-peers/imagededup/bin/python benchmarks/_imagededup_runner.py JOB.json OUT.json``

The job names the image folder, the thresholds, the worker count, and the EfficientNet-Lite0 weight file; the
CNN is fed the same model and preprocessing as emo8 (imagededup's ``CustomModel`` API), loaded with emo8's key
rename (``emo8/embed/encoders.py`` is imported by path: it needs only torch, timm and Pillow).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _encoders() -> Any:
    """emo8's encoder module, loaded by path: its only emo8 import (``emo8.embed.base``: a default key and two
    error classes) is stood in for, so neither emo8's package nor pydantic has to exist in this venv."""
    if "emo8.embed.base" not in sys.modules:
        base = types.ModuleType("emo8.embed.base")
        base.DEFAULT_MODEL = "efficientnet-lite0"  # type: ignore[attr-defined]
        base.EncoderKeyError = type("EncoderKeyError", (ValueError,), {})  # type: ignore[attr-defined]
        base.WeightsError = type("WeightsError", (RuntimeError,), {})  # type: ignore[attr-defined]
        for name in ("emo8", "emo8.embed"):
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules.setdefault(name, package)
        sys.modules["emo8.embed.base"] = base
    spec = importlib.util.spec_from_file_location("emo8_encoders", REPO / "emo8" / "embed" / "encoders.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["emo8_encoders"] = module
    spec.loader.exec_module(module)
    return module


class _Lite0(torch.nn.Module):
    def __init__(self, weights: str) -> None:
        super().__init__()
        import timm

        enc = _encoders()
        self.net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        self.net.load_state_dict(enc.lite0_timm_state_dict(state), strict=True)
        self.net.eval()
        self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        out: torch.Tensor = self.net.forward_head(self.net.forward_features(x), pre_logits=True)
        return out


def main() -> None:
    job = json.loads(Path(sys.argv[1]).read_text())
    out_path = Path(sys.argv[2])
    from imagededup.methods import CNN, DHash, PHash

    image_dir = job["image_dir"]
    workers = int(job["workers"])
    result: dict[str, Any] = {}
    for name, cls in (("phash", PHash), ("dhash", DHash)) if job.get("hashes", True) else ():
        hasher = cls(verbose=False)
        t0 = time.perf_counter()
        codes = hasher.encode_images(image_dir=image_dir, num_enc_workers=workers)
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        hasher.find_duplicates(encoding_map=codes, max_distance_threshold=job["max_distance"], scores=False)
        t_search = time.perf_counter() - t0
        result[name] = {"codes": codes, "encode_seconds": t_enc, "search_seconds": t_search, "n": len(codes)}
    if job.get("cnn", True):
        import timm.data

        model = _Lite0(job["weights"])
        config = timm.data.resolve_model_data_config(model.net)
        transform = timm.data.create_transform(**config, is_training=False)
        from imagededup.utils import CustomModel

        cnn = CNN(
            verbose=False,
            model_config=CustomModel(name="efficientnet_lite0", model=model, transform=transform),
        )
        torch.set_num_threads(max(1, workers))
        t0 = time.perf_counter()
        enc = cnn.encode_images(image_dir=image_dir, num_enc_workers=job.get("cnn_workers", 0))
        t_enc = time.perf_counter() - t0
        t0 = time.perf_counter()
        cnn.find_duplicates(
            encoding_map=enc,
            min_similarity_threshold=job["min_similarity"],
            scores=False,
            num_sim_workers=workers,
        )
        t_search = time.perf_counter() - t0
        names = list(enc)
        matrix = np.stack([np.asarray(enc[n], dtype=np.float32).ravel() for n in names])
        np.save(out_path.with_suffix(".cnn.npy"), matrix)
        result["cnn"] = {"names": names, "encode_seconds": t_enc, "search_seconds": t_search, "n": len(names)}
    out_path.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
