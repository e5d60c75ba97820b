"""A fake Hugging Face Hub: the part of the Hub's HTTP API that ``huggingface_hub`` uses to publish a dataset.

It runs on a :class:`~httpfixtures.LoopbackServer` (a real aiohttp server on loopback), so the real
``huggingface_hub`` client talks real HTTP to it. Implemented, with the Hub's request and response shapes:

* ``POST /api/repos/create`` (409 when the repository exists; a new repository has a first commit with
  ``.gitattributes``, as on the Hub);
* ``GET /api/datasets/{repo}/refs``, ``GET /api/datasets/{repo}[/revision/{rev}]`` (repo info);
* ``GET /api/datasets/{repo}/tree/{rev}[/{path}]`` (``recursive``, with LFS metadata);
* ``POST /api/validate-yaml`` (the card's YAML front matter must parse);
* ``POST /api/datasets/{repo}/preupload/{rev}`` (upload mode ``lfs`` for parquet and large files, the remote oid of
  files already there);
* the git-LFS batch API ``POST /datasets/{repo}.git/info/lfs/objects/batch`` with ``basic`` upload and verify
  actions, ``PUT`` uploads checked against their sha256;
* ``POST /api/datasets/{repo}/commit/{rev}`` (the NDJSON commit: ``header``, ``file``, ``lfsFile``,
  ``deletedFile``, ``deletedFolder``);
* ``POST /api/datasets/{repo}/tag/{rev}`` (409 when the tag exists);
* ``GET|HEAD /datasets/{repo}/resolve/{rev}/{path}`` (downloads).

Write requests need ``Authorization: Bearer <token>``. Every request is recorded by the server. The Xet protocol
is not implemented (it needs Hugging Face's CAS service): clients must upload with git-LFS.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from aiohttp import web
from httpfixtures import Handler, LoopbackServer

LFS_THRESHOLD = 10 * 1024 * 1024
_GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "path": path, "size": len(self.data)}
        if self.lfs:
            sha = hashlib.sha256(self.data).hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(self.data)}\n"
            entry["oid"] = git_blob_id(pointer.encode())
            entry["lfs"] = {"oid": sha, "size": len(self.data), "pointerSize": len(pointer)}
        else:
            entry["oid"] = git_blob_id(self.data)
        return entry


@dataclass
class Commit:
    oid: str
    title: str
    files: dict[str, StoredFile]
    parent: str | None


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        oid = self.branches.get(revision) or self.tags.get(revision) or revision
        return self.commits.get(oid)


class FakeHub:
    """The fake Hub's state and request handling; :meth:`serve` starts it on a loopback server."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.lfs_uploads = 0
        self.commit_requests = 0
        self.server: LoopbackServer | None = None

    # -- server ------------------------------------------------------------------------------------------------
    def serve(self) -> LoopbackServer:
        server = LoopbackServer()
        server.routes = _Routes(self.handle)
        self.server = server.start()
        return self.server

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.base_url

    # -- helpers -------------------------------------------------------------------------------------------------
    def _authorised(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"Bearer {self.token}"

    def _new_commit(self, repo: Repo, title: str, files: dict[str, StoredFile], parent: str | None) -> Commit:
        digest = hashlib.sha1(f"{repo.repo_id}:{len(repo.commits)}:{title}".encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha256(files[path].data).digest())
        commit = Commit(digest.hexdigest(), title, files, parent)
        repo.commits[commit.oid] = commit
        return commit

    def files_at(self, repo_id: str, revision: str) -> dict[str, bytes]:
        """``{path: bytes}`` of ``repo_id`` at ``revision`` (test helper)."""
        commit = self.repos[repo_id].resolve(revision)
        assert commit is not None, revision
        return {path: f.data for path, f in commit.files.items()}

    # -- dispatch ----------------------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        for pattern, method, handler in self._table():
            match = re.fullmatch(pattern, path)
            if match and request.method in method:
                return await handler(request, *match.groups())
        return _error(404, f"fake hub: no route for {request.method} {path}")

    def _table(self) -> list[tuple[str, tuple[str, ...], Any]]:
        repo = r"([^/]+/[^/]+)"
        return [
            (r"/api/repos/create", ("POST",), self.create_repo),
            (r"/api/validate-yaml", ("POST",), self.validate_yaml),
            (rf"/api/datasets/{repo}/refs", ("GET",), self.refs),
            (rf"/api/datasets/{repo}/tree/([^/]+)(?:/(.*))?", ("GET",), self.tree),
            (rf"/api/datasets/{repo}/preupload/([^/]+)", ("POST",), self.preupload),
            (rf"/api/datasets/{repo}/commit/([^/]+)", ("POST",), self.commit),
            (rf"/api/datasets/{repo}/tag/([^/]+)", ("POST",), self.tag),
            (rf"/api/datasets/{repo}/revision/([^/]+)", ("GET",), self.repo_info),
            (rf"/api/datasets/{repo}", ("GET",), self.repo_info),
            (rf"/datasets/{repo}\.git/info/lfs/objects/batch", ("POST",), self.lfs_batch),
            (r"/lfs/upload/([0-9a-f]{64})", ("PUT",), self.lfs_upload),
            (r"/lfs/verify", ("POST",), self.lfs_verify),
            (rf"/datasets/{repo}/resolve/([^/]+)/(.+)", ("GET", "HEAD"), self.resolve),
        ]

    # -- endpoints -----------------------------------------------------------------------------------------------
    async def create_repo(self, request: web.Request) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "Invalid credentials in Authorization header")
        body = await request.json()
        if body.get("type") != "dataset":
            return _error(400, "the fake hub only hosts datasets")
        repo_id = f"{body.get('organization') or 'user'}/{body['name']}"
        if repo_id in self.repos:  # the Hub answers a conflict with the existing repository's URL
            return web.json_response(
                {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo_id}"},
                status=409,
                headers={"X-Error-Message": "You already created this dataset repo"},
            )
        repo = Repo(repo_id, bool(body.get("private")) or body.get("visibility") == "private")
        first = self._new_commit(
            repo, "initial commit", {".gitattributes": StoredFile(_GITATTRIBUTES, False)}, None
        )
        repo.branches["main"] = first.oid
        self.repos[repo_id] = repo
        return web.json_response({"url": f"{self.url}/datasets/{repo_id}", "name": repo_id, "id": repo_id})

    async def validate_yaml(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        content = str(body.get("content", ""))
        match = re.match(r"^---\n(.*?)\n---\n", content, re.S)
        if not match:
            return web.json_response(
                {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]}
            )
        try:
            meta = yaml.safe_load(match.group(1))
        except yaml.YAMLError as exc:
            return web.json_response({"errors": [{"message": f"invalid YAML: {exc}"}]}, status=400)
        if not isinstance(meta, dict):
            return web.json_response({"errors": [{"message": "metadata must be a mapping"}]}, status=400)
        return web.json_response({"errors": [], "warnings": []})

    def _repo(self, repo_id: str) -> Repo | None:
        return self.repos.get(repo_id)

    async def refs(self, request: web.Request, repo_id: str) -> web.StreamResponse:
        repo = self._repo(repo_id)
        if repo is None:
            return _error(404, "Repository not found", code="RepoNotFound")

        def ref(name: str, kind: str, oid: str) -> dict[str, str]:
            return {"name": name, "ref": f"refs/{kind}/{name}", "targetCommit": oid}

        return web.json_response(
            {
                "branches": [ref(n, "heads", o) for n, o in repo.branches.items()],
                "tags": [ref(n, "tags", o) for n, o in repo.tags.items()],
                "converts": [],
            }
        )

    async def tree(
        self, request: web.Request, repo_id: str, revision: str, sub: str | None
    ) -> web.StreamResponse:
        repo = self._repo(repo_id)
        commit = repo.resolve(revision) if repo else None
        if repo is None or commit is None:
            return _error(404, "Revision not found", code="RevisionNotFound")
        recursive = request.query.get("recursive", "").lower() in ("1", "true")
        prefix = f"{sub.rstrip('/')}/" if sub else ""
        entries: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and folder not in folders:
                    folders.add(folder)
                    entries.append({"type": "directory", "path": folder, "oid": git_blob_id(folder.encode())})
            if recursive or len(parts) == 1:
                entries.append(commit.files[path].tree_entry(path))
        return web.json_response(entries)

    async def repo_info(
        self, request: web.Request, repo_id: str, revision: str = "main"
    ) -> web.StreamResponse:
        repo = self._repo(repo_id)
        commit = repo.resolve(revision) if repo else None
        if repo is None or commit is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        return web.json_response(
            {
                "id": repo_id,
                "author": repo_id.split("/")[0],
                "sha": commit.oid,
                "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(commit.files)],
                "tags": [],
            }
        )

    async def preupload(self, request: web.Request, repo_id: str, revision: str) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "Invalid credentials in Authorization header")
        repo = self._repo(repo_id)
        commit = repo.resolve(revision) if repo else None
        if repo is None or commit is None:
            return _error(404, "Repository not found", code="RepoNotFound")
        body = await request.json()
        files = []
        for entry in body["files"]:
            path, size = entry["path"], int(entry["size"])
            lfs = path.endswith(".parquet") or size >= LFS_THRESHOLD
            stored = commit.files.get(path)
            oid = None
            if stored is not None:
                oid = hashlib.sha256(stored.data).hexdigest() if stored.lfs else git_blob_id(stored.data)
            files.append(
                {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid}
            )
        return web.json_response({"files": files, "commitOid": commit.oid})

    async def lfs_batch(self, request: web.Request, repo_id: str) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "Invalid credentials in Authorization header")
        body = json.loads(await request.read())
        objects = []
        for obj in body["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            entry: dict[str, Any] = {"oid": oid, "size": size}
            if oid not in self.lfs:
                entry["actions"] = {
                    "upload": {"href": f"{self.url}/lfs/upload/{oid}", "header": {}},
                    "verify": {"href": f"{self.url}/lfs/verify", "header": {}},
                }
            objects.append(entry)
        return web.Response(
            text=json.dumps({"transfer": "basic", "objects": objects}),
            content_type="application/vnd.git-lfs+json",
        )

    async def lfs_upload(self, request: web.Request, oid: str) -> web.StreamResponse:
        data = await request.content.read()  # streamed: no client_max_size limit, as on the real LFS storage
        if hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "sha256 mismatch")
        self.lfs[oid] = data
        self.lfs_uploads += 1
        return web.Response(status=200)

    async def lfs_verify(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if body.get("oid") not in self.lfs or len(self.lfs[body["oid"]]) != body.get("size"):
            return _error(404, "object not uploaded")
        return web.json_response({"success": True})

    async def commit(self, request: web.Request, repo_id: str, revision: str) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "Invalid credentials in Authorization header")
        self.commit_requests += 1
        repo = self._repo(repo_id)
        if repo is None or revision not in repo.branches:
            return _error(404, "Repository or branch not found", code="RepoNotFound")
        head = repo.commits[repo.branches[revision]]
        files = dict(head.files)
        title = ""
        for line in (await request.content.read()).decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                title = value["summary"]
            elif key == "file":
                files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    return _error(422, f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = StoredFile(self.lfs[value["oid"]], True)
            elif key == "deletedFile":
                if value["path"] not in files:
                    return _error(404, "A file with this name doesn't exist", code="EntryNotFound")
                del files[value["path"]]
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: f for p, f in files.items() if not p.startswith(folder)}
            else:
                return _error(400, f"unknown commit operation {key}")
        commit = self._new_commit(repo, title, files, head.oid)
        repo.branches[revision] = commit.oid
        return web.json_response(
            {
                "commitUrl": f"{self.url}/datasets/{repo_id}/commit/{commit.oid}",
                "commitOid": commit.oid,
                "pullRequestUrl": None,
            }
        )

    async def tag(self, request: web.Request, repo_id: str, revision: str) -> web.StreamResponse:
        if not self._authorised(request):
            return _error(401, "Invalid credentials in Authorization header")
        repo = self._repo(repo_id)
        commit = repo.resolve(revision) if repo else None
        if repo is None or commit is None:
            return _error(404, "Revision not found", code="RevisionNotFound")
        body = await request.json()
        if body["tag"] in repo.tags:
            return _error(409, f"Tag {body['tag']} already exists")
        repo.tags[body["tag"]] = commit.oid
        return web.json_response({"tag": body["tag"]})

    async def resolve(
        self, request: web.Request, repo_id: str, revision: str, path: str
    ) -> web.StreamResponse:
        repo = self._repo(repo_id)
        commit = repo.resolve(revision) if repo else None
        if repo is None or commit is None or path not in commit.files:
            return _error(404, "Entry not found", code="EntryNotFound")
        stored = commit.files[path]
        etag = hashlib.sha256(stored.data).hexdigest() if stored.lfs else git_blob_id(stored.data)
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{etag}"'}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(stored.data))
            return web.Response(status=200, headers=headers)
        return web.Response(body=stored.data, headers=headers, content_type="application/octet-stream")


class _Routes(dict):  # type: ignore[type-arg]
    """A route table that sends every path to one handler (LoopbackServer looks routes up with ``get``)."""

    def __init__(self, handler: Handler) -> None:
        super().__init__()
        self._handler = handler

    def get(self, key: Any, default: Any = None) -> Any:
        return self._handler


def _error(status: int, message: str, code: str | None = None) -> web.Response:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return web.json_response({"error": message}, status=status, headers=headers)
