"""A real HTTP server on loopback for tests and benchmarks.

:class:`LoopbackServer` runs an aiohttp server on a free ``127.0.0.1`` port (or another loopback address)
in a background thread with its own event loop. Requests are dispatched by exact path through
``server.routes`` (a plain dict, editable while the server runs) and otherwise served from ``directory``
when one is given (404 else). Every request is recorded (method, path, headers, time from ``clock``), and
the server tracks how many requests were in flight at once.

    with LoopbackServer({"/a.jpg": respond(jpeg, content_type="image/jpeg")}) as server:
        fetch(server.url("/a.jpg"))
        assert server.hits("/a.jpg") == 1

Canned handlers (:func:`respond`, :func:`redirect`, :func:`sequence`, :func:`stall`, :func:`endless`,
:func:`reset_after`, :func:`delayed`, :func:`gathered`) build the misbehaving servers that crawl tests need.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import mimetypes
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest
from aiohttp import web
from multidict import CIMultiDict

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = [
    "Handler",
    "LoopbackServer",
    "RecordedRequest",
    "delayed",
    "endless",
    "gathered",
    "http_server",
    "redirect",
    "reset_after",
    "respond",
    "sequence",
    "stall",
]


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server saw it; ``path`` has no query string, ``path_qs`` has it."""

    method: str
    path: str
    path_qs: str
    headers: CIMultiDict[str]
    time: float
    host: str | None


class LoopbackServer:
    """HTTP server on ``host`` (a loopback address) and a free port, running in a daemon thread.

    ``routes`` maps exact request paths to handlers; ``directory`` serves files for the other paths
    (``cache_files`` keeps them in memory after the first read, for benchmarks). Use as a context
    manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        routes: Mapping[str, Handler] | None = None,
        directory: str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        cache_files: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.routes: dict[str, Handler] = dict(routes or {})
        self.directory = Path(directory).resolve() if directory is not None else None
        self.cache_files = cache_files
        self.clock = clock
        self._file_cache: dict[Path, bytes] = {}
        self.host, self.port = host, port
        self.requests: list[RecordedRequest] = []
        self.inflight = 0
        self.max_inflight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- addresses ---------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def url(self, path: str = "/") -> str:
        """Absolute URL of ``path`` on this server."""
        return self.base_url + (path if path.startswith("/") else "/" + path)

    # -- statistics --------------------------------------------------------------------------------------
    def hits(self, path: str) -> int:
        """Number of requests received for ``path`` (query string ignored)."""
        return sum(1 for r in self.requests if r.path == path)

    def reset_stats(self) -> None:
        """Forget recorded requests and the in-flight maximum."""
        self.requests.clear()
        self.max_inflight = self.inflight

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self) -> LoopbackServer:
        """Bind the socket and start serving; returns ``self`` once the server accepts connections."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        loop = self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(loop, sock, ready, errors), name=f"http-{self.port}", daemon=True
        )
        self._thread.start()
        ready.wait(30)
        if errors:
            raise RuntimeError("loopback server failed to start") from errors[0]
        return self

    def stop(self) -> None:
        """Stop serving, cancel running handlers and join the thread."""
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._loop = self._thread = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        ready: threading.Event,
        errors: list[BaseException],
    ) -> None:
        asyncio.set_event_loop(loop)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        try:
            loop.run_until_complete(runner.setup())
            loop.run_until_complete(web.SockSite(runner, sock, backlog=1024).start())
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            loop.close()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            RecordedRequest(
                request.method,
                request.path,
                request.path_qs,
                CIMultiDict(request.headers),
                self.clock(),
                request.host,
            )
        )
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            handler = self.routes.get(request.path)
            if handler is not None:
                return await handler(request)
            if self.directory is not None:
                target = (self.directory / request.path.lstrip("/")).resolve()
                if target.is_file() and target.is_relative_to(self.directory):
                    if not self.cache_files:
                        return web.FileResponse(target)
                    data = self._file_cache.get(target)
                    if data is None:
                        data = self._file_cache[target] = target.read_bytes()
                    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
                    return web.Response(body=data, content_type=ctype)
            return web.Response(status=404, text="not found")
        finally:
            self.inflight -= 1


@pytest.fixture
def http_server() -> Iterator[LoopbackServer]:
    """A running :class:`LoopbackServer` with no routes; tests add them to ``server.routes``."""
    with LoopbackServer() as server:
        yield server


# -- canned handlers -------------------------------------------------------------------------------------
def distinct_jpegs(sample_paths: list[Path], count: int) -> list[bytes]:
    """``count`` JPEGs with distinct bytes made from the sample images (cycled; each pass a higher quality)."""
    from PIL import Image

    out: list[bytes] = []
    for i in range(count):
        image = Image.open(sample_paths[i % len(sample_paths)]).convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=60 + i // len(sample_paths))
        out.append(buffer.getvalue())
    return out


def respond(
    body: bytes | str = b"",
    status: int = 200,
    content_type: str | None = "application/octet-stream",
    headers: Mapping[str, str] | None = None,
) -> Handler:
    """Always answer with this status, body and headers (``content_type=None`` sends no Content-Type)."""
    data = body.encode() if isinstance(body, str) else body

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.Response(body=data, status=status, headers=dict(headers or {}))
        if content_type is not None:
            response.content_type = content_type
        else:
            response.headers.popall("Content-Type", None)
        return response

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    """Answer with a redirect to ``location`` (absolute or relative)."""
    return respond(b"", status=status, content_type=None, headers={"Location": location})


def sequence(*handlers: Handler) -> Handler:
    """Use ``handlers`` one per request, in order; the last one answers every later request."""
    counter = itertools.count()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await handlers[min(next(counter), len(handlers) - 1)](request)

    return handler


def delayed(inner: Handler, seconds: float) -> Handler:
    """Wait ``seconds`` before handing the request to ``inner``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await inner(request)

    return handler


def gathered(count: int, inner: Handler, timeout: float = 10.0) -> Handler:
    """Hold requests until ``count`` of them are waiting, then hand them all to ``inner`` (a reusable barrier).

    Makes concurrency deterministic: ``server.max_inflight`` reaches ``count`` whenever the client allows that
    many requests at once, and exceeds it only when the client sends more. After ``timeout`` seconds without
    the barrier filling (the client allows fewer), the waiting requests are answered anyway.
    """
    barrier: list[asyncio.Barrier] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        if not barrier:  # created on the server's event loop
            barrier.append(asyncio.Barrier(count))
        try:
            await asyncio.wait_for(barrier[0].wait(), timeout)
        except (TimeoutError, asyncio.BrokenBarrierError):
            await barrier[0].abort()
        return await inner(request)

    return handler


def stall(
    seconds: float = 30.0,
    after_headers: bool = False,
    content_type: str = "image/jpeg",
    outcomes: list[str] | None = None,
) -> Handler:
    """Hang for ``seconds``: before sending anything, or after the headers and a first body chunk.

    ``outcomes`` gets ``"cancelled"`` for each request whose client went away during the stall (the handler
    is cancelled), ``"finished"`` for each one that waited the stall out.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            if not after_headers:
                await asyncio.sleep(seconds)
                response: web.StreamResponse = web.Response(body=b"late", content_type=content_type)
            else:
                response = web.StreamResponse(headers={"Content-Type": content_type})
                response.content_length = 1 << 20
                await response.prepare(request)
                await response.write(b"\xff\xd8\xff" + b"\0" * 1021)
                await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            if outcomes is not None:
                outcomes.append("cancelled")
            raise
        if outcomes is not None:
            outcomes.append("finished")
        return response

    return handler


def endless(
    chunk: bytes = b"\0" * 65536,
    content_type: str = "image/jpeg",
    limit: int = 1 << 32,
    sent_log: list[int] | None = None,
) -> Handler:
    """Stream a chunked body that never ends (until ``limit`` bytes, or the client goes away).

    ``sent_log`` gets the number of bytes written before the handler stopped, one entry per request."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = 0
        try:
            while sent < limit:
                await response.write(chunk)
                sent += len(chunk)
        except ConnectionError:
            pass
        finally:
            if sent_log is not None:
                sent_log.append(sent)
        return response

    return handler


def reset_after(
    prefix: bytes = b"\xff\xd8\xff" + b"\0" * 4093,
    declared_length: int = 1 << 20,
    content_type: str = "image/jpeg",
) -> Handler:
    """Promise ``declared_length`` bytes, send ``prefix``, then reset the TCP connection (RST)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = declared_length
        await response.prepare(request)
        await response.write(prefix)
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        raise asyncio.CancelledError  # nothing more can be sent; let aiohttp drop the request quietly

    return handler
