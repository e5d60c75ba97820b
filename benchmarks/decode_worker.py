"""Where a decode worker's CPU goes: the per-image steps of ``emo8.ingest.run.check_batch`` on the dev photos.

Each step runs alone over every photo (bytes already in memory), best of ``--repeats`` passes, in CPU
milliseconds per image (``time.process_time``): the sha256 of the body, :func:`emo8.core.imaging.inspect_image`
and its parts on the JPEG fast path (segment walk, libjpeg-turbo decode at Pillow's draft size, the 64 x 64 box
resize, luma, pHash and dHash, colourfulness, the pixel hash), ``inspect_image`` through Pillow alone (the path of
every non-JPEG, and of every JPEG without simplejpeg), a new object written by ``ObjectStore.put`` under
``--scratch``, and ``check_batch`` as a whole (batches of 16). The parts are timed apart with cold caches
between photos, so they add up to a little more than the whole.

    nice .venv/bin/python benchmarks/decode_worker.py [--photos DIR] [--repeats 5] [--scratch /dev/shm]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from emo8.core import imaging
from emo8.core.imaging import ValidationConfig, inspect_image
from emo8.core.workspace import ObjectStore
from emo8.ingest.run import check_batch

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "photos-dev"


def best(step: Callable[[], object], repeats: int, n: int) -> float:
    """CPU milliseconds per image of ``step`` (which handles ``n`` images), best of ``repeats``."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        step()
        times.append(time.process_time() - start)
    return min(times) / n * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=Path, default=PHOTOS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scratch", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    bodies = [p.read_bytes() for p in sorted(args.photos.rglob("*")) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not bodies or imaging._simplejpeg is None:
        raise SystemExit(f"needs JPEGs under {args.photos} and simplejpeg installed")
    n, config, sj = len(bodies), ValidationConfig(), imaging._simplejpeg
    headers = [imaging._plain_jpeg_header(b) for b in bodies]
    if any(h is None for h in headers):
        print(f"{sum(h is None for h in headers)} of {n} photos are not on the fast path")
    sizes = []
    for header in headers:
        w, h = header[:2] if header else (64, 64)
        s = imaging._draft_scale(w, h)
        sizes.append((-(-w // s), -(-h // s)))
    decoded = [
        sj.decode_jpeg(b, "RGB", min_height=h, min_width=w) for b, (w, h) in zip(bodies, sizes, strict=True)
    ]
    images = [Image.frombuffer("RGB", (a.shape[1], a.shape[0]), a, "raw", "RGB", 0, 1) for a in decoded]
    sigs = [im.resize((64, 64), Image.Resampling.BOX) for im in images]
    pixels = [np.frombuffer(s.tobytes(), np.uint8).reshape(64, 64, 3) for s in sigs]
    lumas = [np.rint(p @ imaging._LUMA) for p in pixels]
    digests = [hashlib.sha256(b).hexdigest() for b in bodies]

    def store_all() -> None:
        root = Path(tempfile.mkdtemp(dir=args.scratch, prefix="decode-worker-"))
        try:
            store = ObjectStore(root / "objects", root / "tmp")
            for body, digest in zip(bodies, digests, strict=True):
                store.put(body, "jpeg", digest)
        finally:
            shutil.rmtree(root)

    def batches() -> None:
        root = Path(tempfile.mkdtemp(dir=args.scratch, prefix="decode-worker-"))
        try:
            store = ObjectStore(root / "objects", root / "tmp")
            for i in range(0, n, 16):
                check_batch(list(bodies[i : i + 16]), config, store)
        finally:
            shutil.rmtree(root)

    def pillow_only() -> None:
        imaging._simplejpeg = None
        try:
            for body in bodies:
                inspect_image(body, config)
        finally:
            imaging._simplejpeg = sj

    steps: list[tuple[str, Callable[[], object]]] = [
        ("sha256 of the body", lambda: [hashlib.sha256(b).hexdigest() for b in bodies]),
        ("inspect_image", lambda: [inspect_image(b, config) for b in bodies]),
        ("  segment walk", lambda: [imaging._plain_jpeg_header(b) for b in bodies]),
        (
            "  decode (libjpeg-turbo, DCT-scaled)",
            lambda: [
                sj.decode_jpeg(b, "RGB", min_height=h, min_width=w)
                for b, (w, h) in zip(bodies, sizes, strict=True)
            ],
        ),
        (
            "  to a Pillow image",
            lambda: [
                Image.frombuffer("RGB", s, a, "raw", "RGB", 0, 1) for s, a in zip(sizes, decoded, strict=True)
            ],
        ),
        ("  box resize to 64 x 64", lambda: [im.resize((64, 64), Image.Resampling.BOX) for im in images]),
        (
            "  pixels and luma",
            lambda: [
                np.rint(np.frombuffer(s.tobytes(), np.uint8).reshape(64, 64, 3) @ imaging._LUMA) for s in sigs
            ],
        ),
        ("  pHash and dHash", lambda: [imaging.perceptual_hashes(luma) for luma in lumas]),
        ("  colourfulness", lambda: [imaging.colorfulness(p) for p in pixels]),
        (
            "  pixel hash (32 x 32 box, sha256)",
            lambda: [
                hashlib.sha256(s.resize((32, 32), Image.Resampling.BOX).tobytes()).hexdigest() for s in sigs
            ],
        ),
        ("inspect_image through Pillow alone", pillow_only),
        ("ObjectStore.put, new object", store_all),
        ("check_batch, all of it", batches),
    ]
    print(f"{n} photos, CPU ms per image (best of {args.repeats})")
    for name, step in steps:
        print(f"  {name:40s} {best(step, args.repeats, n):.4f}")


if __name__ == "__main__":
    main()
