"""A strict local Hugging Face Hub for tests: the routes the real `huggingface_hub` client (2.x) uses, nothing more.

    server = LocalHub(tokens={"hf_alice_token": "alice"}).start()
    # in a subprocess: HF_ENDPOINT=server.url HF_HUB_DISABLE_XET=1 HF_TOKEN=hf_alice_token ...
    server.files("alice/model")          # {path: bytes} at `main`
    server.log                           # every request: method, path, auth, status
    server.problems                      # requests the server did not understand (a test must keep this empty)

Facts about the protocol come from /work/shared/HUB-API.md and were checked against this server's own log.
An unknown route, an unexpected repo type or a malformed body answers 400 and is recorded in `problems`, so the
fixture cannot hide a client call it does not understand. Tokens are never stored in the log.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import re
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

# What the real Hub stores with git-lfs by default (its `.gitattributes`), plus big or binary files.
LFS_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.msgpack", "*.model")
LFS_THRESHOLD = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS)


def git_blob_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Repo:
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit sha -> {path: content}
    lfs_paths: set[str] = field(default_factory=set)
    messages: dict[str, str] = field(default_factory=dict)  # commit sha -> summary


class LocalHub:
    """The server state plus a threaded HTTP server on 127.0.0.1 and a free port."""

    def __init__(self, tokens: dict[str, str], orgs: dict[str, list[str]] | None = None):
        self.tokens = tokens  # token -> user name
        self.orgs = orgs or {}  # user -> organisations they may write to
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.log: list[dict] = []
        self.problems: list[str] = []
        self.fail_next: dict[str, int] = {}  # route kind ("commit", "preupload", ...) -> how many 500s to answer
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    # --- life cycle -------------------------------------------------------------------------------------------
    def start(self) -> LocalHub:
        hub = self

        class Handler(_Handler):
            server_state = hub

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # --- helpers for tests --------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], private: bool = False) -> str:
        """Host a repo (e.g. a base model under its Hub id) as one commit on `main`; returns the commit sha."""
        repo = self.repos.setdefault(repo_id, Repo(owner=repo_id.split("/")[0], private=private))
        return self._commit(repo, "main", dict(files), "initial upload")

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return dict(repo.commits[self._resolve(repo, revision)])

    def head(self, repo_id: str, revision: str = "main") -> str:
        return self._resolve(self.repos[repo_id], revision)

    # --- internals ------------------------------------------------------------------------------------------------
    def _commit(self, repo: Repo, branch: str, files: dict[str, bytes], summary: str) -> str:
        sha = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        for path, content in files.items():
            if _is_lfs(path, content):
                repo.lfs_paths.add(path)
        repo.commits[sha] = files
        repo.messages[sha] = summary
        repo.branches[branch] = sha
        return sha

    @staticmethod
    def _resolve(repo: Repo, revision: str) -> str:
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        raise KeyError(revision)


def _is_lfs(path: str, content: bytes) -> bool:
    name = path.rsplit("/", 1)[-1]
    return len(content) > LFS_THRESHOLD or b"\0" in content[:512] or any(fnmatch.fnmatch(name, p) for p in LFS_PATTERNS)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
REV = r"(?P<rev>[^/]+)"


class _Handler(BaseHTTPRequestHandler):
    server_state: LocalHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - the log is `server_state.log`, not stderr
        pass

    # One table of routes: (method, regex, handler name). Anything else is a loud failure.
    ROUTES = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("GET", r"/api/agent-harnesses", "harnesses"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("POST", rf"/api/models/{REPO}/branch/{REV}", "create_branch"),
        ("PUT", rf"/api/models/{REPO}/settings", "repo_settings"),
        ("GET", rf"/api/models/{REPO}(?:/revision/{REV})?", "repo_info"),
        ("GET", rf"/api/models/{REPO}/tree/{REV}(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"/api/models/{REPO}/preupload/{REV}", "preupload"),
        ("POST", rf"/api/models/{REPO}/commit/{REV}", "commit"),
        ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
        ("PUT", r"/lfs-upload/(?P<oid>[0-9a-f]{64})", "lfs_upload"),
        ("POST", r"/lfs-verify/(?P<oid>[0-9a-f]{64})", "lfs_verify"),
        ("HEAD", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
        ("GET", rf"/{REPO}/resolve/{REV}/(?P<path>.+)", "resolve"),
    ]
    # Requests the real client sends without a token.
    ANONYMOUS = {"harnesses", "validate_yaml", "lfs_upload", "resolve", "repo_info", "tree"}
    # Route kinds whose 5xx the tests may inject with `fail_next`.
    FAILABLE = {"preupload", "commit", "lfs_batch", "lfs_upload", "lfs_verify", "create_repo"}

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def do_DELETE(self):
        self._dispatch("DELETE")

    # --- plumbing -----------------------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        hub = self.server_state
        parts = urlsplit(self.path)
        self.query = parse_qs(parts.query)
        self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        entry = {"method": method, "path": parts.path, "auth": self._auth_state(), "status": None}
        with hub._lock:
            hub.log.append(entry)
        found = next(
            (
                (name, m)
                for verb, pattern, name in self.ROUTES
                if verb == method and (m := re.fullmatch(pattern, parts.path))
            ),
            None,
        )
        if found is None:
            self._problem(entry, f"unknown route {method} {self.path}")
            return
        name, match = found
        params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
        entry["route"] = name
        try:
            user = self._user(name)
            with hub._lock:
                if hub.fail_next.get(name, 0) > 0 and name in self.FAILABLE:
                    hub.fail_next[name] -= 1
                    raise HubError(500, "Internal Error - injected by the test")
                status, payload, headers = getattr(self, f"_{name}")(user=user, **params)
        except HubError as error:
            headers = {"X-Error-Message": error.message}
            if error.code:
                headers["X-Error-Code"] = error.code
            headers.update(error.extra.get("headers", {}))
            status, payload = error.status, {"error": error.message, **error.extra.get("body", {})}
        except (ValueError, KeyError, TypeError) as error:  # a malformed body: the client sent something unexpected
            self._problem(entry, f"malformed request {method} {self.path}: {error!r}")
            return
        entry["status"] = status
        self._send(status, payload, headers, head_only=method == "HEAD")

    def _auth_state(self) -> str | None:
        header = self.headers.get("Authorization")
        if header is None:
            return None
        token = header.removeprefix("Bearer ")
        return "valid" if token in self.server_state.tokens else "wrong"

    def _user(self, route: str) -> str | None:
        header = self.headers.get("Authorization")
        if header is None:
            if route in self.ANONYMOUS:
                return None
            raise HubError(401, "Invalid credentials in Authorization header")
        user = self.server_state.tokens.get(header.removeprefix("Bearer "))
        if user is None:  # a wrong token is rejected everywhere
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def _problem(self, entry: dict, message: str) -> None:
        self.server_state.problems.append(message)
        entry["status"] = 400
        self._send(400, {"error": f"local test Hub does not understand: {message}"}, {})

    def _send(self, status: int, payload, headers: dict, head_only: bool = False) -> None:
        if isinstance(payload, bytes):
            body, content_type = payload, "application/octet-stream"
        else:
            body, content_type = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(headers.pop("Content-Length", len(body))))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if not head_only:
            self.wfile.write(body)

    def _json(self) -> dict:
        value = json.loads(self.body or b"null")
        if not isinstance(value, dict):
            raise ValueError("expected a JSON object")
        return value

    def _repo(self, repo_id: str, user: str | None, write: bool = False) -> Repo:
        repo = self.server_state.repos.get(repo_id)
        if repo is None or (
            repo.private and user != repo.owner and repo.owner not in self.server_state.orgs.get(user, [])
        ):
            raise HubError(404, "Repository not found", "RepoNotFound")
        if write and not self._may_write(user, repo.owner):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _may_write(self, user: str | None, owner: str) -> bool:
        return user is not None and (owner == user or owner in self.server_state.orgs.get(user, []))

    def _revision(self, repo_id: str, repo: Repo, rev: str) -> str:
        try:
            return LocalHub._resolve(repo, rev)
        except KeyError:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound") from None

    # --- routes ---------------------------------------------------------------------------------------------------
    def _whoami(self, user):
        return (
            200,
            {"type": "user", "name": user, "orgs": [{"name": o} for o in self.server_state.orgs.get(user, [])]},
            {},
        )

    def _harnesses(self, user):  # the client expects this shape (a list breaks its agent detection)
        return 200, {"standardEnvVars": [], "harnesses": {}}, {}

    def _validate_yaml(self, user):
        import yaml

        body = self._json()
        if body.get("repoType") not in (None, "model"):
            raise ValueError(f"unexpected repoType {body.get('repoType')}")
        metadata = yaml.safe_load(body["content"].split("---")[1]) if body["content"].startswith("---") else {}
        errors = [] if isinstance(metadata, dict) else [{"message": "metadata is not a mapping"}]
        return 200, {"errors": errors, "warnings": []}, {}

    def _create_repo(self, user):
        body = self._json()
        unknown = set(body) - {"name", "organization", "type", "private", "visibility"}
        if unknown:
            raise ValueError(f"unknown create-repo fields {sorted(unknown)}")
        if body.get("type", "model") != "model":
            raise ValueError(f"only model repos are served, got type {body.get('type')!r}")
        owner = body.get("organization") or user
        repo_id = f"{owner}/{body['name']}"
        url = f"{self.server_state.url}/{repo_id}"
        if repo_id in self.server_state.repos:
            raise HubError(409, "You already created this model repo", extra={"body": {"url": url}})
        if not self._may_write(user, owner):
            raise HubError(403, f"You don't have the rights to create a model under the namespace {owner}")
        repo = self.server_state.repos[repo_id] = Repo(
            owner=owner, private=body.get("visibility") == "private" or bool(body.get("private"))
        )
        self.server_state._commit(repo, "main", {".gitattributes": GITATTRIBUTES.encode()}, "initial commit")
        return 200, {"url": url, "name": repo_id}, {}

    def _repo_settings(self, user, repo):
        body = self._json()
        unknown = set(body) - {"visibility", "gated"}
        if unknown or body.get("visibility") not in (None, "private", "public"):
            raise ValueError(f"unexpected repo settings {body}")
        repository = self._repo(repo, user, write=True)
        if "visibility" in body:
            repository.private = body["visibility"] == "private"
        return 200, {}, {}

    def _create_branch(self, user, repo, rev):
        repository = self._repo(repo, user, write=True)
        if rev in repository.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{rev}")
        start = (self._json() if self.body else {}).get("startingPoint") or "main"
        repository.branches[rev] = self._revision(repo, repository, start)
        return 200, {}, {}

    def _repo_info(self, user, repo, rev="main"):
        repository = self._repo(repo, user)
        sha = self._revision(repo, repository, rev)
        siblings = [{"rfilename": path} for path in sorted(repository.commits[sha])]
        info = {"id": repo, "modelId": repo, "sha": sha, "private": repository.private, "siblings": siblings}
        return 200, {**info, "author": repository.owner, "tags": [], "downloads": 0, "likes": 0}, {}

    def _tree(self, user, repo, rev, path=""):
        repository = self._repo(repo, user)
        files = repository.commits[self._revision(repo, repository, rev)]
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        prefix = f"{path.rstrip('/')}/" if path else ""
        entries, folders = [], set()
        for name, content in sorted(files.items()):
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix) :]
            if "/" in rest and not recursive:
                folders.add(prefix + rest.split("/")[0])
                continue
            entry = {"type": "file", "path": name, "size": len(content), "oid": git_blob_oid(content)}
            if name in repository.lfs_paths:
                entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": folder, "oid": "0" * 40, "size": 0} for folder in sorted(folders)]
        return 200, entries, {}

    def _preupload(self, user, repo, rev):
        repository = self._repo(repo, user, write=True)
        self._revision(repo, repository, rev)
        files = []
        for item in self._json()["files"]:
            sample = base64.b64decode(item["sample"])
            lfs = item["size"] > LFS_THRESHOLD or _is_lfs(item["path"], sample)
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return 200, {"files": files, "commitOid": repository.branches.get(rev, rev)}, {}

    def _lfs_batch(self, user, repo):
        self._repo(repo, user, write=True)
        body = self._json()
        if body.get("operation") != "upload" or body.get("hash_algo", "sha256") != "sha256":
            raise ValueError(f"unexpected LFS batch {body.get('operation')}/{body.get('hash_algo')}")
        objects = []
        for obj in body["objects"]:
            oid, size = obj["oid"], int(obj["size"])
            answer = {"oid": oid, "size": size}
            if oid not in self.server_state.lfs:
                signature = quote(hashlib.sha256(f"{oid}{repo}".encode()).hexdigest()[:16])
                answer["actions"] = {
                    "upload": {"href": f"{self.server_state.url}/lfs-upload/{oid}?sig={signature}"},
                    "verify": {"href": f"{self.server_state.url}/lfs-verify/{oid}"},
                }
            objects.append(answer)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _lfs_upload(self, user, oid):
        if not self.query.get("sig"):
            raise HubError(403, "unsigned upload link")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise ValueError("uploaded bytes do not match their sha256")
        self.server_state.lfs[oid] = self.body
        return 200, {}, {}

    def _lfs_verify(self, user, oid):
        body = self._json()
        if body["oid"] != oid or oid not in self.server_state.lfs or len(self.server_state.lfs[oid]) != body["size"]:
            raise HubError(404, "object not uploaded")
        return 200, {}, {}

    def _commit(self, user, repo, rev):
        repository = self._repo(repo, user, write=True)
        if self.query.get("create_pr", ["0"])[0] not in ("0", "false", "False"):
            raise ValueError("pull requests are not served")
        lines = [json.loads(line) for line in self.body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            raise ValueError("a commit starts with a header line")
        header = lines[0]["value"]
        if rev not in repository.branches:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        files = dict(repository.commits[repository.branches[rev]])
        parent = header.get("parentCommit")
        if parent and parent != repository.branches[rev]:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise ValueError(f"unexpected encoding {value.get('encoding')}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                if value.get("algo", "sha256") != "sha256" or value["oid"] not in self.server_state.lfs:
                    raise HubError(422, f"LFS object {value['oid']} was not uploaded")
                files[value["path"]] = self.server_state.lfs[value["oid"]]
                repository.lfs_paths.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"])
            elif key == "deletedFolder":
                files = {p: c for p, c in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            else:
                raise ValueError(f"unknown commit operation {key}")
        sha = self.server_state._commit(repository, rev, files, header["summary"])
        commit_url = f"{self.server_state.url}/{repo}/commit/{sha}"
        return 200, {"commitUrl": commit_url, "commitOid": sha, "success": True}, {}

    def _resolve(self, user, repo, rev, path):
        repository = self.server_state.repos.get(repo)
        if repository is None or (repository.private and user != repository.owner):
            raise HubError(404, "Repository not found", "RepoNotFound")
        sha = self._revision(repo, repository, rev)
        files = repository.commits[sha]
        if path not in files:
            raise HubError(404, "Entry not found", "EntryNotFound", extra={"headers": {"X-Repo-Commit": sha}})
        content = files[path]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{git_blob_oid(content)}"', "Content-Length": len(content)}
        if path in repository.lfs_paths:
            sha256 = hashlib.sha256(content).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha256}"', "X-Linked-Size": str(len(content)), "ETag": f'"{sha256}"'})
        return 200, content, headers
