# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Remote ``ADD``: a file over HTTP(S), or a git repository, fetched for one step.

What Docker and BuildKit do, and we do:

- ``ADD http(s)://host/path/name DEST``: the file is downloaded (never extracted, even
  when it is an archive), mode 0600 unless ``--chmod``, its mtime the server's
  ``Last-Modified`` (the download time without one).  ``DEST`` ending in ``/`` receives
  it under the URL's last path component.  ``--checksum=sha256:<hex>`` is checked
  against what arrives.
- The build cache: with ``--checksum`` the step is keyed on it and a cache hit makes no
  request at all; otherwise a record (``cache/remote/<sha256 of url>.json``: ETag,
  Last-Modified, content digest) lets a conditional request (``If-None-Match`` /
  ``If-Modified-Since``) answered 304 reuse the step without downloading.
- ``ADD <git url>[#ref[:subdir]] DEST``: a git URL is ``git://``, ``ssh://``, ``git@``,
  or ``http(s)://`` whose path ends in ``.git``.  ``ref`` (a branch, a tag or a commit;
  ``HEAD`` when absent) is resolved with ``git ls-remote`` (the step is keyed on the
  commit, so a cache hit clones nothing), then the repository is cloned with the host's
  ``git`` and the commit's tree (or ``subdir`` of it) copied into ``DEST``, ``.git``
  dropped unless ``--keep-git-dir``.  No ``git`` on the host is a clear error.

Redirects are followed except from https to plain http.  Nothing here writes outside
the staging directory the builder gives it.
"""
from __future__ import annotations

import email.utils
import hashlib
import os
import posixpath
import re
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    makedirs, read_json, remove_tree, write_json)

GIT_PREFIXES = ("git://", "ssh://", "git@")
HTTP_TIMEOUT = 60.0
GIT_TIMEOUT = 600.0
_CHECKSUM_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
_COMMIT_RE = re.compile(r"\A[0-9a-f]{40}(?:[0-9a-f]{24})?\Z")


class RemoteError(ValueError):
    """A remote source that cannot be fetched or does not match (the caller adds where)."""


@dataclass
class Remote:
    url: str
    checksum: str = ""
    keep_git_dir: bool = False
    git: bool = False
    repo: str = ""       # the git URL without its fragment
    ref: str = ""
    subdir: str = ""


def is_git(url: str) -> bool:
    if url.startswith(GIT_PREFIXES):
        return True
    path = urllib.parse.urlsplit(url.partition("#")[0]).path
    return url.startswith(("http://", "https://")) and path.rstrip("/").endswith(".git")


def remote_source(url: str, checksum: str, keep_git_dir: bool) -> Remote:
    """The parsed source of ``ADD url``; refuses what cannot work before any build."""
    remote = Remote(url=url, checksum=checksum, keep_git_dir=keep_git_dir, git=is_git(url))
    if remote.git:
        if checksum:
            raise RemoteError("ADD --checksum is for an HTTP source, not a git repository "
                              "(name the commit as the ref instead)")
        remote.repo, _sep, fragment = url.partition("#")
        remote.ref, _sep, subdir = fragment.partition(":")
        remote.subdir = posixpath.normpath("/" + subdir).lstrip("/") if subdir else ""
        if remote.ref.startswith("-"):
            raise RemoteError("git ref %r is not a ref" % remote.ref)
        return remote
    if keep_git_dir:
        raise RemoteError("ADD --keep-git-dir is for a git repository, not %s" % url)
    if checksum and not _CHECKSUM_RE.match(checksum):
        raise RemoteError("--checksum=%s is not sha256:<64 lowercase hex digits>" % checksum)
    if not url_file_name(url):
        raise RemoteError("cannot tell a file name from %s; give the destination as a file "
                          "name, not a directory" % url)
    return remote


def url_file_name(url: str) -> str:
    path = urllib.parse.urlsplit(url).path
    return posixpath.basename(urllib.parse.unquote(path))


# ---------------------------------------------------------------------- HTTP

class _NoDowngrade(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if req.full_url.startswith("https:") and newurl.startswith("http:"):
            raise RemoteError("%s redirects to plain http (%s): refused" % (req.full_url, newurl))
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _open(url: str, headers: Dict[str, str]):  # type: ignore[no-untyped-def]
    opener = urllib.request.build_opener(_NoDowngrade)
    request = urllib.request.Request(url, headers=dict(headers, **{
        "User-Agent": "strata.layers image_build"}))
    try:
        return opener.open(request, timeout=HTTP_TIMEOUT)
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            exc.close()
            return None
        exc.close()
        raise RemoteError("GET %s: HTTP %d %s" % (url, exc.code, exc.reason)) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RemoteError("GET %s: %s" % (url, reason)) from None


@dataclass
class Download:
    path: str           # the file, named as it lands in DEST
    digest: str         # sha256:<hex> of its content
    etag: str = ""
    last_modified: str = ""


def http_probe(remote: Remote, record: Optional[Dict[str, str]], directory: str
               ) -> Tuple[Optional[str], Optional[Download]]:
    """The content digest this step can be keyed on, and the download if one was made.

    ``--checksum`` needs no request; a record whose validators the server confirms (304)
    gives the digest without the body; anything else downloads."""
    if remote.checksum:
        return remote.checksum, None
    headers = {}
    if record and record.get("digest"):
        if record.get("etag"):
            headers["If-None-Match"] = record["etag"]
        if record.get("last_modified"):
            headers["If-Modified-Since"] = record["last_modified"]
    if headers:
        response = _open(remote.url, headers)
        if response is None:
            return record["digest"], None  # type: ignore[index]
        download = _save(remote, response, directory)
        return download.digest, download
    download = http_download(remote, directory)
    return download.digest, download


def http_known(remote: Remote, record: Optional[Dict[str, str]]) -> Optional[str]:
    """Check mode: the digest without downloading (``--checksum``, or a record the server
    confirms with a 304), else None."""
    if remote.checksum:
        return remote.checksum
    if not record or not record.get("digest") or not (
            record.get("etag") or record.get("last_modified")):
        return None
    headers = {"If-None-Match": record["etag"]} if record.get("etag") else {}
    if record.get("last_modified"):
        headers["If-Modified-Since"] = record["last_modified"]
    response = _open(remote.url, headers)
    if response is None:
        return record["digest"]
    response.close()
    return None


def http_download(remote: Remote, directory: str) -> Download:
    response = _open(remote.url, {})
    if response is None:
        raise RemoteError("GET %s: unexpected 304 Not Modified" % remote.url)
    return _save(remote, response, directory)


def _save(remote: Remote, response, directory: str) -> Download:  # type: ignore[no-untyped-def]
    path = os.path.join(directory, url_file_name(remote.url))
    digest = hashlib.sha256()
    with response, open(path, "wb") as out:
        for chunk in iter(lambda: response.read(1 << 20), b""):
            digest.update(chunk)
            out.write(chunk)
        last_modified = response.headers.get("Last-Modified", "")
        etag = response.headers.get("ETag", "")
    found = "sha256:" + digest.hexdigest()
    if remote.checksum and found != remote.checksum:
        raise RemoteError("%s has %s, not the --checksum %s" % (remote.url, found, remote.checksum))
    os.chmod(path, 0o600)
    mtime = _http_time(last_modified)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return Download(path, found, etag, last_modified)


def _http_time(value: str) -> Optional[float]:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------- git

def _git() -> str:
    found = shutil.which("git")
    if found is None:
        raise RemoteError("ADD of a git repository needs git on the managed host "
                          "(apt install git / dnf install git)")
    return found


def _run_git(args: list, what: str, cwd: Optional[str] = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_TERMINAL_PROMPT": "0",
           "GIT_CONFIG_NOSYSTEM": "1", "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C"}
    for name in ("SSH_AUTH_SOCK", "GIT_SSH_COMMAND", "https_proxy", "http_proxy", "no_proxy"):
        if name in os.environ:
            env[name] = os.environ[name]
    try:
        proc = subprocess.run([_git()] + args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=GIT_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise RemoteError("%s: git did not finish within %ds" % (what, GIT_TIMEOUT)) from None
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        raise RemoteError("%s: %s" % (what, " / ".join(message) or "git failed"))
    return proc.stdout.decode("utf-8", "replace")


def git_commit(remote: Remote) -> str:
    """The commit ``remote.ref`` names (resolved on the server, nothing cloned)."""
    if _COMMIT_RE.match(remote.ref):
        return remote.ref
    ref = remote.ref or "HEAD"
    out = _run_git(["ls-remote", "--", remote.repo, ref], "git ls-remote %s" % remote.repo)
    found: Dict[str, str] = {}
    for line in out.splitlines():
        commit, _tab, name = line.partition("\t")
        found[name] = commit
    for name in ("refs/tags/%s^{}" % ref, "refs/tags/%s" % ref, "refs/heads/%s" % ref, ref):
        if name in found:
            return found[name]
    raise RemoteError("git ref %r does not exist in %s" % (ref, remote.repo))


def git_checkout(remote: Remote, commit: str, directory: str) -> str:
    """Clone ``remote`` at ``commit`` into ``directory``; the path whose content ADD
    copies (the tree, or its ``subdir``)."""
    tree = os.path.join(directory, "repo")
    _run_git(["clone", "--quiet", "--no-checkout", "--", remote.repo, tree],
             "git clone %s" % remote.repo)
    _run_git(["-c", "advice.detachedHead=false", "checkout", "--quiet", commit, "--"],
             "git checkout %s in %s" % (commit, remote.repo), cwd=tree)
    if not remote.keep_git_dir:
        shutil.rmtree(os.path.join(tree, ".git"))
    if not remote.subdir:
        return "repo"
    path = os.path.join(tree, remote.subdir)
    if os.path.islink(path) or not os.path.isdir(path):
        raise RemoteError("%s has no directory %s at %s"
                          % (remote.repo, remote.subdir, remote.ref or "HEAD"))
    return os.path.join("repo", remote.subdir)


# ---------------------------------------------------------------------- one step

class RemoteFetch:
    """The remote source of one ADD step: ``descriptor()`` for the cache key (cheap when
    the cache can answer), ``fetch()`` for the directory and source name to copy from.
    ``close()`` removes what was downloaded."""

    def __init__(self, remote: Remote, records: str, staging: Callable[[str], str],
                 dry: bool = False) -> None:
        self.remote = remote
        self.dry = dry      # check mode: no download, nothing written
        self.records = records
        self._staging = staging
        self.directory: Optional[str] = None
        self._download: Optional[Download] = None
        self._commit = ""

    def _dir(self) -> str:
        if self.directory is None:
            self.directory = self._staging("remote")
        return self.directory

    def _record_path(self) -> str:
        return os.path.join(self.records, hashlib.sha256(self.remote.url.encode()).hexdigest()
                            + ".json")

    def descriptor(self) -> Optional[str]:
        """What the content is known as, for the history line and the cache key (None in
        check mode when only a download could tell)."""
        if self.remote.git:
            self._commit = self._commit or git_commit(self.remote)
            return "git:%s%s%s" % (self._commit, ":" + self.remote.subdir if self.remote.subdir
                                   else "", " keep-git-dir" if self.remote.keep_git_dir else "")
        if self._download is not None:
            return "url:" + self._download.digest
        if self.dry:
            known = http_known(self.remote, read_json_or_none(self._record_path()))
            return None if known is None else "url:" + known
        digest, self._download = http_probe(self.remote, read_json_or_none(
            self._record_path()), self._dir())
        return "url:" + digest

    def fetch(self) -> Tuple[str, str]:
        """(directory, source name) holding the content, downloading when not done yet."""
        if self.remote.git:
            return self._dir(), git_checkout(self.remote, self._commit or git_commit(
                self.remote), self._dir())
        if self._download is None:
            self._download = http_download(self.remote, self._dir())
        return self._dir(), os.path.basename(self._download.path)

    def remember(self) -> None:
        """After the step committed: the validators for the next conditional request."""
        download = self._download
        if self.remote.git or self.remote.checksum or download is None or not (
                download.etag or download.last_modified):
            return
        makedirs(self.records)
        write_json(self._record_path(), {"url": self.remote.url, "etag": download.etag,
                                         "last_modified": download.last_modified,
                                         "digest": download.digest})

    def close(self) -> None:
        if self.directory is not None:
            remove_tree(self.directory)
            self.directory = None


def read_json_or_none(path: str) -> Optional[Dict[str, str]]:
    try:
        data = read_json(path)
    except (OSError, ValueError):   # a missing or damaged record is only a cache miss
        return None
    return data if isinstance(data, dict) else None
