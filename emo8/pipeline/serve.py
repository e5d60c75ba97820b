"""The ``serve:`` servers of a pipeline: loopback static file servers that run while a build runs."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

from emo8.pipeline.spec import ServeSpec

__all__ = ["ServeError", "serving"]


class ServeError(RuntimeError):
    """A ``serve:`` server could not start (its port is taken)."""


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def _serve_one(spec: ServeSpec) -> Iterator[str]:
    handler = functools.partial(_QuietHandler, directory=str(spec.directory))
    try:
        server = ThreadingHTTPServer(("127.0.0.1", spec.port), handler)
    except OSError as exc:
        raise ServeError(
            f"serve.{spec.name}: cannot serve {spec.directory} on 127.0.0.1:{spec.port} ({exc.strerror or exc}); "
            "another program (or another build) uses that port: stop it, or change `port:` in the pipeline file"
        ) from exc
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"emo8-serve-{spec.name}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{spec.port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@contextmanager
def serving(specs: tuple[ServeSpec, ...]) -> Iterator[dict[str, str]]:
    """Run every server in ``specs`` for the duration of the block; yield ``name -> base URL``."""
    with ExitStack() as stack:
        yield {spec.name: stack.enter_context(_serve_one(spec)) for spec in specs}
