"""Pretrained weights offline: fail within seconds with the one good message, never wait on an absent Hub."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants  # noqa: F401  (before a test sets HF_HUB_OFFLINE: it is read once, at import)
import pytest

from emo8.core.weights import WeightsUnavailable, hub_reachable, open_clip_cached_weights, open_clip_hub_guard
from emo8.embed.encoders import EncoderSpec, WeightsError, load_encoder

KEY = "open_clip:ViT-B-32/laion2b_s34b_b79k"


class CountingServer:
    """A loopback TCP server that counts the connections it accepts and closes each at once."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        if self.stop.is_set():
            return
        self.stop.set()
        self.thread.join()
        self.sock.close()


@pytest.fixture
def hub() -> Iterator[CountingServer]:
    server = CountingServer()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def test_offline_mode_fails_without_a_single_connection(
    hub: CountingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as caught:
        load_encoder(EncoderSpec(KEY, device="cpu"))
    message = str(caught.value)
    assert "HF_HUB_OFFLINE" in message and "--weights PATH" in message
    hub.close()  # joins the thread that counts
    assert hub.connections == 0


def test_unreachable_hub_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    with pytest.raises(WeightsError) as caught:
        load_encoder(EncoderSpec(KEY, device="cpu"))
    message = str(caught.value)
    assert f"the Hub ({endpoint}) cannot be reached" in message, message[:300]
    assert message.count("cannot load weights") == 1  # one message, no repeated retries or warnings


def test_the_probe_opens_exactly_one_connection(hub: CountingServer) -> None:
    url = hub.url
    assert hub_reachable(url)
    hub.close()
    assert hub.connections == 1
    assert not hub_reachable(url)


def test_cached_weights_load_in_offline_mode(
    empty_cache: Path, hub: CountingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weights in the cache: no probe, no request; the load runs with Hugging Face offline mode on."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    repo = empty_cache / "models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "open_clip_model.safetensors").write_bytes(b"not really weights")
    assert open_clip_cached_weights("ViT-B-32", "laion2b_s34b_b79k") == str(
        snapshot / "open_clip_model.safetensors"
    )
    before = constants.is_offline_mode()
    with open_clip_hub_guard("ViT-B-32", "laion2b_s34b_b79k"):
        assert constants.is_offline_mode()
    assert constants.is_offline_mode() == before
    hub.close()  # joins the thread that counts
    assert hub.connections == 0


def test_local_files_and_random_weights_are_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"x")
    for pretrained in (None, str(weights)):
        with open_clip_hub_guard("ViT-B-32", pretrained):
            pass
    with pytest.raises(WeightsUnavailable), open_clip_hub_guard("ViT-B-32", "laion2b_s34b_b79k"):
        pass


def _closed_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_hub_datasets_fail_at_once_when_the_hub_is_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Hub id for `emo8 ingest hf` or `uniemox pretrain --data`: one paragraph within seconds, not retries."""
    from typer.testing import CliRunner

    from emo8 import Workspace
    from emo8.cli import app
    from uniemox.cli import app as uniemox_app

    endpoint = _closed_endpoint()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    ws = Workspace.init(tmp_path / "ws")
    result = CliRunner().invoke(app, ["ingest", "hf", "someone/emotions", "-w", str(ws.root), "-q"])
    assert result.exit_code == 2 and f"Hugging Face Hub ({endpoint})" in result.output
    assert "HF_HUB_OFFLINE=1" in result.output and "Traceback" not in result.output
    out = tmp_path / "run"
    result = CliRunner().invoke(uniemox_app, ["pretrain", "--data", "someone/emotions", "--out", str(out)])
    assert result.exit_code == 2 and f"Hugging Face Hub ({endpoint})" in result.output
    assert not out.exists()


def test_the_probe_goes_through_the_proxy_requests_would_use(
    hub: CountingServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind a proxy the Hub host itself may be unreachable directly: the proxy is what must answer."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", hub.url)
    assert hub_reachable("https://hub.invalid")
    hub.close()  # joins the thread that counts
    assert hub.connections == 1
    monkeypatch.setenv("NO_PROXY", "hub.invalid")
    assert not hub_reachable("https://hub.invalid")  # bypassed: a direct connection, and no such host
