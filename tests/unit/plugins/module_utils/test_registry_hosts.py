"""The registry client against hosts that answer what a hostile or odd registry may answer
(scripted servers on 127.0.0.0/8, plain HTTP and TLS with a test CA): where credentials go,
which challenges are honoured, and that malformed answers are StoreErrors naming the host.

(The protocol itself is tested against the real docker-registry in test_pull.py and
test_push.py.)
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import shutil
import socket
import threading
import time

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    DigestMismatch, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import parse_platform
from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    AuthenticationRefused, Descriptor, Registry, RegistryError, parse_reference)
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._upload import Uploader
from tests.support.registry import (
    LAYER_TYPES, MT_CONFIG, MT_MANIFEST, compress, layer_tar, make_ca, scripted)

USER, PASSWORD = "alice", "hunter2-secret"
BASIC = "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
DIGEST = "sha256:" + "1" * 64

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_ca(str(tmp_path_factory.mktemp("registry-hosts-ca")))


def client(server, tls=None, **kw) -> Registry:
    ref = parse_reference("%s/app:v1" % server.host)
    if tls:
        kw["ca_path"] = tls["ca.crt"]
    else:
        kw["insecure"] = True
    return Registry(ref, username=USER, password=PASSWORD, actions="pull,push", **kw)


def basic_registry(upload_location):
    """A registry asking for basic auth whose upload sessions live at upload_location()."""
    def route(handler, _body):
        if handler.headers.get("Authorization") != BASIC:
            return handler.reply(401, {"WWW-Authenticate": 'Basic realm="r"'})
        if handler.command == "POST":
            return handler.reply(202, {"Location": upload_location()})
        return handler.reply(201 if handler.command == "PUT" else 404)
    return route


def accept(handler, _body):
    handler.reply(201, {"Docker-Content-Digest": DIGEST})


def test_an_upload_location_downgrading_https_is_refused_and_gets_nothing(tls):
    with scripted(accept, host="127.0.0.2") as other:
        route = basic_registry(lambda: "http://%s/v2/app/blobs/uploads/u1" % other.host)
        with scripted(route, tls=tls) as reg:
            uploader = Uploader(client(reg, tls))
            with pytest.raises(RegistryError) as info:
                uploader.finish(uploader.start(), DIGEST, b"data")
            assert "registry %s redirected to plain HTTP" % reg.host in str(info.value)
            assert other.host in str(info.value)
        assert other.requests == []


def test_an_upload_location_on_another_host_is_asked_anonymously(tls):
    with scripted(accept, tls=tls) as other:
        route = basic_registry(lambda: "%s/v2/app/blobs/uploads/u1" % other.url)
        with scripted(route, tls=tls) as reg:
            uploader = Uploader(client(reg, tls))
            uploader.finish(uploader.start(), DIGEST, b"data")
            assert reg.authorizations() == [BASIC]          # the POST, after its 401
        assert [m for m, _p, _a in other.requests] == ["PUT"]
        assert other.authorizations() == []


def test_an_upload_location_on_the_registry_keeps_the_credentials():
    with scripted(basic_registry(lambda: "/v2/app/blobs/uploads/u1")) as reg:
        uploader = Uploader(client(reg))
        uploader.finish(uploader.start(), DIGEST, b"data")
        assert reg.authorizations() == [BASIC, BASIC]       # POST and PUT


def test_a_redirect_targets_challenge_gets_no_credentials(tls):
    def storage(handler, _body):
        if handler.path.startswith("/token"):
            return handler.reply(200, {"Content-Type": "application/json"}, b'{"token":"t"}')
        return handler.reply(401, {"WWW-Authenticate": 'Bearer realm="%s/token",service="s"'
                                   % store.url})

    def route(handler, _body):
        if handler.headers.get("Authorization") != BASIC:
            return handler.reply(401, {"WWW-Authenticate": 'Basic realm="r"'})
        return handler.reply(307, {"Location": "%s/blob" % store.url})

    with scripted(storage, tls=tls) as store, scripted(route, tls=tls) as reg:
        with pytest.raises(AuthenticationRefused) as info:
            client(reg, tls).open_blob(Descriptor("", DIGEST, 4), "layer")
        assert store.host in str(info.value) and reg.host in str(info.value)
        assert [p for _m, p, _a in store.requests] == ["/blob"]
        assert store.authorizations() == []


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_registry(tar: bytes, blob: bytes, layer_digest: str, media_type: str):
    """A registry serving one image app:v1: one layer whose descriptor says
    (layer_digest, media_type) and whose blob bytes are ``blob``."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(tar)]}}).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": MT_CONFIG, "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": media_type, "digest": layer_digest,
                    "size": len(blob)}]}).encode()
    blobs = {sha(config): config, layer_digest: blob}

    def route(handler, _body):
        if "/manifests/" in handler.path:
            return handler.reply(200, {"Content-Type": MT_MANIFEST}, manifest)
        digest = handler.path.rsplit("/", 1)[-1]
        if "/blobs/" in handler.path and digest in blobs:
            return handler.reply(200, {}, blobs[digest])
        return handler.reply(404)
    return route


def records(root: str) -> list:
    where = os.path.join(root, "registry", "compressed")
    return sorted(os.listdir(where)) if os.path.isdir(where) else []


@pytest.mark.parametrize("existing", [False, True], ids=["streamed", "downloaded"])
def test_a_blob_named_by_its_diff_id_is_refused(existing, tmp_path):
    tar = layer_tar({"etc/hello": b"hi\n"})
    route = image_registry(tar, gzip.compress(tar, mtime=0), sha(tar), LAYER_TYPES["gzip"])
    root = str(tmp_path / "store")
    with scripted(route) as reg:
        args = {"name": "%s/app:v1" % reg.host, "insecure": True, "data_root": root}
        if existing:    # a store that exists pulls ahead into files; a new one streams
            with Store(root).write("an empty store"):
                pass
        with pytest.raises(DigestMismatch) as info:
            image_pull(args)
        assert "failed verification" in str(info.value)
    assert records(root) == []


@pytest.mark.parametrize("existing", [False, True], ids=["streamed", "downloaded"])
def test_a_blob_compressed_unlike_its_media_type_is_not_recorded(existing, tmp_path):
    tar = layer_tar({"etc/hello": b"hi\n"})
    blob = compress(tar, "zstd")
    route = image_registry(tar, blob, sha(blob), LAYER_TYPES["gzip"])
    root = str(tmp_path / "store")
    with scripted(route) as reg:
        if existing:
            with Store(root).write("an empty store"):
                pass
        result = image_pull({"name": "%s/app:v1" % reg.host, "insecure": True,
                             "data_root": root})
    assert result["changed"] is True and result["layers"][0]["diff_id"] == sha(tar)
    assert records(root) == []      # no false {gzip: zstd bytes} for a push to reuse


def test_a_plain_http_realm_of_an_https_registry_gets_no_password(tls):
    def token(handler, _body):
        handler.reply(200, {"Content-Type": "application/json"}, b'{"token":"anonymous"}')

    with scripted(token) as realm:      # the registry's own host name, in clear text
        def route(handler, _body):
            if handler.headers.get("Authorization") != "Bearer anonymous":
                return handler.reply(401, {"WWW-Authenticate": 'Bearer realm="%s/token"'
                                           % realm.url})
            return handler.reply(200, {}, b"{}")
        with scripted(route, tls=tls) as reg:
            client(reg, tls).request("/v2/").close()
        assert len(realm.requests) == 1
        assert realm.authorizations() == []


def hostile(handler, _body):
    """Answers no client should crash on: a Content-Length of a non-ASCII digit, Locations
    that are no URL, a token carrying a header of its own."""
    if "/token" in handler.path:
        return handler.reply(200, {}, b'{"token":"secret\\r\\nX-Evil: 1"}')
    if "/manifests/" in handler.path and handler.headers.get("Authorization") is None:
        return handler.reply(401, {"WWW-Authenticate": 'Bearer realm="http://%s/token"'
                                   % handler.headers["Host"]})
    if "/blobs/uploads/" in handler.path:
        return handler.reply(202, {"Location": "http://[zz/x"})
    if "/blobs/" in handler.path:
        handler.close_connection = True         # the body ends where the connection does
        return handler.reply(200, {"Content-Length": "\u00b2"}, b"abcd")
    if "/redirect" in handler.path:
        return handler.reply(302, {"Location": "http://[zz/x"})
    return handler.reply(404)


@pytest.mark.parametrize("ask", [
    lambda reg: reg.blob_bytes(Descriptor("", DIGEST, 4), "config"),
    lambda reg: reg.request("/v2/redirect"),
    lambda reg: Uploader(reg).start(),
    lambda reg: reg.manifest("v1"),
], ids=["content-length", "redirect", "upload-location", "token"])
def test_hostile_answers_are_store_errors(ask):
    with scripted(hostile) as server:
        reg = Registry(parse_reference("%s/app:v1" % server.host), insecure=True)
        with pytest.raises(StoreError) as info:
            ask(reg)
        assert server.host in str(info.value)
        assert "secret" not in str(info.value)


@pytest.mark.parametrize("manifests", [5, {"a": 1}, None, "abc"])
def test_an_index_whose_manifests_is_not_a_list_is_a_store_error(manifests):
    raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": manifests}).encode()
    reg = Registry(parse_reference("127.0.0.1:1/app:v1"), insecure=True)
    with pytest.raises(StoreError):
        reg.resolve(parse_platform(None), (raw, "application/vnd.oci.image.index.v1+json",
                                           DIGEST))


def test_a_server_dripping_its_headers_meets_the_deadline():
    """The status line then one header byte a second: each wait is short of ``timeout``,
    so only the overall deadline (``blob_timeout``) can end it, and it does, through
    the watchdog, long before the server would have finished."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    stop = threading.Event()

    def drip():
        conn, _addr = server.accept()
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _second in range(12):
                if stop.wait(1):
                    return
                conn.sendall(b"X")
        except OSError:
            pass
        finally:
            conn.close()

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    registry = Registry(parse_reference("127.0.0.1:%d/app:v1" % server.getsockname()[1]),
                        insecure=True, timeout=2, connect_timeout=2, deadline=3)
    started = time.monotonic()
    try:
        with pytest.raises(StoreError, match="did not answer within 3 seconds"):
            registry.request("/v2/app/manifests/v1")
        assert time.monotonic() - started < 8
    finally:
        stop.set()
        thread.join()
        server.close()
