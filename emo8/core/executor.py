"""Where the parallel stages run: the executor kinds, :class:`ExecutorConfig`, and a per-stage registry.

``local`` (the default) runs the stages as they always ran: a process pool and one asyncio downloader on this
machine. ``ray`` runs them on a Ray cluster (``pip install emo8[ray]``): a fresh local Ray instance with this
machine's CPUs when ``ray_address`` is ``None``, or a running cluster (``"auto"`` or ``"ray://host:10001"`` /
a GCS address). The catalog is always written by the driver alone.

This module imports no stage. Each stage owns its implementations and registers them in its own
:class:`StageExecutors`, keyed by executor kind: ``emo8.ingest.run.INGEST_EXECUTORS`` (Ray: :mod:`emo8.ingest.ray`),
``emo8.embed.run.EMBED_EXECUTORS`` (Ray: :mod:`emo8.embed.ray`) and ``emo8.label.people.DETECT_EXECUTORS``
(Ray: :mod:`emo8.label.people_ray`). An implementation may be registered as a ``"module:attribute"`` string,
imported only when that kind is chosen, so Ray is never imported by a local run.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "EXECUTOR_KINDS",
    "ExecutorConfig",
    "ExecutorError",
    "StageExecutors",
    "check_executor",
    "ray_session",
    "register_kind",
    "require_shared_store",
]

T = TypeVar("T")


class ExecutorError(RuntimeError):
    """An executor cannot run (unknown kind, Ray not installed, cluster unreachable)."""


@dataclass(frozen=True)
class ExecutorConfig:
    """Which executor runs the parallel stages, and its Ray settings.

    ``num_cpus`` sizes a local Ray instance (``None``: every CPU); ``shards`` is how many host shards ingest
    is split into (``EMO8_RAY_SHARDS``; unset: the cluster's CPUs), each served by one actor; at most
    ``chunk_size`` items go to an actor at a time; ``task_retries`` is how often a chunk whose actor died is
    run again. ``chunk_size`` defaults to ``EMO8_RAY_CHUNK_SIZE`` (256 when unset): smaller chunks commit
    sooner, larger ones cost fewer round trips and fetch each host's robots.txt less often. ``keep_alive``
    (``EMO8_RAY_KEEP_ALIVE``, 120 when unset) is how many seconds ingest's actors stay up, idle, on a cluster
    the run joined (``ray_address`` set), so that the next job there reuses them instead of starting worker
    processes; 0 ends them with the job.
    """

    kind: str = "local"
    ray_address: str | None = None
    num_cpus: int | None = None
    shards: int | None = field(default_factory=lambda: _env_number("EMO8_RAY_SHARDS", 0, int) or None)
    chunk_size: int = field(default_factory=lambda: _env_number("EMO8_RAY_CHUNK_SIZE", 256, int))
    task_retries: int = 3
    keep_alive: float = field(default_factory=lambda: _env_number("EMO8_RAY_KEEP_ALIVE", 120.0, float))

    def __post_init__(self) -> None:
        if (
            self.kind == "ray"
        ):  # only a run on Ray reports a malformed variable: other commands never read them
            for name, kind in _RAY_ENVIRONMENT.items():
                _env_number(name, kind(0), kind, strict=True)


N = TypeVar("N", int, float)
#: The environment variables that set :class:`ExecutorConfig`'s Ray defaults, and their types.
_RAY_ENVIRONMENT: dict[str, type[int] | type[float]] = {
    "EMO8_RAY_SHARDS": int,
    "EMO8_RAY_CHUNK_SIZE": int,
    "EMO8_RAY_KEEP_ALIVE": float,
}


def _env_number(name: str, default: N, kind: type[N], strict: bool = False) -> N:
    """The number in the environment variable ``name``; ``default`` when it is unset or empty, and when it holds
    something else unless ``strict``, which raises :class:`ExecutorError` naming the variable then."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return kind(value)
    except ValueError:
        if not strict:
            return default
        raise ExecutorError(
            f"{name}={value!r} is not {'an integer' if kind is int else 'a number'}; set it to one, or unset it "
            "to use the default."
        ) from None


def _always(config: ExecutorConfig) -> None:
    """The local executor needs nothing."""


def _needs_ray(config: ExecutorConfig) -> None:
    if importlib.util.find_spec("ray") is None:
        raise ExecutorError(
            "The ray executor needs Ray, which is not installed. Install it with `pip install 'emo8[ray]'`, "
            "or run with --executor local."
        )


#: Executor kind -> availability check (raises :class:`ExecutorError` when the kind cannot run here).
EXECUTOR_KINDS: dict[str, Callable[[ExecutorConfig], None]] = {"local": _always, "ray": _needs_ray}


def register_kind(kind: str, check: Callable[[ExecutorConfig], None] = _always) -> None:
    """Make ``kind`` a known executor kind; ``check`` raises :class:`ExecutorError` when it cannot run."""
    EXECUTOR_KINDS[kind] = check


def check_executor(config: ExecutorConfig) -> None:
    """Raise :class:`ExecutorError` for an unknown kind or one that cannot run here (e.g. Ray not installed)."""
    check = EXECUTOR_KINDS.get(config.kind)
    if check is None:
        raise ExecutorError(
            f"Unknown executor {config.kind!r}: choose one of {', '.join(sorted(EXECUTOR_KINDS))}."
        )
    check(config)


class StageExecutors(Generic[T]):
    """One stage's implementations, keyed by executor kind.

    An implementation is registered as the object itself or as a ``"package.module:attribute"`` string that is
    imported on first use (so a kind's heavy dependencies load only when it is chosen).
    """

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._impls: dict[str, T | str] = {}

    def register(self, kind: str, impl: T | str) -> None:
        """Register ``impl`` (or its ``"module:attribute"`` name) as this stage's ``kind`` implementation."""
        self._impls[kind] = impl

    @property
    def kinds(self) -> list[str]:
        return sorted(self._impls)

    def get(self, config: ExecutorConfig) -> T:
        """This stage's implementation for ``config.kind``; :class:`ExecutorError` if unknown or unavailable."""
        check_executor(config)
        impl = self._impls.get(config.kind)
        if impl is None:
            raise ExecutorError(
                f"The {self.stage} stage cannot run on the {config.kind!r} executor: "
                f"choose one of {', '.join(self.kinds)}."
            )
        if isinstance(impl, str):
            module, _, name = impl.partition(":")
            try:
                loaded: T = getattr(importlib.import_module(module), name)
            except ImportError as exc:  # the kind's own dependency is missing or broken
                raise ExecutorError(
                    f"The {config.kind} executor for {self.stage} cannot be loaded ({exc}). "
                    f"Install its extra (`pip install 'emo8[{config.kind}]'`), or run with --executor local."
                ) from exc
            self._impls[config.kind] = impl = loaded
        return impl


def require_shared_store(shared: bool, url: str | None) -> None:
    """Raise :class:`ExecutorError` when the object store lives in this process only (``memory://``): Ray workers
    are other processes, on other machines."""
    if not shared:
        raise ExecutorError(
            f"The object store {url} lives in this process only; Ray workers cannot reach it. "
            "Use the local executor, or a store on a shared filesystem or an object store URL."
        )


#: Ray's setting for how often a process reports its task events (0: never); see :class:`ray_session`.
TASK_EVENTS = "RAY_task_events_report_interval_ms"


class ray_session:
    """Connect to the cluster ``config`` names (or start a local instance); shut down only what it started.

    Ray is imported here, on entry, never when this module is imported.
    """

    def __init__(self, config: ExecutorConfig) -> None:
        self.config = config
        self.started = False
        #: Whether the run joined a cluster that outlives it (``ray_address`` set) rather than one of its own.
        self.joined = config.ray_address is not None

    def __enter__(self) -> ray_session:
        import ray

        if ray.is_initialized():
            return self
        local = self.config.ray_address is None
        # Joining a cluster, this driver reports no task events (the dashboard's task list still gets those of
        # the workers that run them): flushing them made every disconnect 0.25 s slower. Unless the user set it.
        quiet = not local and TASK_EVENTS not in os.environ
        if quiet:
            os.environ[TASK_EVENTS] = "0"  # read once, by ray.init
        try:
            ray.init(
                address=self.config.ray_address
                or "local",  # "local": a new instance, even beside a running one
                num_cpus=(self.config.num_cpus or os.cpu_count() or 1) if local else None,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except ConnectionError as exc:
            raise ExecutorError(
                f"Cannot reach the Ray cluster at {self.config.ray_address!r} ({exc}); start it, "
                "check --ray-address, or leave it out to start a local Ray instance."
            ) from exc
        finally:
            if quiet:
                del os.environ[TASK_EVENTS]
        self.started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.started:
            import ray

            ray.shutdown()

    @staticmethod
    def resources() -> dict[str, Any]:
        """The connected cluster's total resources (``CPU``, ``GPU``, ...)."""
        import ray

        return dict(ray.cluster_resources())
