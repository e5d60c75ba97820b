"""The downloader against a real loopback HTTP server: politeness, retries, limits and the SSRF guard."""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import ipaddress
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiohttp import web
from httpfixtures import (
    Handler,
    LoopbackServer,
    delayed,
    endless,
    gathered,
    redirect,
    reset_after,
    respond,
    sequence,
    stall,
)

from emo8.ingest.download import (
    AddressFilter,
    Clock,
    DownloadConfig,
    FetchRequest,
    FetchResult,
    StaticResolver,
    backoff_delay,
    fetch_all,
    fetch_stream,
    is_public_address,
    is_retryable_reason,
    parse_retry_after,
    parse_url,
)
from emo8.ingest.robots import parse_robots_txt, product_token, x_robots_blocked

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"
UA = "emo8-test/9.9 (+https://example.org/emo8; tests)"
FAST = DownloadConfig(
    user_agent=UA,
    allow_private_networks=True,
    backoff_base=0.01,
    backoff_max=0.05,
    connect_timeout=2.0,
    total_timeout=5.0,
    retries=2,
)


@dataclass
class VirtualClock:
    """A clock for the downloader whose sleeps return at once: time moves only by the amounts slept, and every
    sleep is logged, so a test reads the rate limiter's and the back-off's schedule without waiting for it."""

    now_s: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += max(seconds, 0.0)
        await asyncio.sleep(0)

    def clock(self) -> Clock:
        return Clock(self.now, self.sleep)


@pytest.fixture
def vclock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def server(vclock: VirtualClock) -> Iterator[LoopbackServer]:
    """A loopback server that stamps requests with the virtual clock (meaningful for one request at a time)."""
    with LoopbackServer(clock=vclock.now) as srv:
        yield srv


def fetch_one(
    url: str,
    config: DownloadConfig = FAST,
    resolver: StaticResolver | None = None,
    address_filter: AddressFilter | None = None,
    clock: VirtualClock | None = None,
) -> FetchResult:
    [result] = fetch_all(
        [FetchRequest("k", url)],
        config,
        resolver=resolver,
        address_filter=address_filter,
        clock=clock.clock() if clock else None,
    )
    return result


# -- success and plain HTTP errors ---------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_success_records_metadata(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG, content_type="image/jpeg; charset=binary")
    r = fetch_one(server.url("/a.jpg"))
    assert r.ok and r.data == JPEG
    assert (r.key, r.url, r.final_url) == ("k", server.url("/a.jpg"), server.url("/a.jpg"))
    assert (r.http_status, r.attempts, r.reason, r.error) == (200, 1, None, None)
    assert r.content_type == "image/jpeg"


@pytest.mark.timeout(30)
def test_404_is_not_retried(server: LoopbackServer) -> None:
    server.routes["/missing.jpg"] = respond(b"nope", status=404, content_type="text/plain")
    r = fetch_one(server.url("/missing.jpg"))
    assert not r.ok and r.data is None
    assert (r.reason, r.http_status, r.attempts) == ("http_404", 404, 1)
    assert server.hits("/missing.jpg") == 1


@pytest.mark.timeout(30)
def test_500_then_success(server: LoopbackServer) -> None:
    server.routes["/flaky.jpg"] = sequence(
        respond(b"oops", status=500), respond(JPEG, content_type="image/jpeg")
    )
    r = fetch_one(server.url("/flaky.jpg"))
    assert r.ok and r.data == JPEG
    assert (r.attempts, r.http_status, r.reason, r.error) == (2, 200, None, None)
    assert server.hits("/flaky.jpg") == 2


@pytest.mark.timeout(30)
def test_persistent_503_uses_every_retry(server: LoopbackServer) -> None:
    server.routes["/down.jpg"] = respond(b"", status=503)
    r = fetch_one(server.url("/down.jpg"))
    assert (r.ok, r.reason, r.http_status, r.attempts) == (False, "http_503", 503, FAST.retries + 1)
    assert server.hits("/down.jpg") == FAST.retries + 1


@pytest.mark.timeout(30)
def test_429_waits_for_retry_after_seconds(server: LoopbackServer, vclock: VirtualClock) -> None:
    server.routes["/busy.jpg"] = sequence(
        respond(b"slow down", status=429, headers={"Retry-After": "7"}),
        respond(JPEG, content_type="image/jpeg"),
    )
    r = fetch_one(server.url("/busy.jpg"), replace(FAST, backoff_max=10.0), clock=vclock)
    assert r.ok and r.attempts == 2
    first, second = (q.time for q in server.requests if q.path == "/busy.jpg")
    assert second - first >= 7.0  # on the virtual clock: the retry was scheduled no earlier than asked
    assert max(vclock.sleeps) >= 7.0 and sum(vclock.sleeps) < 7.0 + 2 * FAST.backoff_max


@pytest.mark.timeout(30)
def test_429_waits_for_retry_after_http_date(server: LoopbackServer, vclock: VirtualClock) -> None:
    server.routes["/busy.jpg"] = sequence(
        respond(
            b"", status=429, headers={"Retry-After": email.utils.formatdate(time.time() + 60, usegmt=True)}
        ),
        respond(JPEG, content_type="image/jpeg"),
    )
    r = fetch_one(server.url("/busy.jpg"), replace(FAST, backoff_max=120.0), clock=vclock)
    assert r.ok and r.attempts == 2
    first, second = (q.time for q in server.requests if q.path == "/busy.jpg")
    # the date is 59 to 60 s ahead when sent (whole seconds), minus however long the answer took to parse
    assert 30.0 <= second - first <= 60.0 + 2 * FAST.backoff_max


@pytest.mark.timeout(30)
def test_retry_after_is_capped_by_backoff_max(server: LoopbackServer, vclock: VirtualClock) -> None:
    server.routes["/busy.jpg"] = sequence(
        respond(b"", status=503, headers={"Retry-After": "3600"}), respond(JPEG, content_type="image/jpeg")
    )
    r = fetch_one(server.url("/busy.jpg"), replace(FAST, backoff_max=0.2), clock=vclock)
    assert r.ok and r.attempts == 2
    first, second = (q.time for q in server.requests if q.path == "/busy.jpg")
    assert 0.0 < second - first <= 0.2 + 1e-9  # neither the back-off nor the host pause waited the hour
    assert vclock.sleeps and max(vclock.sleeps) <= 0.2


def test_parse_retry_after() -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after(None) is None


def test_backoff_delay_full_jitter_and_caps() -> None:
    cfg = DownloadConfig(backoff_base=0.5, backoff_max=3.0)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 3.0), (10, 3.0)]:
        delays = [backoff_delay(attempt, cfg) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2 and min(delays) < ceiling / 2  # jittered over the whole range
    assert backoff_delay(1, cfg, retry_after=2.0) >= 2.0
    assert backoff_delay(1, cfg, retry_after=100.0) == 3.0


def test_retryable_reasons() -> None:
    for reason in ("timeout", "connection_error", "http_429", "http_500", "http_503"):
        assert is_retryable_reason(reason)
    for other in ("http_404", "http_403", "http_400", "robots_txt", "too_large", "malformed_url", None):
        assert not is_retryable_reason(other)


# -- broken transfers ----------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_connection_reset_mid_body(server: LoopbackServer) -> None:
    server.routes["/reset.jpg"] = reset_after()
    r = fetch_one(server.url("/reset.jpg"))
    assert (r.ok, r.reason, r.attempts) == (False, "connection_error", FAST.retries + 1)
    assert r.data is None and r.error
    assert server.hits("/reset.jpg") == FAST.retries + 1


@pytest.mark.timeout(30)
def test_connection_reset_then_success(server: LoopbackServer) -> None:
    server.routes["/reset.jpg"] = sequence(reset_after(), respond(JPEG, content_type="image/jpeg"))
    r = fetch_one(server.url("/reset.jpg"))
    assert r.ok and r.data == JPEG and r.attempts == 2


@pytest.mark.timeout(30)
def test_endless_body_is_cut_at_max_bytes(server: LoopbackServer) -> None:
    sent: list[int] = []
    server.routes["/endless.jpg"] = endless(limit=512 << 20, sent_log=sent)
    r = fetch_one(server.url("/endless.jpg"), replace(FAST, max_bytes=256 * 1024))
    assert (r.ok, r.reason, r.attempts, r.http_status) == (False, "too_large", 1, 200)
    assert r.data is None
    for _ in range(500):  # the handler notices the closed connection on its next write
        if sent:
            break
        time.sleep(0.01)
    # the client hung up: the server stopped well short of its own limit (socket buffers hold a few MiB)
    assert len(sent) == 1 and sent[0] < 64 << 20, sent


@pytest.mark.timeout(30)
def test_declared_length_over_max_bytes_is_refused_unread(server: LoopbackServer) -> None:
    server.routes["/big.jpg"] = respond(b"\0" * 300_000, content_type="image/jpeg")
    r = fetch_one(server.url("/big.jpg"), replace(FAST, max_bytes=100_000))
    assert (r.ok, r.reason, r.attempts, r.content_type) == (False, "too_large", 1, "image/jpeg")
    assert "Content-Length" in (r.error or "")


@pytest.mark.timeout(30)
def test_compressed_bodies_are_decoded_and_capped_after_decoding(server: LoopbackServer) -> None:
    headers = {"Content-Encoding": "gzip"}
    server.routes["/small.jpg"] = respond(gzip.compress(JPEG), content_type="image/jpeg", headers=headers)
    server.routes["/bomb.jpg"] = respond(
        gzip.compress(bytes(20_000_000)), content_type="image/jpeg", headers=headers
    )
    small, bomb = fetch_all(
        [FetchRequest("s", server.url("/small.jpg")), FetchRequest("b", server.url("/bomb.jpg"))],
        replace(FAST, max_bytes=1_000_000),
    )
    assert small.ok and small.data == JPEG
    assert (bomb.ok, bomb.reason, bomb.attempts) == (False, "too_large", 1)


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll until ``condition()`` holds (what a server thread records lands a moment after the client is done)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.mark.timeout(30)
def test_stalled_server_times_out(server: LoopbackServer) -> None:
    outcomes: list[str] = []
    server.routes["/stall.jpg"] = stall(3600, outcomes=outcomes)
    r = fetch_one(server.url("/stall.jpg"), replace(FAST, total_timeout=0.5, retries=1))
    assert (r.ok, r.reason, r.attempts, r.http_status) == (False, "timeout", 2, None)
    assert "total_timeout=0.5s" in (r.error or "")
    _wait_for(lambda: len(outcomes) == 2)
    assert outcomes == ["cancelled", "cancelled"]  # the client gave up on both attempts mid-stall


@pytest.mark.timeout(30)
def test_stall_mid_body_times_out(server: LoopbackServer) -> None:
    outcomes: list[str] = []
    server.routes["/stall.jpg"] = stall(3600, after_headers=True, outcomes=outcomes)
    r = fetch_one(server.url("/stall.jpg"), replace(FAST, total_timeout=0.5, retries=0))
    assert (r.ok, r.reason, r.attempts, r.http_status) == (False, "timeout", 1, 200)
    assert "total_timeout=0.5s" in (r.error or "")
    _wait_for(lambda: len(outcomes) == 1)
    assert outcomes == ["cancelled"]


@pytest.mark.timeout(30)
def test_connection_refused_is_retried() -> None:
    with socket.socket() as sock:  # a port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = fetch_one(f"http://127.0.0.1:{port}/x.jpg", replace(FAST, respect_robots_txt=False))
    assert (r.ok, r.reason, r.attempts) == (False, "connection_error", FAST.retries + 1)


@pytest.mark.timeout(30)
def test_unreachable_host_reports_the_network_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = fetch_one(f"http://127.0.0.1:{port}/x.jpg")  # the robots.txt fetch already fails (and is retried)
    assert (r.ok, r.reason, r.attempts) == (False, "connection_error", 0)
    assert (r.error or "").startswith("robots.txt: ")


@pytest.mark.timeout(30)
def test_empty_body(server: LoopbackServer) -> None:
    server.routes["/empty.jpg"] = respond(b"", content_type="image/jpeg")
    server.routes["/204"] = respond(b"", status=204, content_type=None)
    a, b = fetch_all(
        [FetchRequest("a", server.url("/empty.jpg")), FetchRequest("b", server.url("/204"))], FAST
    )
    assert (a.ok, a.reason, a.http_status, a.attempts) == (False, "empty_body", 200, 1)
    assert (b.ok, b.reason, b.http_status) == (False, "empty_body", 204)


# -- redirects -----------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_redirect_chain_is_followed(server: LoopbackServer) -> None:
    server.routes["/r1"] = redirect("/r2", status=301)
    server.routes["/r2"] = redirect(server.url("/img.jpg?x=1"), status=307)
    server.routes["/img.jpg"] = respond(JPEG, content_type="image/jpeg")
    r = fetch_one(server.url("/r1"))
    assert r.ok and r.data == JPEG and r.attempts == 1
    assert r.final_url == server.url("/img.jpg?x=1")


@pytest.mark.timeout(30)
def test_redirect_loop(server: LoopbackServer) -> None:
    server.routes["/a"] = redirect("/b")
    server.routes["/b"] = redirect("/a")
    r = fetch_one(server.url("/a"))
    assert (r.ok, r.reason, r.http_status, r.attempts) == (False, "too_many_redirects", 302, 1)
    assert server.hits("/a") == 1 and server.hits("/b") == 1  # detected, not run round max_redirects times


@pytest.mark.timeout(30)
def test_too_many_redirects(server: LoopbackServer) -> None:
    for i in range(10):
        server.routes[f"/hop{i}"] = redirect(f"/hop{i + 1}")
    r = fetch_one(server.url("/hop0"), replace(FAST, max_redirects=3))
    assert (r.ok, r.reason) == (False, "too_many_redirects")
    assert [server.hits(f"/hop{i}") for i in range(6)] == [1, 1, 1, 1, 0, 0]


@pytest.mark.timeout(30)
def test_redirect_to_other_scheme_is_refused(server: LoopbackServer) -> None:
    server.routes["/ftp"] = redirect("ftp://example.org/file.jpg")
    r = fetch_one(server.url("/ftp"))
    assert (r.ok, r.reason, r.http_status) == (False, "malformed_url", 302)


# -- SSRF guard ----------------------------------------------------------------------------------------
PUBLIC_FOR_TEST = ipaddress.ip_address("127.0.0.1")


def loopback_one_is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """SSRF policy for the tests: 127.0.0.1 plays a public host, every other address is judged normally."""
    return ip == PUBLIC_FOR_TEST or is_public_address(ip)


@pytest.fixture
def intranet() -> Iterator[LoopbackServer]:
    """A 'private' server on 127.0.0.2 holding a secret."""
    with LoopbackServer({"/secret": respond(b"secret", content_type="image/jpeg")}, host="127.0.0.2") as srv:
        yield srv


GUARDED = replace(FAST, allow_private_networks=False)


@pytest.mark.timeout(30)
def test_guard_refuses_loopback_by_default(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG)
    for url in (server.url("/a.jpg"), f"http://localhost:{server.port}/a.jpg"):
        r = fetch_one(url, GUARDED)
        assert (r.ok, r.reason, r.attempts) == (False, "private_address", 0), url
    assert server.requests == []  # neither the page nor robots.txt was requested


@pytest.mark.timeout(30)
def test_guard_lets_public_hosts_through(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG)
    resolver = StaticResolver({"public.test": ["127.0.0.1"]})
    r = fetch_one(f"http://public.test:{server.port}/a.jpg", GUARDED, resolver=resolver,
                  address_filter=loopback_one_is_public)  # fmt: skip
    assert r.ok and r.data == JPEG


@pytest.mark.timeout(30)
def test_redirect_to_private_ip_literal_is_refused(server: LoopbackServer, intranet: LoopbackServer) -> None:
    server.routes["/go"] = redirect(intranet.url("/secret"))
    r = fetch_one(server.url("/go"), GUARDED, address_filter=loopback_one_is_public)
    assert (r.ok, r.reason, r.http_status, r.final_url) == (False, "private_address", 302, server.url("/go"))
    assert intranet.requests == []


@pytest.mark.timeout(30)
def test_redirect_to_hostname_resolving_private_is_refused(
    server: LoopbackServer, intranet: LoopbackServer
) -> None:
    server.routes["/go"] = redirect(f"http://intranet.test:{intranet.port}/secret")
    resolver = StaticResolver({"intranet.test": ["127.0.0.2"]})
    r = fetch_one(server.url("/go"), GUARDED, resolver=resolver, address_filter=loopback_one_is_public)
    assert (r.ok, r.reason, r.http_status) == (False, "private_address", 302)
    assert "127.0.0.2" in (r.error or "")
    assert intranet.requests == []


@pytest.mark.timeout(30)
def test_guard_connects_only_to_the_checked_address(server: LoopbackServer) -> None:
    # The name resolves to a private and a public address: only the public one may be dialled.
    with LoopbackServer({"/a.jpg": respond(b"private!")}, host="127.0.0.2", port=server.port) as private:
        server.routes["/a.jpg"] = respond(JPEG)
        resolver = StaticResolver({"mixed.test": ["127.0.0.2", "127.0.0.1"]})
        r = fetch_one(f"http://mixed.test:{server.port}/a.jpg", GUARDED, resolver=resolver,
                      address_filter=loopback_one_is_public)  # fmt: skip
        assert r.ok and r.data == JPEG
        assert private.requests == []


@pytest.mark.timeout(30)
def test_dns_failure() -> None:
    r = fetch_one("http://nowhere.test/a.jpg", GUARDED, resolver=StaticResolver({}))
    assert (r.ok, r.reason, r.attempts) == (False, "dns_error", 0)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
        "224.0.0.1", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
        "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
        "::ffff:169.254.169.254", "2002:7f00:1::1", "64:ff9b::a00:1", "2001:db8::1", "100::1",
    ],
)  # fmt: skip
def test_non_public_addresses(address: str) -> None:
    assert not is_public_address(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert is_public_address(ipaddress.ip_address(address))


# -- URLs ----------------------------------------------------------------------------------------------
MALFORMED = [
    "",
    "not a url",
    "ftp://example.org/a.jpg",
    "javascript:alert(1)",
    "file:///etc/passwd",
    "http://",
    "http://[::1",
    "http://exa mple.com/a.jpg",
    "http://example.com:99999/a.jpg",
    "http://a..b/a.jpg",
    "http://2130706433/",
    "http://127.1/",
    "//example.org/a.jpg",
]


@pytest.mark.timeout(30)
def test_malformed_urls() -> None:
    results = fetch_all([FetchRequest(str(i), u) for i, u in enumerate(MALFORMED)], FAST)
    assert [r.key for r in results] == [str(i) for i in range(len(MALFORMED))]
    for r in results:
        assert (r.ok, r.reason, r.attempts, r.final_url) == (False, "malformed_url", 0, None), r.url
        assert r.error


def test_parse_url_normalises() -> None:
    assert str(parse_url("  HTTP://Example.ORG/a b.jpg#frag ")) == "http://example.org/a%20b.jpg"
    assert str(parse_url("https://bücher.example/ä.jpg")) == "https://xn--bcher-kva.example/%C3%A4.jpg"
    with pytest.raises(ValueError):
        parse_url("mailto:someone@example.org")


# -- robots.txt ------------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_robots_txt_disallowing_the_path(server: LoopbackServer) -> None:
    server.routes["/robots.txt"] = respond(
        "User-agent: *\nDisallow: /\n\nUser-agent: emo8-test\nDisallow: /private/\nAllow: /private/ok\n",
        content_type="text/plain",
    )
    for path in ("/private/a.jpg", "/private/ok.jpg", "/public/a.jpg"):
        server.routes[path] = respond(JPEG)
    bad, ok1, ok2 = fetch_all(
        [FetchRequest(p, server.url(p)) for p in ("/private/a.jpg", "/private/ok.jpg", "/public/a.jpg")], FAST
    )
    assert (bad.ok, bad.reason, bad.attempts, bad.http_status) == (False, "robots_txt", 0, None)
    assert ok1.ok and ok2.ok
    assert server.hits("/private/a.jpg") == 0
    assert server.hits("/robots.txt") == 1


@pytest.mark.timeout(30)
def test_robots_txt_fetched_once_per_host_under_concurrency(server: LoopbackServer) -> None:
    server.routes["/robots.txt"] = delayed(
        respond("User-agent: *\nAllow: /\n", content_type="text/plain"), 0.3
    )
    server.routes["/a.jpg"] = respond(JPEG)
    results = fetch_all([FetchRequest(str(i), server.url(f"/a.jpg?i={i}")) for i in range(40)], FAST)
    assert all(r.ok for r in results)
    assert server.hits("/robots.txt") == 1
    assert server.hits("/a.jpg") == 40


@pytest.mark.timeout(30)
def test_robots_txt_is_fetched_again_after_a_day(server: LoopbackServer, vclock: VirtualClock) -> None:
    server.routes["/robots.txt"] = respond("User-agent: *\nAllow: /\n", content_type="text/plain")
    # the retry waits 25 hours (virtual): the cached robots.txt is stale by then (RFC 9309: at most 24 h)
    server.routes["/a.jpg"] = sequence(
        respond(b"", status=503, headers={"Retry-After": str(25 * 3600)}), respond(JPEG)
    )
    r = fetch_one(server.url("/a.jpg"), replace(FAST, backoff_max=30 * 3600.0), clock=vclock)
    assert r.ok and r.attempts == 2
    assert [q.path for q in server.requests] == ["/robots.txt", "/a.jpg", "/robots.txt", "/a.jpg"]
    again = sequence(respond(b"", status=503, headers={"Retry-After": str(23 * 3600)}), respond(JPEG))
    server.routes["/b.jpg"] = again
    server.reset_stats()
    assert fetch_one(server.url("/b.jpg"), replace(FAST, backoff_max=30 * 3600.0), clock=vclock).ok
    assert [q.path for q in server.requests] == ["/robots.txt", "/b.jpg", "/b.jpg"]  # 23 h: still fresh


@pytest.mark.timeout(30)
def test_robots_txt_missing_allows_all(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG)  # /robots.txt is a 404
    assert fetch_one(server.url("/a.jpg")).ok
    assert server.hits("/robots.txt") == 1


@pytest.mark.timeout(30)
def test_robots_txt_server_error_means_disallow(server: LoopbackServer) -> None:
    server.routes["/robots.txt"] = respond(b"", status=503)
    server.routes["/a.jpg"] = respond(JPEG)
    r = fetch_one(server.url("/a.jpg"))
    assert (r.ok, r.reason, r.attempts) == (False, "robots_txt", 0)
    assert "503" in (r.error or "")
    assert server.hits("/a.jpg") == 0
    assert server.hits("/robots.txt") == FAST.retries + 1


@pytest.mark.timeout(30)
def test_robots_txt_can_be_switched_off(server: LoopbackServer) -> None:
    server.routes["/robots.txt"] = respond("User-agent: *\nDisallow: /\n", content_type="text/plain")
    server.routes["/a.jpg"] = respond(JPEG)
    assert fetch_one(server.url("/a.jpg"), replace(FAST, respect_robots_txt=False)).ok
    assert server.hits("/robots.txt") == 0


@pytest.mark.timeout(30)
def test_redirect_into_robots_disallowed_area(server: LoopbackServer) -> None:
    server.routes["/robots.txt"] = respond("User-agent: *\nDisallow: /nope/\n", content_type="text/plain")
    server.routes["/go"] = redirect("/nope/a.jpg")
    server.routes["/nope/a.jpg"] = respond(JPEG)
    r = fetch_one(server.url("/go"))
    assert (r.ok, r.reason, r.http_status) == (False, "robots_txt", 302)
    assert server.hits("/nope/a.jpg") == 0


ROBOTS = """\
# comment
User-agent: googlebot
Disallow: /

user-agent: EMO8
user-agent: otherbot
disallow: /images/
allow: /images/public/
disallow: /*.gif$
disallow: /tmp
allow: /tmp$
Sitemap: https://example.org/sitemap.xml

User-Agent: *
Disallow: /everything-for-others

User-agent: emo8
Disallow: /merged
Disallow: /%7Efoo/
Disallow: /caf%c3%a9
"""


def test_robots_parser_rfc9309() -> None:
    rules = parse_robots_txt(ROBOTS.encode(), "emo8/0.1 (+https://github.com/emo8/emo8)")
    assert rules.allowed("/")
    assert not rules.allowed("/images/a.jpg")
    assert rules.allowed("/images/public/a.jpg")  # longer allow wins
    assert not rules.allowed("/pics/a.gif")
    assert rules.allowed("/pics/a.gif?x=1")  # $ anchors the end
    assert rules.allowed("/tmp") and not rules.allowed("/tmp/a.jpg")  # equal length: allow wins
    assert not rules.allowed("/merged/x")  # groups for the same agent are merged
    assert rules.allowed("/everything-for-others")  # the * group does not apply to us
    assert not rules.allowed("/~foo/a.jpg")  # %7E and ~ are the same
    assert not rules.allowed("/café/a.jpg") and not rules.allowed("/caf%C3%A9/a.jpg")
    assert rules.allowed("/robots.txt")

    others = parse_robots_txt(ROBOTS, "somebot/1.0")
    assert not others.allowed("/everything-for-others/a.jpg") and others.allowed("/images/a.jpg")
    assert parse_robots_txt(b"", "emo8").allowed("/x")
    assert parse_robots_txt(b"Disallow: /\n", "emo8").allowed("/x")  # rules outside any group
    assert not parse_robots_txt(b"\xef\xbb\xbfUser-agent: *\r\nDisallow: /\r\n", "emo8").allowed("/x")
    assert product_token("Emo8/0.1 (+https://x)") == "emo8"


# -- X-Robots-Tag ----------------------------------------------------------------------------------------
@pytest.mark.timeout(30)
@pytest.mark.parametrize("header", ["noai", "noindex, nofollow", "emo8-test: noimageai", "none"])
def test_x_robots_tag_blocks(server: LoopbackServer, header: str) -> None:
    server.routes["/a.jpg"] = respond(JPEG, content_type="image/jpeg", headers={"X-Robots-Tag": header})
    r = fetch_one(server.url("/a.jpg"))
    assert (r.ok, r.reason, r.http_status, r.attempts, r.data) == (False, "x_robots_tag", 200, 1, None)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "header", ["otherbot: noai", "nofollow", "unavailable_after: 25 Jun 2010 15:00:00 PST"]
)
def test_x_robots_tag_not_for_us(server: LoopbackServer, header: str) -> None:
    server.routes["/a.jpg"] = respond(JPEG, content_type="image/jpeg", headers={"X-Robots-Tag": header})
    assert fetch_one(server.url("/a.jpg")).ok


@pytest.mark.timeout(30)
def test_x_robots_tag_can_be_switched_off(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG, headers={"X-Robots-Tag": "noai"})
    assert fetch_one(server.url("/a.jpg"), replace(FAST, respect_x_robots_tag=False)).ok


def test_x_robots_parser() -> None:
    ua = "emo8/0.1"
    assert x_robots_blocked(["noai"], ua) == "noai"
    assert x_robots_blocked(["NoImageIndex"], ua) == "noimageindex"
    assert x_robots_blocked(["emo8: noai, noindex"], ua) == "noai"
    assert x_robots_blocked(["otherbot: noai, noindex"], ua) is None
    assert x_robots_blocked(["otherbot: noai", "emo8: noimageai"], ua) == "noimageai"
    assert x_robots_blocked(["otherbot: noai, emo8: noindex"], ua) == "noindex"
    assert x_robots_blocked(["max-image-preview: large, nofollow"], ua) is None
    assert x_robots_blocked(["unavailable_after: 25 Jun 2010 15:00:00 PST"], ua) is None
    assert x_robots_blocked([], ua) is None


# -- batches, limits, identity -------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_duplicate_urls_all_returned(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG)
    reqs = [FetchRequest("x", server.url("/a.jpg")), FetchRequest("y", server.url("/a.jpg")),
            FetchRequest("x", server.url("/a.jpg"))]  # fmt: skip
    results = fetch_all(reqs, FAST)
    assert [r.key for r in results] == ["x", "y", "x"]
    assert all(r.ok and r.data == JPEG for r in results)
    assert server.hits("/a.jpg") == 3


@pytest.mark.timeout(60)
def test_per_host_concurrency_limit(server: LoopbackServer) -> None:
    # requests are held until 3 wait together: the limit is reached every round, and a 4th would show
    server.routes["/slow.jpg"] = gathered(3, respond(JPEG))
    cfg = replace(FAST, per_host_concurrency=3, max_concurrency=20)
    results = fetch_all([FetchRequest(str(i), server.url("/slow.jpg")) for i in range(15)], cfg)
    assert all(r.ok for r in results)
    assert server.max_inflight == 3


@pytest.mark.timeout(60)
def test_global_concurrency_limit(server: LoopbackServer) -> None:
    server.routes["/slow.jpg"] = gathered(5, respond(JPEG))
    resolver = StaticResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    cfg = replace(FAST, per_host_concurrency=4, max_concurrency=5)
    reqs = [FetchRequest(str(i), f"http://{h}.test:{server.port}/slow.jpg") for i in range(10) for h in "ab"]
    results = fetch_all(reqs, cfg, resolver=resolver)
    assert all(r.ok for r in results)
    assert server.max_inflight == 5  # more than one host's 4: both hosts ran at once, never above 5


@pytest.mark.timeout(30)
def test_per_host_rate_limit(server: LoopbackServer, vclock: VirtualClock) -> None:
    server.routes["/a.jpg"] = respond(JPEG)
    cfg = replace(FAST, per_host_rate=10.0)
    reqs = [FetchRequest(str(i), server.url("/a.jpg")) for i in range(6)]
    results = fetch_all(reqs, cfg, clock=vclock.clock())
    assert all(r.ok for r in results)
    assert len(server.requests) == 7  # robots.txt counts against the rate too
    # the limiter's own schedule: each of the 6 later starts waited one interval (0.1 s) after the previous
    assert vclock.sleeps == pytest.approx([0.1] * 6)
    assert vclock.now() == pytest.approx(1000.0 + 0.6)


@pytest.mark.timeout(30)
def test_user_agent_is_sent_everywhere(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG)
    assert fetch_one(server.url("/a.jpg")).ok
    assert {q.path for q in server.requests} == {"/robots.txt", "/a.jpg"}
    assert all(q.headers["User-Agent"] == UA for q in server.requests)
    default = DownloadConfig().user_agent
    assert fetch_one(server.url("/a.jpg"), replace(FAST, user_agent=default)).ok
    assert server.requests[-1].headers["User-Agent"] == default


def _after(event: threading.Event, inner: Handler, timeout: float = 10.0) -> Handler:
    """Answer only once ``event`` is set (or after ``timeout`` seconds, so that a wrong order fails, not hangs)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        deadline = time.monotonic() + timeout
        while not event.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return await inner(request)

    return handler


@pytest.mark.timeout(60)
def test_results_in_input_order_and_stream_in_completion_order(server: LoopbackServer) -> None:
    fast_seen = threading.Event()
    server.routes["/slow.jpg"] = _after(fast_seen, respond(b"slow"))
    server.routes["/fast.jpg"] = respond(b"fast")
    reqs = [FetchRequest("slow", server.url("/slow.jpg")), FetchRequest("fast", server.url("/fast.jpg"))]
    fast_seen.set()
    assert [r.key for r in fetch_all(reqs, FAST)] == ["slow", "fast"]

    async def streamed() -> list[str]:
        keys = []
        async for r in fetch_stream(reqs, FAST):
            keys.append(r.key)
            fast_seen.set()  # "slow" is answered only after the stream has handed out a first result
        return keys

    fast_seen.clear()
    assert asyncio.run(streamed()) == ["fast", "slow"]


@pytest.mark.timeout(30)
def test_stream_consumes_input_lazily(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG)
    taken = 0

    def endless_requests() -> Iterator[FetchRequest]:
        nonlocal taken
        while True:
            taken += 1
            yield FetchRequest(str(taken), server.url("/a.jpg"))

    cfg = replace(FAST, max_concurrency=4)

    async def first_ten() -> int:
        got = 0
        stream = fetch_stream(endless_requests(), cfg)
        async for r in stream:
            assert r.ok
            got += 1
            if got == 10:
                break
        await stream.aclose()
        return got

    assert asyncio.run(first_ten()) == 10
    assert taken <= 10 + 2 * cfg.max_concurrency + 1


@pytest.mark.timeout(30)
def test_stream_accepts_async_iterables(server: LoopbackServer) -> None:
    server.routes["/a.jpg"] = respond(JPEG)

    async def source() -> AsyncIterator[FetchRequest]:
        for i in range(5):
            await asyncio.sleep(0)
            yield FetchRequest(str(i), server.url("/a.jpg"))

    async def run() -> list[FetchResult]:
        return [r async for r in fetch_stream(source(), FAST)]

    results = asyncio.run(run())
    assert sorted(r.key for r in results) == ["0", "1", "2", "3", "4"]
    assert all(r.ok for r in results)


@pytest.mark.timeout(30)
def test_serves_a_directory(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jpg").write_bytes(JPEG)
    for cache in (False, True):
        with LoopbackServer(directory=tmp_path, cache_files=cache) as srv:
            reqs = [FetchRequest("a", srv.url("/sub/a.jpg")), FetchRequest("b", srv.url("/nope.jpg"))]
            ok, missing = fetch_all(reqs, FAST)
        assert ok.ok and ok.data == JPEG and ok.content_type == "image/jpeg"
        assert missing.reason == "http_404"
