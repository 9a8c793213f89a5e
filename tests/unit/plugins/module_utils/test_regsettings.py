"""Registry settings shared by image_pull and image_push (``_regsettings`` and the transport
rules in ``_registry``): auth files of both formats, mirrors, proxies, and where
credentials may and may not go.  Against the real docker-registry on loopback, a
forward proxy written for the tests (CONNECT and absolute-URI), and small servers of
our own where a misbehaving registry is needed (an https registry redirecting to http).
"""
from __future__ import annotations

import base64
import http.server
import json
import os
import ssl
import threading

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.image_push import image_push
from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    AuthenticationRefused, RegistryError)
from ansible_collections.strata.layers.plugins.module_utils._regsettings import (
    AuthFile, RegistrySettings, proxy_for, validate_mirrors)
from tests.support import registry as reg_support
from tests.support.netproxy import forward_proxy
from tests.support.registry import (
    PASSWORD, USER, counting_proxy, image_layout, layer_tar, make_ca, registry)

needs_registry = pytest.mark.skipif(reg_support.missing_tools() is not None,
                                    reason=str(reg_support.missing_tools()))
PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
              "all_proxy", "ALL_PROXY", "REGISTRY_AUTH_FILE")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent-strata-home")


def _auth(user: str, password: str) -> str:
    return base64.b64encode(("%s:%s" % (user, password)).encode()).decode()


def _write(path, data) -> str:
    with open(str(path), "w") as handle:
        json.dump(data, handle)
    return str(path)


# ---------------------------------------------------------------------- auth files
def test_auth_file_formats_and_lookup(tmp_path):
    docker = _write(tmp_path / "config.json", {"auths": {
        "https://index.docker.io/v1/": {"auth": _auth("hubuser", "hubpass")},
        "registry.example.com:5000": {"auth": _auth("alice", "pa:ss")}},
        "credsStore": "desktop"})
    found = AuthFile.load(docker)
    assert found.lookup("docker.io", "library/debian") == ("hubuser", "hubpass")
    assert found.lookup("registry.example.com:5000", "x/y") == ("alice", "pa:ss")
    assert found.lookup("registry.example.com", "x/y") is None      # another port
    podman = _write(tmp_path / "auth.json", {"auths": {
        "quay.io": {"auth": _auth("generic", "g")},
        "quay.io/team": {"auth": _auth("team", "t")},
        "quay.io/team/app": {"auth": _auth("app", "a")}}})
    found = AuthFile.load(podman)
    assert found.lookup("quay.io", "team/app") == ("app", "a")
    assert found.lookup("quay.io", "team/other") == ("team", "t")
    assert found.lookup("quay.io", "teamx/app") == ("generic", "g")


def test_bad_auth_files_never_echo_their_content(tmp_path):
    secret = "TOPSECRET-do-not-show"
    broken = tmp_path / "broken.json"
    broken.write_text('{"auths": {"h": {"auth": "%s"' % secret)
    with pytest.raises(InvalidInput) as info:
        AuthFile.load(str(broken))
    assert str(broken) in str(info.value) and secret not in str(info.value)
    entries = {"h": {"auth": secret}, "ok:5000": {"auth": _auth("u", "p")}}
    bad = _write(tmp_path / "bad.json", {"auths": entries})
    found = AuthFile.load(bad)  # a damaged entry fails only the registry it is for
    assert found.lookup("ok:5000", "x") == ("u", "p")
    with pytest.raises(InvalidInput) as info:
        found.lookup("h", "x")
    assert secret not in str(info.value) and "the entry for h" in str(info.value)
    with pytest.raises(InvalidInput) as info:
        AuthFile.load(str(tmp_path / "missing.json"))
    assert "does not exist" in str(info.value)


def test_default_auth_file_search(tmp_path, monkeypatch):
    path = _write(tmp_path / "env.json", {"auths": {"h:1": {"auth": _auth("envuser", "p")}}})
    monkeypatch.setenv("REGISTRY_AUTH_FILE", path)
    settings = RegistrySettings.from_params({})
    assert settings.credentials("h:1", "r").username == "envuser"
    assert "env.json" in str(settings.credentials("h:1", "r"))
    assert "password=" not in repr(settings.credentials("h:1", "r"))
    monkeypatch.delenv("REGISTRY_AUTH_FILE")
    home = tmp_path / "home"
    (home / ".docker").mkdir(parents=True)
    _write(home / ".docker" / "config.json", {"auths": {"h:1": {"auth": _auth("dock", "p")}}})
    monkeypatch.setenv("HOME", str(home))
    assert RegistrySettings.from_params({}).credentials("h:1", "r").username == "dock"
    # explicit username/password win, and never go to a mirror
    settings = RegistrySettings.from_params({"username": "u", "password": "p"})
    assert settings.credentials("h:1", "r").username == "u"
    assert settings.credentials("h:1", "r", explicit=False).username == "dock"


def test_mirror_and_proxy_values(monkeypatch):
    assert validate_mirrors(["m.example:5000", "https://m2.example/"]) == [
        "m.example:5000", "m2.example"]
    with pytest.raises(InvalidInput):
        validate_mirrors(["m.example/path"])
    with pytest.raises(InvalidInput) as info:  # credentials in a mirror: never echoed
        validate_mirrors(["m.example", "https://bob:s3cret@m2.example:5000"])
    assert "mirror #2 carries credentials" in str(info.value)
    assert "s3cret" not in str(info.value)
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3128")
    monkeypatch.setenv("no_proxy", "internal.example,.corp")
    assert proxy_for("https", "registry.example.com") == ("127.0.0.1", 3128)
    assert proxy_for("https", "internal.example:5000") is None
    assert proxy_for("https", "a.corp") is None
    assert proxy_for("http", "registry.example.com") is None


# ---------------------------------------------------------------------- real registries
@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("settings-layout"))
    desc = image_layout(work, "1", [(layer_tar({"a/f": os.urandom(30000)}), "gzip"),
                                    (layer_tar({"b/f": os.urandom(30000)}), "gzip")])
    desc["work"] = work
    return desc


@pytest.fixture(scope="module")
def secure(layout):
    with registry(auth="htpasswd", tls=True) as reg:
        reg.push(layout["work"], "1", "team/app:1")
        yield reg


@pytest.fixture(scope="module")
def plain(layout):
    with registry() as reg:
        reg.push(layout["work"], "1", "team/app:1")
        yield reg


def pull(name: str, root: str, **options) -> dict:
    params = {"name": name, "data_root": root, "lock_timeout": 30, "timeout": 20}
    params.update(options)
    return image_pull(params)


@needs_registry
@pytest.mark.parametrize("kind", ["docker", "containers"])
def test_auth_files_pull_and_push(secure, layout, tmp_path, kind):
    if kind == "docker":
        data = {"auths": {secure.host: {"auth": _auth(USER, PASSWORD)}}}
    else:
        data = {"auths": {secure.host + "/team": {"auth": _auth(USER, PASSWORD)}}}
    path = _write(tmp_path / "auth.json", data)
    store = str(tmp_path / "store")
    result = pull("%s/team/app:1" % secure.host, store, ca_path=secure.ca, auth_file=path)
    assert result["image_id"] == layout["image_id"]
    pushed = image_push({"name": result["image_id"], "dest": "%s/team/copy-%s:1" % (secure.host, kind),
                         "data_root": store, "ca_path": secure.ca, "auth_file": path,
                         "lock_timeout": 30})
    assert pushed["changed"] is True
    assert secure.manifest("team/copy-" + kind, "1")["config"] == layout["image_id"]
    wrong = _write(tmp_path / "wrong.json",
                   {"auths": {secure.host: {"auth": _auth(USER, "wrong-secret")}}})
    with pytest.raises(AuthenticationRefused) as info:
        pull("%s/team/app:1" % secure.host, str(tmp_path / "s2"), ca_path=secure.ca,
             auth_file=wrong)
    assert secure.host in str(info.value) and wrong in str(info.value)
    assert "wrong-secret" not in str(info.value)


@needs_registry
def test_push_with_bearer_tokens_asks_for_pull_and_push(layout, tmp_path):
    with registry(auth="token") as reg:
        store = str(tmp_path / "store")
        layer_import({"src": layout["work"], "format": "oci-layout", "tag": ["app:1"],
                      "data_root": store, "lock_timeout": 30})
        result = image_push({"name": "app:1", "dest": "%s/team/app:1" % reg.host,
                             "insecure": True, "username": USER, "password": PASSWORD,
                             "data_root": store, "lock_timeout": 30})
        assert result["changed"] is True
        scopes = {r.get("scope") for r in reg.token.requests}
        assert "repository:team/app:pull,push" in scopes
        again = pull("%s/team/app:1" % reg.host, str(tmp_path / "back"), insecure=True,
                     username=USER, password=PASSWORD)
        assert again["image_id"] == layout["image_id"]


@needs_registry
def test_mirror_lacking_the_image_falls_through(plain, layout, tmp_path):
    with registry() as empty, counting_proxy(plain.host) as main:
        result = pull("%s/team/app:1" % main.host, str(tmp_path / "a"), insecure=True,
                      mirrors=[empty.host])
        assert result["image_id"] == layout["image_id"]
        assert main.blobs()                                  # served by the registry
        assert result["tags"] == ["%s/team/app:1" % main.host]


@needs_registry
def test_mirror_that_has_the_image_serves_it(plain, layout, tmp_path):
    with counting_proxy(plain.host) as mirror:
        # the registry itself does not even exist: the mirror answers first
        result = pull("127.0.0.1:1/team/app:1", str(tmp_path / "a"), insecure=True,
                      mirrors=["127.0.0.1:2", mirror.host])
        assert result["image_id"] == layout["image_id"]
        assert result["tags"] == ["127.0.0.1:1/team/app:1"]
        assert len(mirror.blobs()) == 3


@needs_registry
def test_mirrors_never_get_the_task_password(plain, tmp_path):
    with counting_proxy(plain.host) as mirror:
        pull("127.0.0.1:1/team/app:1", str(tmp_path / "a"), insecure=True,
             mirrors=[mirror.host], username=USER, password=PASSWORD)
        assert not any(auth for _m, _p, auth in mirror.requests)


@needs_registry
def test_pull_goes_through_the_https_proxy_by_connect(secure, layout, tmp_path, monkeypatch):
    with forward_proxy() as proxy:
        monkeypatch.setenv("https_proxy", proxy.url)
        result = pull("%s/team/app:1" % secure.host, str(tmp_path / "a"), ca_path=secure.ca,
                      username=USER, password=PASSWORD)
        assert result["image_id"] == layout["image_id"]
        assert set(proxy.targets("CONNECT")) == {secure.host}
        assert proxy.targets("GET") == []            # nothing in clear through the proxy
        count = len(proxy.requests)
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        pull("%s/team/app:1" % secure.host, str(tmp_path / "b"), ca_path=secure.ca,
             username=USER, password=PASSWORD)
        assert len(proxy.requests) == count


@needs_registry
def test_pull_and_push_go_through_the_http_proxy(plain, layout, tmp_path, monkeypatch):
    with forward_proxy() as proxy:
        monkeypatch.setenv("http_proxy", proxy.url)
        store = str(tmp_path / "a")
        result = pull("%s/team/app:1" % plain.host, store, insecure=True)
        assert result["image_id"] == layout["image_id"]
        gets = proxy.targets("GET")
        assert "http://%s/v2/team/app/manifests/1" % plain.host in gets
        assert any("/blobs/" in g for g in gets)
        pushed = image_push({"name": result["image_id"], "insecure": True,
                             "dest": "%s/team/viaproxy:1" % plain.host, "data_root": store,
                             "lock_timeout": 30})
        assert pushed["changed"] is True
        assert proxy.targets("PUT")


@needs_registry
def test_token_realm_on_another_host_over_http_gets_no_password(layout, tmp_path):
    # the registry is 127.0.0.1, its token realm http://localhost:PORT: another host, clear text
    with registry(auth="token", realm_host="localhost") as reg:
        reg.push(layout["work"], "1", "team/app:1")
        reg.token.requests.clear()                   # skopeo's own, for the push above
        with pytest.raises(AuthenticationRefused) as info:
            pull("%s/team/app:1" % reg.host, str(tmp_path / "a"), insecure=True,
                 username=USER, password=PASSWORD)
        assert "were not sent" in str(info.value)
        assert reg.token.requests and all(r["authorization"] == "" for r in reg.token.requests)
        assert PASSWORD not in str(info.value)


class _Redirector:
    """An https "registry" that redirects every manifest request to plain http, and the
    plain http server it points at (which records anything that reaches it)."""

    def __init__(self, work: str) -> None:
        self.certs = make_ca(work)
        self.hits = []
        target = self

        class Plain(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                target.hits.append((self.path, self.headers.get("Authorization")))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
        plain_port = self.plain.server_address[1]

        class Secure(Plain):
            def do_GET(self):
                if self.path == "/v2/":
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(307)
                self.send_header("Location", "http://127.0.0.1:%d%s" % (plain_port, self.path))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.secure = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Secure)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certs["server.crt"], self.certs["server.key"])
        self.secure.socket = context.wrap_socket(self.secure.socket, server_side=True)
        self.host = "127.0.0.1:%d" % self.secure.server_address[1]
        for server in (self.plain, self.secure):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        for server in (self.plain, self.secure):
            server.shutdown()
            server.server_close()


def test_https_to_http_redirect_is_refused(tmp_path):
    redirector = _Redirector(str(tmp_path))
    try:
        with pytest.raises(RegistryError) as info:
            pull("%s/team/app:1" % redirector.host, str(tmp_path / "a"),
                 ca_path=redirector.certs["ca.crt"], username=USER, password=PASSWORD)
        assert "redirected to plain HTTP" in str(info.value)
        assert redirector.hits == []
    finally:
        redirector.close()
