"""``emo8 ingest openverse``: CC-licensed images from Openverse's image search API (``GET /v1/images/``).

Each result becomes a record with its licence (as an SPDX-like id), creator, title, tags and landing page; the image
itself is fetched later by the polite downloader, like any URL.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

import httpx

from emo8.core.catalog import OriginRecord
from emo8.core.taxonomy import normalise_label
from emo8.ingest.sources.base import SourceError, register_source

DEFAULT_API_URL = "https://api.openverse.org"
DEFAULT_USER_AGENT = "emo8/0.1 (dataset research; +https://github.com/emo8/emo8)"


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
    warnings: list[str] = field(default_factory=list)

    name: ClassVar[str] = "openverse"

    def records(self) -> Iterator[OriginRecord]:
        if not self.query.strip():
            raise SourceError("an Openverse query must not be empty")
        headers = {"User-Agent": self.user_agent, "Accept": "application/json"}
        token = os.environ.get("OPENVERSE_TOKEN")
        if token:
            headers["Authorization"] = f"Bearer {token}"
        emitted = 0
        page = 1
        with httpx.Client(base_url=self.api_url.rstrip("/"), headers=headers, timeout=self.timeout) as client:
            while emitted < self.max_results:
                params: dict[str, Any] = {"q": self.query, "page": page, "page_size": self.page_size}
                if self.license_type:
                    params["license_type"] = self.license_type
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
