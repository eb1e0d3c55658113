"""A local Hub endpoint for the tests: the part of the Hugging Face Hub HTTP API that ``huggingface_hub`` (and,
through it, transformers, PEFT and diffusers) uses to create repositories, upload files, and download them by
revision. A test fixture only: every client in the tests is the real ``huggingface_hub`` code, pointed here with
``HF_ENDPOINT``.

What it speaks (the requests huggingface_hub 2.4 sends, read from its ``hf_api.py``, ``_commit_api.py``,
``lfs.py`` and ``file_download.py``):

- ``POST /api/repos/create`` (``{"name", "organization", "visibility"}``; 409 when it exists), ``GET
  /api/whoami-v2``, ``POST /api/validate-yaml`` (the README metadata must be a YAML mapping);
- ``POST /api/models/{repo}/preupload/{rev}``: per file ``uploadMode`` (``lfs`` for weights and anything over
  10 MB or binary, as the Hub decides from the sample, else ``regular``) and the ``oid`` the branch already holds;
- ``POST /{repo}.git/info/lfs/objects/batch`` (the git-LFS batch API, ``basic`` transfer), ``PUT`` of the blob to
  the returned ``href`` (checked against its sha256), and the ``verify`` call;
- ``POST /api/models/{repo}/commit/{rev}``: the NDJSON commit (a ``header`` line, then ``file`` lines with inline
  base64 content, ``lfsFile`` lines naming an uploaded blob by sha256, ``deletedFile``/``deletedFolder``), with
  ``parentCommit`` checked;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: ``ETag`` (git blob sha1 for regular files), ``X-Repo-Commit``,
  ``Content-Length``; an LFS file answers with a ``302`` to another host (``localhost`` for ``127.0.0.1``, as the
  Hub sends LFS blobs to its CDN) carrying ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``;
- ``GET /api/models/{repo}[/revision/{rev}]`` (model info with siblings and card data), ``.../tree/{rev}[/path]``,
  ``.../refs``, ``.../commits/{rev}``, ``POST .../branch/{name}``.

Errors carry the Hub's ``X-Error-Code`` header (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``), which
huggingface_hub turns into its typed exceptions. A private repository is invisible (401 ``RepoNotFound``) to a
request without an ``Authorization`` header, as on the Hub.

The server speaks git-LFS, not Xet: clients run with ``HF_HUB_DISABLE_XET=1`` (with hf_xet installed they would
otherwise ask for ``xet-write-token``).

Every request is logged in ``HubServer.requests`` so that a test can assert that nothing was uploaded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote

import yaml

USER = "hfgen-tester"
VALID_TOKEN = "hf_local_fixture_token"  # the one token this Hub accepts for writes and private repositories
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".png", ".npy", ".gguf")
REGULAR_MAX_BYTES = 10 * 1024 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as the ETag/oid of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    files: dict[str, bytes]
    lfs: set[str]  # paths stored as LFS blobs
    date: float = field(default_factory=time.time)


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        """A branch, a tag, a full commit id or an unambiguous prefix of one (at least 7 characters)."""
        for refs in (self.branches, self.tags):
            if revision in refs:
                return self.commits[refs[revision]]
        for prefix in ("refs/heads/", "refs/tags/"):
            if revision.startswith(prefix):
                return self.resolve(revision[len(prefix):])
        if re.fullmatch(r"[0-9a-f]{7,40}", revision):
            found = [c for oid, c in self.commits.items() if oid.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class HubServer:
    """The endpoint, serving from a thread. ``url`` is the value for ``HF_ENDPOINT``."""

    def __init__(self, host: str = "127.0.0.1"):
        self.repos: dict[str, Repo] = {}
        self.lfs_store: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.lock = threading.Lock()
        server = self

        class Handler(_Handler):
            hub = server

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.host, self.port = host, self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        # The "CDN" that LFS blobs redirect to: the same server under another host name, so that clients treat
        # it as a foreign host (no redirect following on HEAD, no Authorization header), as they do on the Hub.
        self.cdn_url = f"http://{'localhost' if host == '127.0.0.1' else host}:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def start(self) -> HubServer:
        return self.__enter__()

    def stop(self) -> None:
        self.__exit__()

    # -- state changes ------------------------------------------------------------------------------------------

    def create_repo(self, repo_id: str, private: bool) -> Repo:
        with self.lock:
            if repo_id in self.repos:
                raise HubError(409, "You already created this model repo")
            repo = Repo(repo_id, private)
            first = self._new_commit(repo, None, "initial commit", "", {".gitattributes": GITATTRIBUTES}, set())
            repo.branches["main"] = first.oid
            self.repos[repo_id] = repo
            return repo

    def _new_commit(self, repo: Repo, parent: Commit | None, title: str, message: str, files: dict[str, bytes],
                    lfs: set[str]) -> Commit:
        digest = hashlib.sha1()
        digest.update((parent.oid if parent else "").encode() + title.encode() + message.encode())
        for path in sorted(files):
            digest.update(path.encode() + git_blob_sha1(files[path]).encode())
        digest.update(str(len(repo.commits)).encode())  # two identical commits still get two ids
        commit = Commit(digest.hexdigest(), parent.oid if parent else None, title, message, files, lfs)
        repo.commits[commit.oid] = commit
        return commit

    def commit(self, repo: Repo, branch: str, lines: list[dict]) -> Commit:
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        title = header.get("summary") or ""
        if not title:
            raise HubError(400, "Commit summary is required")
        with self.lock:
            head = repo.resolve(branch)
            if head is None or branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            parent_oid = header.get("parentCommit")
            if parent_oid and not head.oid.startswith(parent_oid):
                raise HubError(412, f"Parent commit {parent_oid} is not the head of {branch} ({head.oid})")
            files, lfs = dict(head.files), set(head.lfs)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                if not path or path.startswith("/") or ".." in path.split("/"):
                    raise HubError(400, f"Invalid path in commit: {path!r}")
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                    files[path] = base64.b64decode(value["content"])
                    lfs.discard(path)
                elif key == "lfsFile":
                    oid = value.get("oid", "")
                    if oid not in self.lfs_store:
                        raise HubError(422, f"LFS object {oid} of {path} was never uploaded")
                    files[path] = self.lfs_store[oid]
                    lfs.add(path)
                elif key == "deletedFile":
                    if path not in files:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                    del files[path]
                    lfs.discard(path)
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for name in [n for n in files if n.startswith(prefix)]:
                        del files[name]
                        lfs.discard(name)
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            commit = self._new_commit(repo, head, title, header.get("description") or "", files, lfs)
            repo.branches[branch] = commit.oid
            return commit


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: the log is HubServer.requests
        pass

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _error(self, error: HubError, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": error.message, **(extra or {})}
        if error.code:
            headers["X-Error-Code"] = error.code
        self._json({"error": error.message}, error.status, headers)

    def _authorized(self) -> bool:
        # As the Hub: a token it did not issue is no login (clients here use VALID_TOKEN).
        return self.headers.get("Authorization", "") == f"Bearer {VALID_TOKEN}"

    def _repo(self, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and not self._authorized()):
            raise HubError(401 if not self._authorized() else 404, "Repository not found", "RepoNotFound")
        return repo

    def _commit(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _dispatch(self) -> None:
        raw_path, _, raw_query = self.path.partition("?")
        self.query = parse_qs(raw_query)
        self.hub.requests.append((self.command, unquote(raw_path)))
        parts = [unquote(p) for p in raw_path.strip("/").split("/")]
        try:
            for pattern, handler in self.ROUTES:
                if pattern[0] == self.command or (pattern[0] == "GET" and self.command == "HEAD"):
                    args = _match(pattern[1:], parts)
                    if args is not None:
                        return handler(self, *args)
            raise HubError(404, f"No route for {self.command} {raw_path} in the local Hub fixture")
        except HubError as error:
            self._error(error)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- account and repositories ---------------------------------------------------------------------------

    def whoami(self):
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        self._json({"type": "user", "name": USER, "fullname": USER, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write", "displayName": "test"}}})

    def create_repo(self):
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        payload = json.loads(self._body() or b"{}")
        if payload.get("type", "model") not in (None, "model"):
            raise HubError(400, "The local Hub fixture serves model repositories only")
        name, namespace = payload.get("name") or "", payload.get("organization") or USER
        if not NAME_RE.match(name) or not NAME_RE.match(namespace):
            raise HubError(400, f"Invalid repo name {namespace}/{name}")
        repo_id = f"{namespace}/{name}"
        try:
            self.hub.create_repo(repo_id, private=payload.get("visibility", "public") == "private")
        except HubError as error:  # the Hub names the existing repository in its 409 answer
            return self._json({"error": error.message, "url": f"{self.hub.url}/{repo_id}"}, error.status,
                              {"X-Error-Message": error.message})
        self._json({"url": f"{self.hub.url}/{repo_id}", "name": repo_id, "id": repo_id})

    def validate_yaml(self):
        payload = json.loads(self._body() or b"{}")
        content = payload.get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        errors = []
        if match:
            try:
                metadata = yaml.safe_load(match.group(1))
            except yaml.YAMLError as error:
                errors.append({"message": f"YAML error: {error}"})
            else:
                if metadata is not None and not isinstance(metadata, dict):
                    errors.append({"message": "Metadata must be a YAML mapping"})
        self._json({"errors": errors, "warnings": []}, 400 if errors else 200)

    def model_info(self, namespace, name, revision=None, *_):
        repo = self._repo(f"{namespace}/{name}")
        commit = self._commit(repo, revision or "main")
        card = _card_data(commit.files.get("README.md", b""))
        self._json({
            "_id": repo.repo_id, "id": repo.repo_id, "modelId": repo.repo_id, "author": repo.repo_id.split("/")[0],
            "sha": commit.oid, "private": repo.private, "gated": False, "disabled": False, "downloads": 0,
            "likes": 0, "tags": card.get("tags") or [], "pipeline_tag": card.get("pipeline_tag"),
            "library_name": card.get("library_name"), "cardData": card or None,
            "lastModified": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date)),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        })

    def tree(self, namespace, name, revision, *path):
        repo = self._repo(f"{namespace}/{name}")
        commit = self._commit(repo, revision)
        prefix = "/".join(path)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        entries, folders = [], set()
        for file_path in sorted(commit.files):
            if prefix and not file_path.startswith(prefix.rstrip("/") + "/"):
                continue
            rest = file_path[len(prefix.rstrip("/")) + 1:] if prefix else file_path
            if "/" in rest and not recursive:
                folders.add((prefix.rstrip("/") + "/" if prefix else "") + rest.split("/")[0])
                continue
            data = commit.files[file_path]
            entry = {"type": "file", "path": file_path, "size": len(data), "oid": git_blob_sha1(data)}
            if file_path in commit.lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        if prefix and not entries and not folders:
            raise HubError(404, f"{prefix} does not exist on {revision}", "EntryNotFound")
        entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
        self._json(entries)

    def refs(self, namespace, name):
        repo = self._repo(f"{namespace}/{name}")
        self._json({
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": o} for b, o in repo.branches.items()],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": o} for t, o in repo.tags.items()],
            "converts": [],
        })

    def commits(self, namespace, name, revision):
        repo = self._repo(f"{namespace}/{name}")
        commit, history = self._commit(repo, revision), []
        while commit is not None:
            history.append({"id": commit.oid, "title": commit.title, "message": commit.message,
                            "authors": [{"user": USER}],
                            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(commit.date))})
            commit = repo.commits.get(commit.parent) if commit.parent else None
        self._json(history)

    def create_branch(self, namespace, name, branch):
        repo = self._repo(f"{namespace}/{name}")
        payload = json.loads(self._body() or b"{}")
        if branch.startswith("refs/") or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch):
            raise HubError(400, f"Invalid reference for a branch: {branch}")
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._commit(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        self._json({})

    # -- upload -------------------------------------------------------------------------------------------------

    def preupload(self, namespace, name, revision):
        repo = self._repo(f"{namespace}/{name}")
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        payload = json.loads(self._body())
        head = repo.resolve(revision)
        answers = []
        for item in payload.get("files", []):
            path, size, sample = item["path"], item["size"], base64.b64decode(item["sample"])
            binary = b"\0" in sample
            mode = "lfs" if path.endswith(LFS_SUFFIXES) or size > REGULAR_MAX_BYTES or binary else "regular"
            oid = None
            if head is not None and path in head.files:
                data = head.files[path]
                oid = hashlib.sha256(data).hexdigest() if path in head.lfs else git_blob_sha1(data)
            answers.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": answers, "commitOid": head.oid if head else None})

    def lfs_batch(self, namespace, name_git, *_):
        if not name_git.endswith(".git"):
            raise HubError(404, "Not a git LFS endpoint")
        repo = self._repo(f"{namespace}/{name_git[:-4]}")
        payload = json.loads(self._body())
        if payload.get("operation") != "upload":
            raise HubError(400, "The local Hub fixture accepts LFS uploads only")
        objects = []
        for obj in payload.get("objects", []):
            answer = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs_store:
                answer["actions"] = {
                    "upload": {"href": f"{self.hub.url}/lfs-upload/{repo.repo_id}/{obj['oid']}/{obj['size']}"},
                    "verify": {"href": f"{self.hub.url}/lfs-verify/{repo.repo_id}"},
                }
            objects.append(answer)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def lfs_upload(self, namespace, name, oid, size):
        # A pre-signed storage URL on the Hub: clients send no Authorization header here.
        if f"{namespace}/{name}" not in self.hub.repos:
            raise HubError(404, "No such upload")
        data = self._body()
        if len(data) != int(size) or hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match LFS object {oid} ({size} bytes)")
        self.hub.lfs_store[oid] = data
        self._send(200, b"", {"ETag": f'"{oid}"'}, "text/plain")

    def lfs_verify(self, namespace, name):
        self._repo(f"{namespace}/{name}")
        payload = json.loads(self._body())
        stored = self.hub.lfs_store.get(payload.get("oid"))
        if stored is None or len(stored) != payload.get("size"):
            raise HubError(404, f"LFS object {payload.get('oid')} not found")
        self._json({"success": True})

    def commit(self, namespace, name, revision):
        repo = self._repo(f"{namespace}/{name}")
        if not self._authorized():
            raise HubError(401, "Invalid credentials in Authorization header")
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-ndjson":
            raise HubError(400, "A commit is an application/x-ndjson payload")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        commit = self.hub.commit(repo, revision, lines)
        self._json({"success": True, "commitOid": commit.oid, "pullRequestUrl": None,
                    "commitUrl": f"{self.hub.url}/{repo.repo_id}/commit/{commit.oid}"})

    # -- download -----------------------------------------------------------------------------------------------

    def resolve(self, namespace, name, revision, *path):
        repo = self._repo(f"{namespace}/{name}")
        commit = self._commit(repo, revision)
        file_path = "/".join(path)
        if file_path not in commit.files:
            # The Hub names the commit it looked in, so that clients can cache the absence of the file.
            return self._error(HubError(404, "Entry not found", "EntryNotFound"), {"X-Repo-Commit": commit.oid})
        data = commit.files[file_path]
        headers = {"X-Repo-Commit": commit.oid, "Accept-Ranges": "bytes"}
        if file_path in commit.lfs:
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"',
                            "Location": f"{self.hub.cdn_url}/lfs-objects/{sha}"})
            return self._send(302, b"", headers, "text/plain")
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._send_data(data, headers)

    def lfs_object(self, oid):
        data = self.hub.lfs_store.get(oid)
        if data is None:
            raise HubError(404, "No such object")
        self._send_data(data, {"ETag": f'"{oid}"'})

    def _send_data(self, data: bytes, headers: dict[str, str]) -> None:
        ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if ranged:  # resumed downloads ask for the rest of a file
            start = int(ranged.group(1))
            end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")

    ROUTES = []


def _card_data(readme: bytes) -> dict:
    match = re.match(r"^---\s*\n(.*?)\n---", readme.decode(errors="replace"), re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _match(pattern: tuple[str, ...], parts: list[str]) -> list[str] | None:
    """Match path parts against a pattern: literals, ``{}`` for one part, ``*`` (last) for the rest."""
    args: list[str] = []
    for i, token in enumerate(pattern):
        if token == "*":
            return args + parts[i:]
        if i >= len(parts):
            return None
        if token == "{}":
            args.append(parts[i])
        elif token != parts[i]:
            return None
    return args if len(parts) == len(pattern) else None


_Handler.ROUTES = [
    (("GET", "api", "whoami-v2"), _Handler.whoami),
    (("POST", "api", "repos", "create"), _Handler.create_repo),
    (("POST", "api", "validate-yaml"), _Handler.validate_yaml),
    (("GET", "api", "models", "{}", "{}"), _Handler.model_info),
    (("GET", "api", "models", "{}", "{}", "revision", "{}"), _Handler.model_info),
    (("GET", "api", "models", "{}", "{}", "tree", "{}", "*"), _Handler.tree),
    (("GET", "api", "models", "{}", "{}", "refs"), _Handler.refs),
    (("GET", "api", "models", "{}", "{}", "commits", "{}"), _Handler.commits),
    (("POST", "api", "models", "{}", "{}", "branch", "{}"), _Handler.create_branch),
    (("POST", "api", "models", "{}", "{}", "preupload", "{}"), _Handler.preupload),
    (("POST", "api", "models", "{}", "{}", "commit", "{}"), _Handler.commit),
    (("POST", "{}", "{}", "info", "lfs", "objects", "batch"), _Handler.lfs_batch),
    (("PUT", "lfs-upload", "{}", "{}", "{}", "{}"), _Handler.lfs_upload),
    (("POST", "lfs-verify", "{}", "{}"), _Handler.lfs_verify),
    (("GET", "lfs-objects", "{}"), _Handler.lfs_object),
    (("GET", "{}", "{}", "resolve", "{}", "*"), _Handler.resolve),
]


def hub_url(repo_id: str, revision: str, path: str) -> str:
    """The resolve URL of a file, as huggingface_hub builds it (revision quoted whole)."""
    return f"/{repo_id}/resolve/{quote(revision, safe='')}/{path}"
