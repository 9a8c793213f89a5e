"""The registry client against hosts that answer what a hostile or odd registry may answer
(scripted servers on 127.0.0.0/8, plain HTTP and TLS with a test CA): where credentials go,
which challenges are honoured, and that malformed answers are StoreErrors naming the host.

(The protocol itself is tested against the real docker-registry in test_pull.py and
test_push.py.)
"""
from __future__ import annotations

import base64
import shutil

import pytest

from ansible_collections.strata.layers.plugins.module_utils._registry import (
    AuthenticationRefused, Descriptor, Registry, RegistryError, parse_reference)
from ansible_collections.strata.layers.plugins.module_utils._upload import Uploader
from tests.support.registry import make_ca, scripted

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
