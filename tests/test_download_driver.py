"""The downloader's per-request bookkeeping: the robots.txt verdict cache (reused without a fetch while fresh,
asked again once stale, one entry per origin), the precedence of robots.txt rules, and the event loop it runs on."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Iterator

import pytest
from httpfixtures import LoopbackServer, respond, sequence
from test_download import FAST, JPEG, VirtualClock

from emo8.ingest.download import (
    FetchRequest,
    FetchResult,
    _Fetcher,
    fetch_all,
    run_event_loop,
)
from emo8.ingest.robots import RobotsRules, parse_robots_txt


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as srv:
        yield srv


def _fetch_in_steps(urls: list[str], steps: list[float], clock: VirtualClock) -> list[FetchResult]:
    """Fetch ``urls`` one after the other with one downloader (one robots.txt cache, as in one batch); after
    request ``i`` the clock moves on by ``steps[i]`` seconds."""

    async def scenario() -> list[FetchResult]:
        results = []
        async with _Fetcher(FAST, None, None, clock.clock()) as fetcher:
            for i, url in enumerate(urls):
                results.append(await fetcher.fetch(FetchRequest(str(i), url)))
                clock.now_s += steps[i] if i < len(steps) else 0.0
        return results

    return run_event_loop(scenario())


@pytest.mark.timeout(30)
def test_unreachable_robots_txt_is_reused_while_fresh_and_asked_again_after_ten_minutes(
    server: LoopbackServer,
) -> None:
    attempts = FAST.retries + 1
    unreachable = [respond(b"", status=503)] * attempts
    server.routes["/robots.txt"] = sequence(*unreachable, respond("User-agent: *\nAllow: /\n"))
    server.routes["/a.jpg"] = respond(JPEG, content_type="image/jpeg")
    url = server.url("/a.jpg")
    first, cached, fresh = _fetch_in_steps([url, url, url], [5 * 60.0, 6 * 60.0], VirtualClock())
    assert (first.reason, cached.reason) == ("robots_txt", "robots_txt")  # 5 min later: the cached verdict
    assert fresh.ok and fresh.data == JPEG  # 11 min after the failure: robots.txt was asked again
    assert server.hits("/robots.txt") == attempts + 1
    assert server.hits("/a.jpg") == 1


@pytest.mark.timeout(30)
def test_fetched_robots_txt_is_reused_for_a_day_without_a_request(server: LoopbackServer) -> None:
    server.routes["/robots.txt"] = respond("User-agent: *\nDisallow: /private/\n")
    server.routes["/a.jpg"] = respond(JPEG, content_type="image/jpeg")
    urls = [server.url("/a.jpg"), server.url("/private/b.jpg"), server.url("/a.jpg"), server.url("/a.jpg")]
    results = _fetch_in_steps(urls, [60.0, 23 * 3600.0, 2 * 3600.0], VirtualClock())
    assert [r.ok for r in results] == [True, False, True, True]
    assert results[1].reason == "robots_txt" and results[1].attempts == 0
    assert server.hits("/robots.txt") == 2  # at the start, then again once a day had passed
    assert server.hits("/private/b.jpg") == 0


@pytest.mark.timeout(30)
def test_robots_txt_is_one_per_origin_whatever_the_spelling(server: LoopbackServer) -> None:
    server.routes["/robots.txt"] = respond("User-agent: *\nDisallow: /x/\n")
    with LoopbackServer({"/robots.txt": respond(b"", status=404)}) as other:  # same host, another port
        for srv in (server, other):
            for path in ("/x/a.jpg", "/y.jpg"):
                srv.routes[path] = respond(JPEG, content_type="image/jpeg")
        shouting = server.url("/x/a.jpg").replace("http://", "HTTP://")
        urls = [server.url("/x/a.jpg"), shouting, server.url("/y.jpg"), other.url("/x/a.jpg")]
        results = fetch_all([FetchRequest(str(i), url) for i, url in enumerate(urls)], FAST)
        assert [r.reason for r in results] == ["robots_txt", "robots_txt", None, None]
        assert results[1].error == results[0].error == f"disallowed by {server.base_url}/robots.txt"
        assert server.hits("/robots.txt") == 1 and other.hits("/robots.txt") == 1
        assert server.hits("/x/a.jpg") == 0 and other.hits("/x/a.jpg") == 1


def _reference_allowed(rules: list[tuple[bool, str]], path: str) -> bool:
    """RFC 9309 by the letter: the longest matching pattern decides, ``allow`` wins a tie, no match allows."""
    best: tuple[int, bool] | None = None
    for allow, pattern in rules:
        anchored = pattern.endswith("$")
        body = pattern[:-1] if anchored else pattern
        regex = ".*".join(re.escape(part) for part in body.split("*")) + ("$" if anchored else "")
        if re.match(regex, path, re.DOTALL) and (best is None or (len(pattern), allow) > best):
            best = (len(pattern), allow)
    return True if best is None else best[1]


def test_robots_rules_take_precedence_as_rfc_9309_says_in_any_order() -> None:
    rng = random.Random(9309)
    pieces = ["/a", "/b", "/ab", "/a/", "*", ".jpg", "/a*b", "$", "/"]
    paths = ["/", "/a", "/ab", "/a/b.jpg", "/b/a.jpg", "/abab", "/a.jpg", "/ba", "/a/", "/b.jpg$"]
    for _ in range(300):
        rules = []
        for _ in range(rng.randint(1, 6)):
            pattern = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 3)))
            pattern = pattern if pattern.startswith(("/", "*")) else "/" + pattern
            rules.append((rng.random() < 0.5, pattern))
        text = "User-agent: *\n" + "".join(f"{'Allow' if a else 'Disallow'}: {p}\n" for a, p in rules)
        parsed = parse_robots_txt(text, "emo8")
        for path in paths:
            assert parsed.allowed(path) == _reference_allowed(rules, path), (text, path)


def test_rules_of_a_robots_txt_with_nothing_for_us_allow_everything() -> None:
    assert parse_robots_txt("User-agent: otherbot\nDisallow: /\n", "emo8").allowed("/a.jpg")
    blocked = parse_robots_txt("User-agent: emo8\nDisallow: /\n", "emo8")
    assert not blocked.allowed("/a.jpg") and blocked.allowed("/robots.txt")
    unreachable = RobotsRules(disallow_all=True)  # no rules at all, yet nothing but robots.txt is allowed
    assert not unreachable.allowed("/a.jpg") and unreachable.allowed("/robots.txt")


def test_run_event_loop_returns_the_result_on_uvloop_when_installed() -> None:
    async def loop_module() -> str:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()).__module__

    try:
        import uvloop  # noqa: F401
    except ImportError:
        expected = "asyncio"
    else:
        expected = "uvloop"
    assert run_event_loop(loop_module()).startswith(expected)
    with pytest.raises(ZeroDivisionError):  # an error inside the loop reaches the caller
        run_event_loop(_fail())


async def _fail() -> None:
    raise ZeroDivisionError
