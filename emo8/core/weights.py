"""Pretrained weights from the Hugging Face Hub: use the local cache, or fail within seconds when the Hub is away.

open_clip fetches a pretrained tag with ``hf_hub_download``; without network that call retries for about a minute
(twice: once for the safetensors file, once for the pickle) before it gives up. :func:`open_clip_hub_guard` wraps
such a load: when the weights are in the local cache the load runs in Hugging Face offline mode (no request at all);
when they are not, it probes the Hub with one short TCP connect (or honours ``HF_HUB_OFFLINE=1``) and raises
:class:`WeightsUnavailable` at once when the Hub cannot be reached. Used by ``emo8``'s encoders and UniEmoX's teacher.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

#: Seconds the Hub probe waits for a TCP connection.
PROBE_TIMEOUT = 3.0
_TRUE = {"1", "true", "yes", "on"}


class HubUnavailable(RuntimeError):
    """Something must come from the Hugging Face Hub, and the Hub cannot be reached."""


class WeightsUnavailable(HubUnavailable):
    """Pretrained weights are not in the local cache and the Hub cannot be reached (or offline mode is on)."""


def hub_endpoint() -> str:
    """The Hub URL that downloads use: ``HF_ENDPOINT``, else huggingface_hub's default."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """Whether Hugging Face offline mode is on (``HF_HUB_OFFLINE`` now, or when huggingface_hub was imported)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return env.strip().lower() in _TRUE or bool(constants.HF_HUB_OFFLINE)


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether one TCP connection to the Hub's host and port (or to the HTTP(S) proxy that requests to it would go
    through) opens within ``timeout`` seconds; nothing is sent."""
    parts = urlsplit(endpoint or hub_endpoint())
    if not parts.hostname:
        return False
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname):
        parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if not parts.hostname:
            return False
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_hub(what: str) -> None:
    """Raise :class:`HubUnavailable` at once when ``what`` (e.g. a dataset id) would need an unreachable Hub.

    In offline mode nothing is checked: huggingface_hub and datasets then read their caches (or fail at once).
    """
    if hub_offline():
        return
    endpoint = hub_endpoint()
    if not hub_reachable(endpoint):
        raise HubUnavailable(
            f"{what} must come from the Hugging Face Hub ({endpoint}), which cannot be reached (no connection within "
            f"{PROBE_TIMEOUT:.0f}s); pass a local copy instead, or set HF_HUB_OFFLINE=1 to read the local cache"
        )


def open_clip_cached_weights(arch: str, tag: str) -> str | None:
    """The local file of open_clip's pretrained ``arch``/``tag`` in the Hugging Face cache, or None."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
    if cfg.get("file"):
        return str(cfg["file"]) if Path(cfg["file"]).is_file() else None
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    repo_id, filename = os.path.split(hub)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename and not filename.endswith(".safetensors"):
        names.insert(0, str(Path(filename).with_suffix(".safetensors")))
    cache_dir = os.environ.get("HF_HUB_CACHE") or None
    for name in names:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str):
            return found
    return None


@contextmanager
def hf_offline_mode() -> Iterator[None]:
    """Hugging Face offline mode inside the block: downloads come from the local cache or fail at once."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextmanager
def open_clip_hub_guard(arch: str, pretrained: str | None) -> Iterator[None]:
    """Wrap an open_clip load of ``arch`` with weights ``pretrained`` so that it never waits on an absent Hub.

    ``pretrained`` None (random weights) or a local file: nothing changes. A pretrained tag whose weights are
    cached: the block runs in offline mode. Not cached: :class:`WeightsUnavailable` unless the Hub answers.
    """
    if pretrained is None or Path(pretrained).expanduser().is_file():
        yield
        return
    if open_clip_cached_weights(arch, pretrained) is not None:
        with hf_offline_mode():
            yield
        return
    endpoint = hub_endpoint()
    if hub_offline():
        raise WeightsUnavailable(
            f"the weights {arch}/{pretrained} are not in the local Hugging Face cache and HF_HUB_OFFLINE is set"
        )
    if not hub_reachable(endpoint):
        raise WeightsUnavailable(
            f"the weights {arch}/{pretrained} are not in the local Hugging Face cache and the Hub ({endpoint}) "
            f"cannot be reached (no connection within {PROBE_TIMEOUT:.0f}s)"
        )
    yield
