"""A stand-in for the Hugging Face Hub: a small HTTP server on 127.0.0.1 that the real
`huggingface_hub` client talks to through HF_ENDPOINT.

It serves only what `snapshot_download`, `repo_info`/`model_info`/`dataset_info` and
`hf_hub_download` request (read from huggingface_hub's own source), with the hub's answers:

    GET  /api/{models|datasets}/{owner}/{name}[/revision/{rev}]     repository info (sha, siblings)
    GET  /api/{models|datasets}/{owner}/{name}/tree/{rev}[/{path}]  file listing (oid, size, lfs)
    HEAD|GET /{owner}/{name}/resolve/{rev}/{file}                   a model file
    HEAD|GET /datasets/{owner}/{name}/resolve/{rev}/{file}          a dataset file

with `X-Repo-Commit`, `ETag` (git blob sha1, or sha256 for LFS files as the hub does),
`Content-Length`, and the hub's error codes (`X-Error-Code`: RepoNotFound, GatedRepo,
RevisionNotFound, EntryNotFound) with the hub's statuses: 401 without a token where the
hub says 401, 403 for a token without access to a gated repository. It is as strict as
the hub on what these tests touch, and nothing more: no uploads, no xet, no pagination.
Every request is logged, so a test can prove a job made none.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS = (".safetensors", ".parquet", ".bin")  # stored with git-lfs on the hub
_INFO = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+?)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/(models|datasets)/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


@dataclass
class Repo:
    files: dict[str, bytes]
    gated: bool = False  # files only for a token in `allowed`
    allowed: tuple[str, ...] = ()
    truncated: tuple[str, ...] = ()  # files whose download breaks off half-way

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in sorted(self.files):
            digest.update(name.encode() + self.oid(name).encode())
        return digest.hexdigest()

    def oid(self, name: str) -> str:
        data = self.files[name]
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def etag(self, name: str) -> str:
        return hashlib.sha256(self.files[name]).hexdigest() if name.endswith(LFS) else self.oid(name)


@dataclass
class StandInHub:
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (type "model"/"dataset", id) → repo
    requests: list[tuple[str, str]] = field(default_factory=list)

    def add(self, repo_type: str, repo_id: str, files: dict[str, bytes] | Path, **options) -> Repo:
        if isinstance(files, Path):
            files = {str(p.relative_to(files)): p.read_bytes() for p in sorted(files.rglob("*")) if p.is_file()}
        self.repos[(repo_type, repo_id)] = repo = Repo(dict(files), **options)
        return repo

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            state = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    state: StandInHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: the requests list is the log
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    # -- routing ----------------------------------------------------------------------------

    def _answer(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.state.requests.append((self.command, path))
        if m := _TREE.match(path):
            return self._tree(m.group(1)[:-1], m.group(2), m.group(3), m.group(4) or "")
        if m := _INFO.match(path):
            return self._info(m.group(1)[:-1], m.group(2), m.group(3) or "main")
        if m := _RESOLVE.match(path):
            return self._file("dataset" if m.group(1) else "model", m.group(2), m.group(3), m.group(4), body)
        self._error(404, "", "Not Found")

    def _repo(self, repo_type: str, repo_id: str, revision: str) -> Repo | None:
        repo = self.state.repos.get((repo_type, repo_id))
        if repo is None:  # the hub answers 401 to an anonymous request, 404 to an authenticated one
            status = 404 if self.headers.get("Authorization") else 401
            self._error(status, "RepoNotFound", "Repository not found")
            return None
        if revision not in ("main", repo.sha):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    # -- endpoints ----------------------------------------------------------------------------

    def _info(self, repo_type: str, repo_id: str, revision: str) -> None:
        repo = self._repo(repo_type, repo_id, revision)
        if repo is None:
            return
        info = {"_id": hashlib.md5(repo_id.encode()).hexdigest()[:24], "id": repo_id, "sha": repo.sha,
                "private": False, "gated": "manual" if repo.gated else False, "disabled": False,
                "downloads": 0, "likes": 0, "tags": [], "lastModified": "2025-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": name} for name in sorted(repo.files)]}
        if repo_type == "model":
            info["modelId"] = repo_id
        self._json(info, repo.sha)

    def _tree(self, repo_type: str, repo_id: str, revision: str, under: str) -> None:
        repo = self._repo(repo_type, repo_id, revision)
        if repo is None:
            return
        prefix = f"{under.rstrip('/')}/" if under else ""
        entries, folders = [], set()
        for name in sorted(repo.files):
            if not name.startswith(prefix):
                continue
            parts = name.split("/")
            folders |= {"/".join(parts[:i]) for i in range(1, len(parts))}
            entry = {"type": "file", "oid": repo.oid(name), "size": len(repo.files[name]), "path": name}
            if name.endswith(LFS):
                entry["lfs"] = {"oid": repo.etag(name), "size": len(repo.files[name]), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                    for f in sorted(folders) if f.startswith(prefix)]
        self._json(entries, repo.sha)

    def _file(self, repo_type: str, repo_id: str, revision: str, name: str, body: bool) -> None:
        repo = self._repo(repo_type, repo_id, revision)
        if repo is None:
            return
        if repo.gated:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if token not in repo.allowed:
                status = 403 if token else 401
                return self._error(status, "GatedRepo", "Access to model is restricted", repo.sha)
        if name not in repo.files:
            return self._error(404, "EntryNotFound", "Entry not found", repo.sha)
        data = repo.files[name]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", f'"{repo.etag(name)}"')
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Accept-Ranges", "bytes")
        if name in repo.truncated:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if body:
            self.wfile.write(data[: len(data) // 2] if name in repo.truncated else data)

    # -- answers ------------------------------------------------------------------------------

    def _json(self, value, sha: str) -> None:
        data = json.dumps(value).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Repo-Commit", sha)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, code: str, message: str, sha: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if sha:
            self.send_header("X-Repo-Commit", sha)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
