"""Crawler exclusion: robots.txt per RFC 9309 and the ``X-Robots-Tag`` response header.

``urllib.robotparser`` is not used because it applies the first matching rule instead of the longest one
and does not understand the ``*`` and ``$`` wildcards; both are required by RFC 9309.

What this module implements of RFC 9309 (the fetching policy lives in :mod:`emo8.ingest.download`):

* groups start with one or more ``user-agent`` lines; every group whose product token matches ours
  (case-insensitively) is merged; without one, the ``*`` groups are merged; without those, all is allowed;
* ``allow``/``disallow`` rules match the percent-normalised path and query; the longest pattern wins and
  ``allow`` wins a tie; ``*`` matches any sequence and a trailing ``$`` anchors the end;
* ``/robots.txt`` itself is always allowed; only the first 512 KiB of a file are parsed;
* records the RFC does not define (``crawl-delay``, ``sitemap``, ...) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

__all__ = [
    "MAX_ROBOTS_BYTES",
    "X_ROBOTS_BLOCKING",
    "RobotsRules",
    "parse_robots_txt",
    "product_token",
    "x_robots_blocked",
]

MAX_ROBOTS_BYTES = 512 * 1024
X_ROBOTS_BLOCKING = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
# X-Robots-Tag directives that carry a value after a colon, so "name: value" is not "useragent: directive".
_VALUED_DIRECTIVES = frozenset(
    {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview", "indexifembedded"}
)
_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
_PCT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def product_token(user_agent: str) -> str:
    """Product token of a User-Agent string, lower-cased: ``"emo8/0.1 (+https://...)"`` -> ``"emo8"``."""
    match = _TOKEN.match(user_agent.strip())
    return match.group(0).lower() if match else ""


def _normalise(path: str) -> str:
    """Percent-normalise a path or pattern (RFC 9309 section 2.2.2) so that equal paths compare equal.

    Non-ASCII characters are UTF-8 percent-encoded, escapes of unreserved characters are decoded and the
    hex digits of the remaining escapes are upper-cased.
    """
    if path.isascii() and "%" not in path:
        return path
    encoded = "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in path)

    def fix(match: re.Match[str]) -> str:
        byte = int(match.group(1), 16)
        return chr(byte) if byte in _UNRESERVED else "%" + match.group(1).upper()

    return _PCT.sub(fix, encoded)


@lru_cache(maxsize=4096)
def _compile(pattern: str) -> re.Pattern[str]:
    anchored = pattern.endswith("$")
    body = pattern[:-1] if anchored else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*"))
    return re.compile(regex + (r"\Z" if anchored else ""), re.DOTALL)


@dataclass(frozen=True)
class RobotsRules:
    """The merged ``allow``/``disallow`` rules that apply to one crawler.

    ``rules`` holds ``(allow, normalised_pattern)`` pairs; ``disallow_all`` is set for an unreachable
    robots.txt (RFC 9309 section 2.3.1.4: assume complete disallow).
    """

    rules: tuple[tuple[bool, str], ...] = ()
    disallow_all: bool = False

    def allowed(self, path: str) -> bool:
        """Whether a URL's path (with its ``?query``, as sent on the wire) may be fetched."""
        if not self.rules and not self.disallow_all:  # no robots.txt, or one without rules for us
            return True
        if not path.startswith("/"):
            path = "/" + path
        if path == "/robots.txt":
            return True
        if self.disallow_all:
            return False
        path = _normalise(path)
        for allow, regex in self._by_precedence:
            if regex.match(path):
                return allow
        return True

    @cached_property
    def _by_precedence(self) -> tuple[tuple[bool, re.Pattern[str]], ...]:
        """The rules compiled, in the order they take precedence: the longest pattern first, ``allow`` first
        among patterns of one length; so the first rule that matches decides."""
        ordered = sorted(self.rules, key=lambda rule: (-len(rule[1]), not rule[0]))
        return tuple((allow, _compile(pattern)) for allow, pattern in ordered)


@dataclass
class _Group:
    agents: list[str] = field(default_factory=list)
    rules: list[tuple[bool, str]] = field(default_factory=list)


def _groups(lines: Iterable[str]) -> list[_Group]:
    groups: list[_Group] = []
    current: _Group | None = None
    in_rules = False
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower().replace(" ", "-"), value.strip()
        if key in ("user-agent", "useragent"):
            if current is None or in_rules:
                current, in_rules = _Group(), False
                groups.append(current)
            token = "*" if value.startswith("*") else product_token(value)
            if token:
                current.agents.append(token)
        elif key in ("allow", "disallow") and current is not None:
            in_rules = True
            if value:  # an empty value is no rule at all
                current.rules.append((key == "allow", _normalise(value)))
    return groups


def parse_robots_txt(content: bytes | str, user_agent: str) -> RobotsRules:
    """Parse a robots.txt body and return the rules for ``user_agent`` (a full UA string or a product token).

    Bytes are decoded as UTF-8 (invalid sequences replaced) after cutting at :data:`MAX_ROBOTS_BYTES`.
    """
    if isinstance(content, bytes):
        content = content[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
    content = content.lstrip("\ufeff")
    token = product_token(user_agent)
    groups = _groups(content.splitlines())
    chosen = [g for g in groups if token and token in g.agents] or [g for g in groups if "*" in g.agents]
    return RobotsRules(rules=tuple(rule for g in chosen for rule in g.rules))


def x_robots_blocked(
    values: Iterable[str], user_agent: str, blocking: Iterable[str] = X_ROBOTS_BLOCKING
) -> str | None:
    """Return the first blocking ``X-Robots-Tag`` directive that applies to us, or ``None``.

    ``values`` are the header's values (it may be repeated). A directive applies when it has no user-agent
    prefix, or when the prefix (``"emo8: noai, noindex"``) names our product token; a prefix stays in force
    for the following comma-separated directives of the same value. ``none`` counts as ``noindex``.
    """
    token = product_token(user_agent)
    blocked = {b.lower() for b in blocking}
    for value in values:
        scope: str | None = None
        for element in value.split(","):
            item = element.strip().lower()
            name, sep, rest = item.partition(":")
            name = name.strip()
            if sep and name not in _VALUED_DIRECTIVES and _TOKEN.fullmatch(name):
                scope, item = name, rest.strip()
            if (scope is None or scope == token) and item in blocked:
                return item
    return None
