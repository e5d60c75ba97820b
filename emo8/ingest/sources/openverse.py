"""``emo8 ingest openverse``: CC-licensed images from Openverse's image search API (``GET /v1/images/``).

Each result becomes a record with its licence (as an SPDX-like id), creator, title, tags and landing page; the image
itself is fetched later by the polite downloader, like any URL.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx

from emo8.core.catalog import OriginRecord
from emo8.core.taxonomy import normalise_label
from emo8.ingest.sources.base import SourceError, register_source

DEFAULT_API_URL = "https://api.openverse.org"
DEFAULT_USER_AGENT = "emo8/0.1 (dataset research; +https://github.com/emo8/emo8)"
#: Openverse cuts ``q`` after this many characters (``MediaSearchRequestSerializer.validate_q``).
MAX_QUERY_CHARS = 200


def spdx_license(code: str | None, version: str | None) -> str | None:
    """Map Openverse's ``license``/``license_version`` (``by``, ``2.0``) to an SPDX-like id (``CC-BY-2.0``)."""
    if not code:
        return None
    code = code.lower()
    if code == "cc0":
        return "CC0-1.0"
    if code == "pdm":
        return "public-domain"
    return f"CC-{code.upper()}" + (f"-{version}" if version else "")


@register_source
@dataclass
class OpenverseSource:
    """Up to ``max_results`` results of ``query``, page by page (``page_size`` each; anonymous clients get 20).

    The weak label is ``label`` (or the query itself when it names an emotion): keyword-seeded retrieval, as in
    FI and EmoSet. ``license_type`` is passed through (``commercial``, ``modification``, ``all-cc``...). A token from
    ``OPENVERSE_TOKEN`` is sent as a bearer token when set. 429 and 5xx are retried with back-off, honouring
    ``Retry-After``; when a later page is refused (anonymous page limits), the results so far are kept.

    ``licenses`` (Openverse codes: ``by``, ``by-sa``, ``cc0``, ``pdm``...) is sent as the ``license`` filter.
    ``exclude`` holds negative keywords: each is sent in ``q`` with Openverse's NOT operator, ``-word`` (a phrase
    or a word with other characters quoted: ``-"clip art"``, ``-"3-d"``), as many as fit in its 200-character
    query, and results whose title or tags still contain one (as a whole word, any case) are dropped and counted in
    ``excluded``.
    """

    query: str
    max_results: int = 200
    page_size: int = 20
    license_type: str | None = None
    label: str | None = None
    api_url: str = DEFAULT_API_URL
    domain: str | None = None
    user_agent: str = DEFAULT_USER_AGENT
    retries: int = 4
    timeout: float = 30.0
    licenses: Sequence[str] = ()
    exclude: Sequence[str] = ()
    warnings: list[str] = field(default_factory=list)
    excluded: int = 0

    name: ClassVar[str] = "openverse"

    def search_text(self) -> str:
        """The ``q`` sent: the query, then ``-word`` per negative keyword while it fits in 200 characters."""
        text = self.query.strip()
        left_out = []
        for word in (w.strip() for w in self.exclude if w.strip()):
            term = f"-{word}" if re.fullmatch(r"\w+", word) else f'-"{word}"'
            if len(text) + 1 + len(term) <= MAX_QUERY_CHARS:
                text = f"{text} {term}"
            else:
                left_out.append(word)
        if left_out:
            self.warnings.append(
                f"Openverse query {self.query!r}: {len(left_out)} negative keyword(s) did not fit in its "
                f"{MAX_QUERY_CHARS}-character query ({', '.join(left_out)}); they are applied to the results only"
            )
        return text

    def _is_excluded(self, title: str | None, tags: list[Any]) -> bool:
        words = [w.strip() for w in self.exclude if w.strip()]
        if not words:
            return False
        pattern = re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)
        return any(pattern.search(str(text)) for text in (title or "", *tags))

    def records(self) -> Iterator[OriginRecord]:
        if not self.query.strip():
            raise SourceError("an Openverse query must not be empty")
        q = self.search_text()
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        token = os.environ.get("OPENVERSE_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        emitted = 0
        page = 1
        with httpx.Client(base_url=self.api_url.rstrip("/"), headers=headers, timeout=self.timeout) as client:
            while emitted < self.max_results:
                params: dict[str, Any] = {"q": q, "page": page, "page_size": self.page_size}
                if self.license_type:
                    params["license_type"] = self.license_type
                if self.licenses:
                    params["license"] = ",".join(self.licenses)
                body = self._get_page(client, params, first=page == 1)
                if body is None:
                    break
                results = body.get("results") or []
                for result in results:
                    if emitted >= self.max_results:
                        break
                    record = self._record(result)
                    if record is not None:
                        emitted += 1
                        yield record
                page_count = int(body.get("page_count") or 0)
                if not results or page >= page_count:
                    break
                page += 1

    def _get_page(self, client: httpx.Client, params: dict[str, Any], first: bool) -> dict[str, Any] | None:
        for attempt in range(self.retries + 1):
            try:
                response = client.get("/v1/images/", params=params)
            except httpx.HTTPError as exc:
                if attempt == self.retries:
                    raise SourceError(f"Openverse at {self.api_url} unreachable: {exc}") from exc
                time.sleep(_backoff(attempt))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == self.retries:
                    break
                time.sleep(_retry_after(response.headers.get("Retry-After")) or _backoff(attempt))
                continue
            if response.status_code >= 400:
                message = f"Openverse refused page {params['page']}: HTTP {response.status_code} {response.text[:200]}"
                if first:
                    raise SourceError(message)
                self.warnings.append(message)
                return None
            try:
                body: dict[str, Any] = response.json()
            except ValueError as exc:
                raise SourceError(f"Openverse answered page {params['page']} with invalid JSON") from exc
            return body
        message = f"Openverse kept failing on page {params['page']} after {self.retries + 1} attempts"
        if first:
            raise SourceError(message)
        self.warnings.append(message)
        return None

    def _record(self, result: dict[str, Any]) -> OriginRecord | None:
        url = result.get("url")
        if not isinstance(url, str) or not url:
            return None
        tags = [t.get("name") for t in result.get("tags") or [] if isinstance(t, dict) and t.get("name")]
        if self._is_excluded(result.get("title"), tags):
            self.excluded += 1
            return None
        return OriginRecord(
            origin_key=url,
            source=self.name,
            url=url,
            title=result.get("title") or None,
            author=result.get("creator") or None,
            license=spdx_license(result.get("license"), result.get("license_version")),
            keyword=self.query,
            domain=self.domain,
            weak_label=normalise_label(self.label or self.query),
            meta={
                "openverse_id": result.get("id"),
                "landing_url": result.get("foreign_landing_url"),
                "creator_url": result.get("creator_url"),
                "license_url": result.get("license_url"),
                "provider": result.get("provider"),
                "tags": tags,
                "mature": result.get("mature"),
                "attribution": result.get("attribution"),
            },
        )


@dataclass
class OpenverseSearch:
    """Several Openverse searches as one source (e.g. the synonyms of one emotion x style pair).

    Results are taken from each search in turn (one each, round robin), so that every query contributes evenly
    until it runs dry; an image found by several queries counts once (with the first query's keyword); at most
    ``max_results`` in all. Give each search ``max_results`` too, so the others can fill a dry query's share.
    """

    searches: list[OpenverseSource]
    max_results: int = 200

    name: ClassVar[str] = "openverse"

    @property
    def warnings(self) -> list[str]:
        """The warnings of every search."""
        return [warning for search in self.searches for warning in search.warnings]

    @property
    def excluded(self) -> int:
        """Results dropped by the negative keywords, over every search."""
        return sum(search.excluded for search in self.searches)

    def records(self) -> Iterator[OriginRecord]:
        running = [search.records() for search in self.searches]
        seen: set[str] = set()
        emitted = 0
        try:
            while running and emitted < self.max_results:
                for results in list(running):
                    record = next(results, None)
                    if record is None:
                        running.remove(results)
                    elif record.origin_key not in seen:
                        seen.add(record.origin_key)
                        emitted += 1
                        yield record
                        if emitted >= self.max_results:
                            break
        finally:
            for results in running:  # close the HTTP clients of the searches left unfinished
                close = getattr(results, "close", None)
                if close is not None:
                    close()


def _backoff(attempt: int) -> float:
    return float(min(30.0, 0.5 * 2**attempt) * random.random())


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date), capped at 60."""
    if not value:
        return None
    try:
        return min(60.0, max(0.0, float(value)))
    except ValueError:
        pass
    try:
        return min(60.0, max(0.0, parsedate_to_datetime(value).timestamp() - time.time()))
    except (TypeError, ValueError):
        return None
