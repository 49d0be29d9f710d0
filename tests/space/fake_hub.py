"""A small stand-in for the Hub API on loopback: the endpoints huggingface_hub 2.4 calls for
`create_repo`, `upload_folder` / `upload_file` (regular commits) and `list_repo_files`.

It keeps repos in memory, records every request, checks the bearer token, and can be told to refuse
the commit that would add a given path (as a Hub outage midway through a push would).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


@dataclass
class FakeRepo:
    private: bool
    files: dict[str, bytes] = field(default_factory=lambda: {".gitattributes": b"*.safetensors filter=lfs\n"})
    commits: list[dict] = field(default_factory=list)


@dataclass
class FakeHubState:
    token: str
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    # A path whose commit is refused with 403 (a 4xx: huggingface_hub retries 5xx commits for
    # seconds, a refusal it reports at once).
    fail_commit_adding: str | None = None

    def calls(self) -> list[str]:
        return [f"{method} {path}" for method, path in self.requests]


class _Handler(BaseHTTPRequestHandler):
    state: FakeHubState  # set on the subclass made per server

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    # -- plumbing ------------------------------------------------------------------------------

    def _reply(self, status: int, body) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _authorised(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {self.state.token}":
            return True
        self._reply(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def _route(self, method: str) -> None:
        path = urlsplit(self.path).path
        self.state.requests.append((method, path))
        if not self._authorised():
            return
        parts = [unquote(part) for part in path.strip("/").split("/")]
        if method == "POST" and parts == ["api", "repos", "create"]:
            return self._create_repo(json.loads(self._body()))
        if method == "POST" and parts == ["api", "validate-yaml"]:
            return self._reply(200, {"errors": [], "warnings": []})
        if len(parts) >= 6 and parts[:2] == ["api", "models"]:
            repo_id, action = f"{parts[2]}/{parts[3]}", parts[4]
            repo = self.state.repos.get(repo_id)
            if repo is None:
                return self._reply(404, {"error": "Repository not found"})
            if method == "POST" and action == "preupload":
                return self._preupload(json.loads(self._body()))
            if method == "POST" and action == "commit":
                return self._commit(repo_id, repo, self._body())
            if method == "GET" and action == "tree":
                return self._reply(200, [_tree_entry(p, c) for p, c in sorted(repo.files.items())])
        self._reply(404, {"error": f"stand-in Hub has no route {method} {path}"})

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    # -- endpoints -----------------------------------------------------------------------------

    def _create_repo(self, payload: dict) -> None:
        repo_id = f"{payload['organization']}/{payload['name']}"
        if repo_id in self.state.repos:
            return self._reply(409, {"error": "You already created this model repo", "url": self._url(repo_id)})
        self.state.repos[repo_id] = FakeRepo(private=payload.get("visibility") == "private")
        self._reply(200, {"url": self._url(repo_id)})

    def _preupload(self, payload: dict) -> None:
        # Small files go as regular git blobs; the tests keep every file small.
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in payload["files"]]
        self._reply(200, {"files": files})

    def _commit(self, repo_id: str, repo: FakeRepo, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        added = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}
        deleted = [line["value"]["path"] for line in lines if line["key"] == "deletedFile"]
        if self.state.fail_commit_adding in added:
            return self._reply(403, {"error": "stand-in Hub: storage quota exceeded"})
        for path in deleted:
            repo.files.pop(path, None)
        repo.files.update(added)
        oid = hashlib.sha1(f"{repo_id}-{len(repo.commits)}".encode()).hexdigest()
        repo.commits.append({"oid": oid, "summary": header["summary"], "added": sorted(added), "deleted": deleted})
        self._reply(200, {"commitUrl": f"{self._url(repo_id)}/commit/{oid}", "commitOid": oid})

    def _url(self, repo_id: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{repo_id}"


def _tree_entry(path: str, content: bytes) -> dict:
    return {"type": "file", "path": path, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}


class FakeHub:
    """Runs the stand-in on 127.0.0.1 in a thread; use as a context manager."""

    def __init__(self, token: str = "hf_test_token"):
        self.state = FakeHubState(token=token)
        handler = type("Handler", (_Handler,), {"state": self.state})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
