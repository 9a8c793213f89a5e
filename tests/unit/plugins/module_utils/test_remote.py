"""Remote ADD (issue 17 item 4): HTTP and git sources served from 127.0.0.1 for real."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.image_build import image_build
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._ops.image_export import image_export
from tests.support.fixtures import busybox_store

from tests.unit.plugins.module_utils.test_builder import files_of
from tests.unit.plugins.module_utils.test_runsetup import snapshot

LAST_MODIFIED = "Wed, 21 Oct 2015 07:28:00 GMT"
LAST_MODIFIED_EPOCH = 1445412480


@pytest.fixture
def root(store_root, busybox_tar):
    return busybox_store(store_root, busybox_tar)


def build(root, **kw):
    return image_build(dict({"data_root": root}, **kw))


class Served:
    def __init__(self, directory):
        self.directory = str(directory)
        self.requests = []     # (path, status)


@contextlib.contextmanager
def http_server(directory):
    """http.server on 127.0.0.1 with ETag/Last-Modified and 304s, recording requests."""
    served = Served(directory)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=served.directory, **k)

        def send_head(self):
            path = self.translate_path(self.path)
            if os.path.isfile(path):
                etag = '"%s"' % hashlib.sha256(open(path, "rb").read()).hexdigest()[:16]
                if self.headers.get("If-None-Match") == etag:
                    self.send_response(304)
                    self.end_headers()
                    return None
                self._etag = etag
            return super().send_head()

        def end_headers(self):
            if getattr(self, "_etag", None):
                self.send_header("ETag", self._etag)
            super().end_headers()

        def date_time_string(self, timestamp=None):
            return LAST_MODIFIED if timestamp is not None else super().date_time_string()

        def log_request(self, code="-", size="-"):
            served.requests.append((self.path, int(code) if str(code).isdigit() else code))

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        served.url = "http://127.0.0.1:%d" % server.server_address[1]
        yield served
    finally:
        server.shutdown()
        server.server_close()


def layer_members(root, image, tmp_path):
    dest = str(tmp_path / "x.tar")
    out = image_export({"data_root": root, "image": image, "dest": dest})
    with tarfile.open(dest) as tar:
        blob = tar.extractfile("blobs/sha256/" + out["layers"][-1][7:]).read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as layer:
        return {m.name: m for m in layer.getmembers()}


def test_add_url_checksum_mtime_mode_and_cache(root, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "pkg.tar.gz").write_bytes(b"not extracted\n")
    digest = "sha256:" + hashlib.sha256(b"not extracted\n").hexdigest()
    with http_server(www) as served:
        spec = "FROM busybox:test\nADD %s/pkg.tar.gz /opt/\nADD --checksum=%s %s/pkg.tar.gz " \
               "/named\n" % (served.url, digest, served.url)
        out = build(root, spec=spec, tag=["u:1"])
        members = layer_members(root, "u:1", tmp_path)
        assert members["named"].mode == 0o600
        assert members["named"].mtime == LAST_MODIFIED_EPOCH
        view = files_of(root, "u:1", tmp_path)
        assert view["opt/pkg.tar.gz"] == b"not extracted\n" and view["named"] == view[
            "opt/pkg.tar.gz"]
        count = len(served.requests)
        # warm: a 304 for the first ADD, no request at all for the one with --checksum
        again = build(root, spec=spec, tag=["u:1"])
        assert again["image_id"] == out["image_id"] and not again["changed"]
        assert served.requests[count:] == [("/pkg.tar.gz", 304)]
        # check mode: the 304 says cached, and nothing is written
        before = snapshot(root)
        checked = image_build({"data_root": root, "spec": spec, "tag": ["u:1"]}, check_mode=True)
        assert not checked["changed"] and snapshot(root) == before
        fresh = image_build({"data_root": root, "spec": spec.replace("/opt/", "/new/"),
                             "tag": ["u:9"]}, check_mode=True)
        assert fresh["changed"] and snapshot(root) == before
        # changed content: a new layer
        (www / "pkg.tar.gz").write_bytes(b"new\n")
        third = build(root, spec="FROM busybox:test\nADD %s/pkg.tar.gz /opt/\n" % served.url,
                      tag=["u:2"])
        assert files_of(root, "u:2", tmp_path)["opt/pkg.tar.gz"] == b"new\n"
        assert not third["history"][-1]["cached"]


@pytest.mark.parametrize("line,message", [
    ("ADD {url}/missing.txt /x", "line 2 \\(ADD\\).*HTTP 404"),
    ("ADD --checksum=sha256:" + "0" * 64 + " {url}/f.txt /x",
     "line 2 \\(ADD\\).*not the --checksum"),
    ("ADD --checksum=md5:abc {url}/f.txt /x", "line 2.*not sha256"),
    ("ADD {url}/ /x/", "line 2.*cannot tell a file name"),
    ("COPY {url}/f.txt /x", "line 2.*COPY takes no URL"),
    ("ADD --keep-git-dir {url}/f.txt /x", "line 2.*for a git repository"),
])
def test_bad_remote_adds_are_clear_errors_and_leave_the_store(root, tmp_path, line, message):
    www = tmp_path / "www"
    www.mkdir()
    (www / "f.txt").write_text("f\n")
    before = snapshot(root)
    with http_server(www) as served:
        with pytest.raises(InvalidInput, match=message):
            build(root, spec="FROM busybox:test\n" + line.format(url=served.url) + "\n")
    assert snapshot(root) == before


def git(*args, cwd=None):
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")
    return subprocess.run(["git"] + list(args), cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A repository served over git's dumb HTTP protocol (a bare clone + http.server)."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    (work / "sub").mkdir()
    (work / "sub" / "a.txt").write_text("v1\n")
    (work / "top.txt").write_text("top\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "one", cwd=work)
    git("tag", "v1", cwd=work)
    (work / "sub" / "a.txt").write_text("v2\n")
    git("commit", "-q", "-am", "two", cwd=work)
    www = tmp_path / "gitwww"
    www.mkdir()
    git("clone", "-q", "--bare", str(work), str(www / "repo.git"))
    git("update-server-info", cwd=www / "repo.git")
    return www


def test_add_git_ref_subdir_and_keep_git_dir(root, tmp_path, repo):
    with http_server(repo) as served:
        url = served.url + "/repo.git"
        spec = ("FROM busybox:test\nADD %s#v1:sub /v1/\nADD %s#main /main/\n"
                "ADD --keep-git-dir %s /kept/\n" % (url, url, url))
        out = build(root, spec=spec, tag=["g:1"])
        view = files_of(root, "g:1", tmp_path)
        assert view["v1/a.txt"] == b"v1\n" and "v1/top.txt" not in view
        assert view["main/sub/a.txt"] == b"v2\n" and "main/.git" not in view
        assert "kept/.git/HEAD" in view and view["kept/top.txt"] == b"top\n"
        again = build(root, spec=spec, tag=["g:1"])
        assert again["image_id"] == out["image_id"] and not again["changed"]

        before = snapshot(root)
        with pytest.raises(InvalidInput, match="line 2 \\(ADD\\).*git ref 'nope' does not exist"):
            build(root, spec="FROM busybox:test\nADD %s#nope /x/\n" % url)
        assert snapshot(root) == before


def test_add_git_without_git_on_the_host(root, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(InvalidInput, match="line 2.*needs git on the managed host"):
        build(root, spec="FROM busybox:test\nADD http://127.0.0.1:9/r.git /x/\n")
