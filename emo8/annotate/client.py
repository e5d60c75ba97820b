"""A thin wrapper over label-studio-sdk's ``LabelStudio`` client with timeouts and retries on transient errors.

The SDK retries a couple of times within a second; a Label Studio that restarts needs 10-60 s to answer again. So
the SDK's own retries are off and :meth:`Client.call` retries with exponential back-off and jitter until a
deadline, on connection errors, timeouts, 5xx, 429 and 408. Requests that create something (``idempotent=False``)
are retried only when the connection was refused, i.e. when the server cannot have acted on them; other failures
of such requests are raised so that the caller can re-read the server's state before trying again (see
:func:`emo8.annotate.rounds.push_round`).

``label_studio_sdk`` is imported when a client is created, not when this module is imported, so that
``import emo8.cli`` stays fast.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from emo8.annotate.errors import ServerError, ServerUnavailable

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

T = TypeVar("T")

#: HTTP statuses worth retrying: the server is overloaded, restarting or timed out.
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class ClientConfig:
    """Timeouts and retry policy of :class:`Client`.

    ``timeout`` bounds each request (seconds); failed attempts are retried after ``backoff * 2**attempt`` seconds
    (capped at ``max_backoff``, with jitter) for as long as ``deadline`` seconds from the first failure of a call.
    """

    timeout: float = 120.0
    deadline: float = 180.0
    backoff: float = 0.5
    max_backoff: float = 8.0


def is_transient(exc: BaseException) -> bool:
    """Return whether ``exc`` is worth retrying: a transport error or an HTTP status in :data:`RETRY_STATUSES`."""
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, ApiError) and exc.status_code in RETRY_STATUSES


def _never_sent(exc: BaseException) -> bool:
    return isinstance(exc, httpx.ConnectError)


def _is_jwt(token: str) -> bool:
    """Personal access tokens are JWTs (``header.payload.signature``); legacy tokens are 40 hex digits."""
    return token.count(".") == 2


class RestReader:
    """GET requests returning raw JSON from Label Studio's documented REST API, authenticated as the SDK does.

    A personal access token (a JWT refresh token) is exchanged for an access token at ``POST /api/token/refresh/``
    and exchanged again when the server answers 401; a legacy token is sent as ``Authorization: Token ...``. Kept
    apart from the SDK so that no private SDK attribute is needed; failures raise the SDK's ``ApiError`` so that
    :func:`is_transient` treats both paths alike.
    """

    def __init__(self, url: str, api_key: str, timeout: float) -> None:
        self.http = httpx.Client(base_url=url.rstrip("/") + "/", timeout=timeout)
        self.api_key = api_key
        self.access: str | None = None

    def _authorization(self) -> str:
        if not _is_jwt(self.api_key):
            return f"Token {self.api_key}"
        if self.access is None:
            response = self.http.post("api/token/refresh/", json={"refresh": self.api_key})
            _raise_for_status(response)
            self.access = str(response.json()["access"])
        return f"Bearer {self.access}"

    def get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        """GET ``path`` (relative to the server URL); exchange the token again once on 401 (expired access)."""
        response = self._get(path, params)
        if response.status_code == 401 and self.access is not None:
            self.access = None
            response = self._get(path, params)
        return response

    def _get(self, path: str, params: Mapping[str, Any]) -> httpx.Response:
        return self.http.get(path, params=dict(params), headers={"Authorization": self._authorization()})


def _raise_for_status(response: httpx.Response) -> None:
    from label_studio_sdk.core.api_error import ApiError

    if response.status_code >= 400:
        raise ApiError(
            status_code=response.status_code, headers=dict(response.headers), body=response.text[:500]
        )


class Client:
    """The Label Studio API at ``url``, authenticated with ``api_key``, with retries (see :class:`ClientConfig`).

    ``sdk`` is the underlying ``label_studio_sdk.LabelStudio``; the methods here cover what annotation rounds need
    and each one goes through :meth:`call`. ``on_retry(attempt, exc)`` is called before each retry (logging,
    tests).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        config: ClientConfig | None = None,
        on_retry: Callable[[int, BaseException], None] | None = None,
    ) -> None:
        from label_studio_sdk import LabelStudio

        self.url = url.rstrip("/")
        self.config = config or ClientConfig()
        self.on_retry = on_retry
        self.sdk: LabelStudio = LabelStudio(
            base_url=self.url, api_key=api_key, timeout=self.config.timeout, max_retries=0
        )
        self.rest = RestReader(self.url, api_key, self.config.timeout)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # -- the retry loop ----------------------------------------------------------------------------------------------

    def call(self, fn: Callable[..., T], *args: Any, idempotent: bool = True, **kwargs: Any) -> T:
        """Return ``fn(*args, **kwargs)``, retrying transient failures until the deadline.

        Raises :class:`ServerUnavailable` when the deadline passes; non-transient errors (4xx) propagate at once.
        A non-``idempotent`` call is retried only on refused connections.
        """
        attempt = 0
        started: float | None = None
        while True:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc) or (not idempotent and not _never_sent(exc)):
                    raise
                now = time.monotonic()
                started = started if started is not None else now
                if now - started > self.config.deadline:
                    raise ServerUnavailable(
                        f"Label Studio at {self.url} did not answer for {self.config.deadline:.0f}s "
                        f"({type(exc).__name__}: {_short(exc)}); nothing was written, re-run when it is back"
                    ) from exc
                if self.on_retry is not None:
                    self.on_retry(attempt, exc)
                delay = min(self.config.max_backoff, self.config.backoff * 2**attempt)
                time.sleep(delay * (0.5 + random.random() / 2))
                attempt += 1

    # -- what rounds need --------------------------------------------------------------------------------------------

    def whoami(self) -> Any:
        """Return the authenticated user."""
        return self.call(self.sdk.users.whoami)

    def users(self) -> dict[int, str]:
        """Return ``{user id: email}`` of the organisation's users (empty when this user may not list them)."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            users = self.call(self.sdk.users.list)
        except ApiError as exc:
            if exc.status_code in (401, 403):
                return {}
            raise
        return {int(u.id): str(u.email or f"user:{u.id}") for u in users if u.id is not None}

    def projects(self) -> list[Any]:
        """Return every project the user can see."""
        return self.call(lambda: list(self.sdk.projects.list(page_size=1000)))

    def project(self, project_id: int) -> Any | None:
        """Return the project ``project_id``, or None when the server has no such project."""
        from label_studio_sdk.core.api_error import ApiError

        try:
            return self.call(self.sdk.projects.get, project_id)
        except ApiError as exc:
            if exc.status_code == 404:
                return None
            raise

    def create_project(self, **fields: Any) -> Any:
        """Create a project with ``fields`` (title, label_config, ...) and return it."""
        return self.call(self.sdk.projects.create, idempotent=False, **fields)

    def update_project(self, project_id: int, **fields: Any) -> Any:
        """Update ``fields`` of project ``project_id``."""
        return self.call(self.sdk.projects.update, project_id, **fields)

    def local_storages(self, project_id: int) -> list[Any]:
        """Return the local files import storages of a project."""
        return list(self.call(self.sdk.import_storage.local.list, project=project_id))

    def create_local_storage(self, project_id: int, path: str, title: str) -> Any:
        """Attach a local files import storage rooted at ``path`` (never synced: it only grants file access)."""
        return self.call(
            self.sdk.import_storage.local.create,
            project=project_id,
            path=path,
            title=title,
            use_blob_urls=False,
            idempotent=False,
        )

    def import_tasks(self, project_id: int, tasks: Sequence[Mapping[str, Any]]) -> list[int]:
        """Import ``tasks`` (with their predictions) in one request; return the new task ids in order.

        Not retried once the request may have reached the server: re-read the project's tasks before retrying.
        """
        response = self.call(
            self.sdk.projects.import_tasks,
            project_id,
            request=list(tasks),
            return_task_ids=True,
            idempotent=False,
        )
        return [int(t) for t in (getattr(response, "task_ids", None) or [])]

    def task_pages(
        self, project_id: int, page_size: int = 500, annotations: bool = True
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield the project's tasks in id order, page by page, as plain dicts with ``id`` and ``data``, and with
        their full ``annotations`` when ``annotations`` is true.

        Each page is fetched with retries, so a server that restarts between two pages costs a wait, not the pull.
        Pages are read as raw JSON by :class:`RestReader` (validating thousands of tasks into the SDK's models costs
        as much as the server takes to produce them), restricted to the fields needed
        (``include=id,data,annotations&expand=annotations``: about 7x faster than ``fields=all``, which also computes
        predictions, drafts and per-task aggregates). A server that answers with annotation stubs instead is read
        with ``fields=all``.
        """
        page = 1
        read = 0
        full = False
        while True:
            params: dict[str, Any] = {"project": project_id, "page": page, "page_size": page_size}
            if not annotations:
                params.update(fields="task_only", include="id,data")
            elif not full:
                params.update(fields="all", include="id,data,annotations", expand="annotations")
            else:
                params.update(fields="all")
            body = self.call(self._get_json, "api/tasks/", params)
            if body is None:
                return
            tasks = list(body.get("tasks") or [])
            if annotations and not full and _has_stubs(tasks):
                full = True
                continue
            if tasks:
                yield tasks
            read += len(tasks)
            if not tasks or len(tasks) < page_size or read >= int(body.get("total") or 0):
                return
            page += 1

    def _get_json(self, path: str, params: Mapping[str, Any]) -> Any:
        """GET ``path`` and return its JSON; None on 404 (past the last page); ``ApiError`` on other failures."""
        response = self.rest.get(path, params)
        if response.status_code == 404:
            return None
        _raise_for_status(response)
        return response.json()


def _has_stubs(tasks: Sequence[Mapping[str, Any]]) -> bool:
    """Whether annotations came back as id-only stubs (a server that ignores ``expand``)."""
    return any("result" not in ann for task in tasks for ann in task.get("annotations") or [])


def _short(exc: BaseException, limit: int = 200) -> str:
    text = str(exc) or repr(exc)
    return text if len(text) <= limit else text[:limit] + "..."


def connect(
    url: str,
    api_key: str,
    config: ClientConfig | None = None,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> Client:
    """Return a :class:`Client` after checking that ``api_key`` works (raises :class:`ServerError` if not)."""
    from label_studio_sdk.core.api_error import ApiError

    client = Client(url, api_key, config, on_retry)
    try:
        client.whoami()
    except ApiError as exc:
        if exc.status_code in (401, 403):
            raise ServerError(f"Label Studio at {url} refused the API key (HTTP {exc.status_code})") from exc
        raise
    return client
