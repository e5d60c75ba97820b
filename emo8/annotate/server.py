"""A local Label Studio server for annotation rounds: install, start, stop, health, admin account, API token.

Label Studio lives in its own virtual environment (:func:`default_venv`, normally ``.venv-labelstudio`` next to the
repository's ``pyproject.toml``) because its pinned Django stack must not meet the toolkit's dependencies.
:func:`ensure_label_studio` installs it there on first use and prepares a migrated *template* database, so that
a fresh data directory starts in seconds instead of minutes (migrations take 1-2 minutes on a small machine).

:func:`start_server` runs ``label-studio start`` on loopback in a new session with a cleaned environment:

- the admin account comes from ``LABEL_STUDIO_USERNAME`` / ``LABEL_STUDIO_PASSWORD`` in the child's environment
  (never on the command line, where ``ps`` would show it), with a random password kept in
  ``<data dir>/emo8-admin.json`` (mode 600);
- Label Studio >= 1.23 disables legacy API tokens for new organisations, so emo8 logs in as the admin and creates a
  *personal access token* (``POST /api/token/``, a JWT refresh token that the SDK exchanges for access tokens);
- local file serving is on (``LOCAL_FILES_SERVING_ENABLED``, ``LOCAL_FILES_DOCUMENT_ROOT`` = the document root);
  Label Studio 1.23 serves ``/data/local-files/?d=<path>`` only below a *local files import storage* attached to the
  project, which :func:`emo8.annotate.rounds.push_round` creates for the workspace's ``objects/`` directory;
- sign-up needs the organisation's invite link, and analytics, Sentry and the version check are off.

:func:`serve` / :func:`stop` do the same for a workspace and remember the connection in its config; the API token
goes to ``<workspace>/secrets/labelstudio.json`` (mode 600) and is never printed or logged.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from emo8.annotate.errors import ServerError, ServerUnavailable
from emo8.core.workspace import Workspace

#: What ``pip`` installs into the Label Studio environment.
LABEL_STUDIO_REQUIREMENT = "label-studio>=1.23,<2"
#: Environment variable overriding where the Label Studio environment lives.
VENV_ENV = "EMO8_LABEL_STUDIO_VENV"
#: Environment variables naming an existing server and its API key (personal access token or legacy token).
URL_ENV = "LABEL_STUDIO_URL"
API_KEY_ENV = "LABEL_STUDIO_API_KEY"

ADMIN_FILE = "emo8-admin.json"
SECRETS_DIR = "secrets"
TOKEN_FILE = "labelstudio.json"
LOG_FILE = "server.log"
DB_FILE = "label_studio.sqlite3"

#: Variables copied from our environment into the server's; everything else is dropped, because Label Studio also
#: reads bare names such as ``USERNAME``, ``PASSWORD``, ``PORT`` and ``HOST`` as settings.
_ENV_ALLOW = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "SYSTEMROOT")

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# -- installation ------------------------------------------------------------------------------------------------


def default_venv() -> Path:
    """Return where the Label Studio environment lives.

    ``$EMO8_LABEL_STUDIO_VENV`` when set; else ``.venv-labelstudio`` in the source checkout (the directory holding
    emo8's ``pyproject.toml``); else ``~/.cache/emo8/venv-labelstudio`` for installed copies of emo8.
    """
    override = os.environ.get(VENV_ENV)
    if override:
        return Path(override).expanduser().resolve()
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file():
        return checkout / ".venv-labelstudio"
    return Path.home() / ".cache" / "emo8" / "venv-labelstudio"


@dataclass(frozen=True)
class Installation:
    """A Label Studio installed in ``venv``: its ``label-studio`` script, interpreter and version."""

    venv: Path
    version: str

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "label-studio"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def template_db(self) -> Path:
        """A migrated, empty database for this version: copied into new data directories to skip migrations."""
        return self.venv / "emo8-template" / f"label_studio-{self.version}.sqlite3"


def find_installation(venv: Path | None = None) -> Installation | None:
    """Return the Label Studio installed in ``venv`` (default :func:`default_venv`), or None."""
    root = venv or default_venv()
    script = root / "bin" / "label-studio"
    python = root / "bin" / "python"
    if not script.exists() or not python.exists():
        return None
    probe = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('label-studio'))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if probe.returncode != 0:
        return None
    return Installation(root, probe.stdout.strip())


def install_label_studio(
    venv: Path | None = None, requirement: str = LABEL_STUDIO_REQUIREMENT, log: Log = _quiet
) -> Installation:
    """Create ``venv`` (default :func:`default_venv`) and ``pip install`` Label Studio into it; idempotent.

    Raises :class:`ServerError` with pip's last lines when the installation fails.
    """
    root = venv or default_venv()
    found = find_installation(root)
    if found is not None:
        return found
    log(f"installing {requirement} into {root} (once; a few minutes)")
    if not (root / "bin" / "python").exists():
        _run([sys.executable, "-m", "venv", str(root)], "create the Label Studio virtual environment")
    _run(
        [
            str(root / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            requirement,
        ],
        f"pip install {requirement}",
    )
    found = find_installation(root)
    if found is None:
        raise ServerError(f"label-studio is not usable in {root} after installing it")
    return found


def prepare_template(inst: Installation, log: Log = _quiet) -> Path:
    """Create the migrated template database of ``inst`` unless it exists; return its path."""
    target = inst.template_db
    if target.exists():
        return target
    log("migrating an empty Label Studio database once (a template for new data directories)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        env = _server_env(Path(scratch), document_root=None)
        env["PYTHONPATH"] = _label_studio_package_dir(inst)
        env["DJANGO_SETTINGS_MODULE"] = "label_studio.core.settings.label_studio"
        _run(
            [str(inst.python), "-m", "label_studio.manage", "migrate", "--no-color", "-v", "0"],
            "migrate the Label Studio template database",
            env=env,
        )
        os.replace(Path(scratch) / DB_FILE, target)
    return target


def ensure_label_studio(venv: Path | None = None, log: Log = _quiet) -> Installation:
    """Return the Label Studio installation, installing it and its template database when missing."""
    inst = install_label_studio(venv, log=log)
    prepare_template(inst, log=log)
    return inst


def _label_studio_package_dir(inst: Installation) -> str:
    probe = subprocess.run(
        [str(inst.python), "-c", "import label_studio, os; print(os.path.dirname(label_studio.__file__))"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return probe.stdout.strip()


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ServerUnavailable(f"could not {what} (exit {proc.returncode}):\n{tail}")


# -- one server process --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerConfig:
    """How to run one local Label Studio server.

    ``port`` 0 picks a free one; ``document_root`` is the directory under which the server may serve local files
    (the workspace root for ``emo8 annotate serve``), None disables local file serving.
    """

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    document_root: Path | None = None
    admin_email: str = "admin@emo8.local"
    startup_timeout: float = 600.0
    venv: Path | None = None
    log_level: str = "WARNING"


@dataclass(frozen=True)
class ManagedServer:
    """A running server that emo8 started: where it listens, its process and its admin credentials."""

    url: str
    pid: int
    port: int
    data_dir: Path
    document_root: Path | None
    admin_email: str
    admin_password: str = field(repr=False)
    api_key: str = field(repr=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def health(url: str, timeout: float = 5.0) -> bool:
    """Return whether the server at ``url`` answers ``GET /health`` with 200."""
    try:
        return httpx.get(f"{url.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(
    url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None, log: Path | None = None
) -> None:
    """Poll ``url`` until healthy; raise :class:`ServerError` on timeout or when ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if health(url, timeout=3.0):
            return
        if proc is not None and proc.poll() is not None:
            raise ServerUnavailable(
                f"Label Studio exited with code {proc.returncode} while starting{_log_tail(log)}"
            )
        time.sleep(0.5)
    raise ServerUnavailable(f"Label Studio at {url} was not healthy after {timeout:.0f}s{_log_tail(log)}")


def start_server(config: ServerConfig, install: bool = True, log: Log = _quiet) -> ManagedServer:
    """Start ``label-studio`` as configured, wait until healthy, and return it with a working admin API token.

    Re-starting on an existing data directory reuses its database, admin account and token.

    Parameters
    ----------
    config
        Data directory, port, document root for local files, admin e-mail, timeouts (see :class:`ServerConfig`).
    install
        Install Label Studio and its template database (:func:`ensure_label_studio`) when missing.
    log
        Receives progress messages (never secrets).

    Returns
    -------
    A :class:`ManagedServer` (its ``api_key`` and ``admin_password`` are hidden from ``repr``). Raises
    :class:`ServerError` when the process exits or is not healthy within ``config.startup_timeout``.
    """
    inst = ensure_label_studio(config.venv, log=log) if install else find_installation(config.venv)
    if inst is None:
        raise ServerError("Label Studio is not installed; run `emo8 annotate install`")
    data_dir = config.data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    if not (data_dir / DB_FILE).exists() and inst.template_db.exists():
        shutil.copyfile(inst.template_db, data_dir / DB_FILE)
    admin = _read_secret(data_dir / ADMIN_FILE)
    if admin.get("email") != config.admin_email or not admin.get("password"):
        admin = {"email": config.admin_email, "password": secrets.token_urlsafe(24)}
        _write_secret(data_dir / ADMIN_FILE, admin)
    port = config.port or free_port(config.host)
    url = f"http://{config.host}:{port}"
    if health(url, timeout=1.0):
        raise ServerError(f"something already answers on {url}; pick another --port")
    document_root = config.document_root.expanduser().resolve() if config.document_root else None
    env = _server_env(data_dir, document_root)
    env["LABEL_STUDIO_USERNAME"] = admin["email"]
    env["LABEL_STUDIO_PASSWORD"] = admin["password"]
    cmd = [
        str(inst.executable), "start", "--no-browser", "--internal-host", config.host, "--port", str(port),
        "--data-dir", str(data_dir), "--log-level", config.log_level,
    ]  # fmt: skip
    with open(data_dir / LOG_FILE, "ab") as log_handle:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    log(f"started Label Studio {inst.version} (pid {proc.pid}) on {url}; waiting until healthy")
    try:
        wait_healthy(url, config.startup_timeout, proc, data_dir / LOG_FILE)
        api_key = _admin_token(url, admin, data_dir)
    except BaseException:
        _terminate(proc.pid)
        raise
    return ManagedServer(
        url=url,
        pid=proc.pid,
        port=port,
        data_dir=data_dir,
        document_root=document_root,
        admin_email=admin["email"],
        admin_password=admin["password"],
        api_key=api_key,
    )


def stop_server(pid: int, timeout: float = 30.0) -> bool:
    """Stop the Label Studio process ``pid`` (and its process group) that emo8 started; return whether it ran.

    Refuses (returns False) when ``pid`` is not a Label Studio process, so a recycled pid is never killed.
    """
    if not _is_label_studio(pid):
        return False
    _terminate(pid, timeout)
    return True


def _terminate(pid: int, timeout: float = 30.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _alive(pid):
                return
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    with contextlib.suppress(OSError):
        return stat.read_text().split(") ", 1)[1][0] != "Z"
    return True


def _is_label_studio(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return _alive(pid)  # no /proc (macOS): trust the recorded pid
    return b"label-studio" in cmdline or b"label_studio" in cmdline


def _server_env(data_dir: Path, document_root: Path | None) -> dict[str, str]:
    env = {key: os.environ[key] for key in _ENV_ALLOW if key in os.environ}
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LOCAL_FILES_SERVING_ENABLED": "true" if document_root else "false",
        }
    )
    if document_root is not None:
        env["LOCAL_FILES_DOCUMENT_ROOT"] = str(document_root)
    return env


def _log_tail(path: Path | None, lines: int = 15) -> str:
    if path is None or not path.exists():
        return ""
    tail = path.read_text(errors="replace").strip().splitlines()[-lines:]
    return f"; last lines of {path}:\n" + "\n".join(tail)


# -- accounts and tokens ---------------------------------------------------------------------------------------------


def _admin_token(url: str, admin: dict[str, Any], data_dir: Path) -> str:
    token = admin.get("api_key")
    if isinstance(token, str) and token_works(url, token):
        return token
    token = create_personal_token(url, admin["email"], admin["password"])
    _write_secret(data_dir / ADMIN_FILE, {**admin, "api_key": token})
    return token


def token_works(url: str, api_key: str) -> bool:
    """Return whether ``api_key`` authenticates against ``url`` (``GET /api/current-user/whoami``)."""
    try:
        with _api(url, api_key) as api:
            return api.get("/api/current-user/whoami").status_code == 200
    except (httpx.HTTPError, ServerError):
        return False


@contextlib.contextmanager
def _session(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=60.0, follow_redirects=False) as client:
        yield client


def _login(client: httpx.Client, email: str, password: str) -> None:
    client.get("/user/login/")
    response = client.post(
        "/user/login/",
        data={
            "email": email,
            "password": password,
            "csrfmiddlewaretoken": client.cookies.get("csrftoken") or "",
        },
    )
    if response.status_code != 302:
        raise ServerError(f"could not log in to {client.base_url} as {email} (HTTP {response.status_code})")


def _new_token(client: httpx.Client, email: str) -> str:
    response = client.post("/api/token/", headers={"X-CSRFToken": client.cookies.get("csrftoken") or ""})
    if response.status_code == 201:
        return str(response.json()["token"])
    if response.status_code in (400, 409):
        raise ServerError(
            f"{email} already has a personal access token on {client.base_url} and emo8 does not know it; revoke it "
            "under Account & Settings > Personal Access Token, or pass one with LABEL_STUDIO_API_KEY"
        )
    raise ServerError(f"could not create a personal access token for {email} (HTTP {response.status_code})")


def create_personal_token(url: str, email: str, password: str) -> str:
    """Log in as ``email`` and create its personal access token (Label Studio >= 1.23); return the token."""
    with _session(url) as client:
        _login(client, email, password)
        return _new_token(client, email)


@contextlib.contextmanager
def _api(url: str, api_key: str) -> Iterator[httpx.Client]:
    """An httpx client authenticated with ``api_key`` (a legacy token, or a personal access token exchanged once)."""
    header = f"Token {api_key}"
    if api_key.count(".") == 2:  # a JWT personal access token: exchange it for an access token
        response = httpx.post(
            f"{url.rstrip('/')}/api/token/refresh/", json={"refresh": api_key}, timeout=30.0
        )
        if response.status_code != 200:
            raise ServerError(f"the API token was refused by {url} (HTTP {response.status_code})")
        header = f"Bearer {response.json()['access']}"
    with httpx.Client(base_url=url, timeout=60.0, headers={"Authorization": header}) as client:
        yield client


def create_annotator(url: str, admin_api_key: str, email: str, password: str) -> str:
    """Sign ``email`` up through the organisation's invite link and return the new user's own API token.

    The user is a real account that can also log in to the web UI with ``password``; annotations made with the
    returned token are attributed to it. Signing up an existing user logs it in instead.
    """
    with _api(url, admin_api_key) as api:
        invite = api.get("/api/invite")
        if invite.status_code != 200:
            raise ServerError(f"could not read the invite link of {url} (HTTP {invite.status_code})")
        invite_token = invite.json()["token"]
    with _session(url) as client:
        client.get("/user/signup/")
        response = client.post(
            "/user/signup/",
            params={"token": invite_token},
            data={
                "email": email,
                "password": password,
                "csrfmiddlewaretoken": client.cookies.get("csrftoken") or "",
            },
        )
        if response.status_code != 302:
            try:
                _login(client, email, password)
            except ServerError as exc:
                raise ServerError(
                    f"could not sign up {email} on {url} (HTTP {response.status_code}: the form was refused - an "
                    "invalid e-mail, a weak password, or an existing user with another password)"
                ) from exc
        return _new_token(client, email)


# -- secrets -----------------------------------------------------------------------------------------------------------


def _write_secret(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` readable by its owner only (mode 600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        path.parent.chmod(0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secret-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(payload, handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read_secret(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


# -- a workspace's connection -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Connection:
    """Where a workspace's Label Studio is and how to authenticate: the URL and the API key (never printed).

    ``local_files_root`` is the server's ``LOCAL_FILES_DOCUMENT_ROOT`` when it can read the workspace's files
    (always for servers emo8 started), else None.
    """

    url: str
    api_key: str = field(repr=False)
    managed: bool = False
    local_files_root: Path | None = None


def token_path(ws: Workspace) -> Path:
    """Return the workspace's API token file (mode 600)."""
    return ws.root / SECRETS_DIR / TOKEN_FILE


def save_connection(ws: Workspace, conn: Connection, server: ManagedServer | None = None) -> None:
    """Remember ``conn`` in the workspace: URL and server facts in the config, the API key in the token file."""
    _write_secret(token_path(ws), {"url": conn.url, "api_key": conn.api_key})
    entry: dict[str, Any] = {
        "url": conn.url,
        "managed": conn.managed,
        "token_file": str(token_path(ws).relative_to(ws.root)),
        "local_files_root": str(conn.local_files_root) if conn.local_files_root else None,
    }
    if server is not None:
        entry.update(
            {
                "pid": server.pid,
                "port": server.port,
                "data_dir": str(server.data_dir),
                "admin": server.admin_email,
            }
        )
    annotate = ws.config.setdefault("annotate", {})
    annotate["server"] = entry
    ws.save_config()


def load_connection(
    ws: Workspace, url: str | None = None, api_key: str | None = None, local_files_root: Path | None = None
) -> Connection:
    """Return the connection to use: explicit arguments, else ``LABEL_STUDIO_URL`` / ``LABEL_STUDIO_API_KEY``, else
    what :func:`serve` or ``emo8 annotate serve --url`` stored in the workspace.

    Raises :class:`ServerError` when no server is known or no API key is available for it.
    """
    entry = dict(ws.config.get("annotate", {}).get("server") or {})
    stored = _read_secret(token_path(ws))
    target = url or os.environ.get(URL_ENV) or entry.get("url")
    if not target:
        raise ServerError(
            "no Label Studio server: run `emo8 annotate serve`, or pass --url / set LABEL_STUDIO_URL and "
            "LABEL_STUDIO_API_KEY"
        )
    target = str(target).rstrip("/")
    same_server = target == str(entry.get("url", "")).rstrip("/")
    key = api_key or os.environ.get(API_KEY_ENV) or (stored.get("api_key") if same_server else None)
    if not key:
        raise ServerError(f"no API key for {target}: set LABEL_STUDIO_API_KEY (a personal access token)")
    root = local_files_root or (
        Path(entry["local_files_root"]) if same_server and entry.get("local_files_root") else None
    )
    return Connection(
        url=target,
        api_key=str(key),
        managed=bool(same_server and entry.get("managed")),
        local_files_root=root,
    )


def serve(
    ws: Workspace,
    port: int = 0,
    data_dir: Path | None = None,
    venv: Path | None = None,
    startup_timeout: float = 600.0,
    log: Log = _quiet,
) -> ManagedServer:
    """Start (or find running) the workspace's own Label Studio and store the connection in the workspace.

    The data directory defaults to ``<workspace>/labelstudio``; the document root for local files is the workspace
    root, so tasks can show ``objects/``. A server this workspace started before and that is still healthy (and
    still accepts the stored token) is reused as it is.
    """
    entry = ws.config.get("annotate", {}).get("server") or {}
    if (
        entry.get("managed")
        and entry.get("pid")
        and _is_label_studio(int(entry["pid"]))
        and health(entry["url"])
    ):
        stored = _read_secret(token_path(ws))
        admin = _read_secret(Path(entry["data_dir"]) / ADMIN_FILE)
        if stored.get("api_key") and token_works(entry["url"], stored["api_key"]):
            log(f"Label Studio already running on {entry['url']} (pid {entry['pid']})")
            return ManagedServer(
                url=entry["url"],
                pid=int(entry["pid"]),
                port=int(entry["port"]),
                data_dir=Path(entry["data_dir"]),
                document_root=ws.root,
                admin_email=str(admin.get("email", "")),
                admin_password=str(admin.get("password", "")),
                api_key=stored["api_key"],
            )
    config = ServerConfig(
        data_dir=data_dir or ws.root / "labelstudio",
        port=port or int(entry.get("port") or 0),
        document_root=ws.root,
        venv=venv,
        startup_timeout=startup_timeout,
    )
    server = start_server(config, log=log)
    save_connection(ws, Connection(server.url, server.api_key, True, ws.root), server)
    return server


def stop(ws: Workspace) -> bool:
    """Stop the Label Studio that :func:`serve` started for this workspace; return whether one was running."""
    annotate = ws.config.get("annotate", {})
    entry = annotate.get("server") or {}
    if not entry.get("managed") or not entry.get("pid"):
        return False
    stopped = stop_server(int(entry["pid"]))
    entry["pid"] = None
    ws.save_config()
    return stopped
