"""A real OCI registry on loopback for the pull tests: Debian's ``docker-registry`` (the CNCF
distribution registry v2) with its own config, port and storage, in plain HTTP, htpasswd
(basic), token (bearer, with a small token service of ours) and TLS (a test CA made with
openssl) variants; images pushed by ``skopeo copy`` from OCI layouts built at test time.

``CountingProxy`` sits in front of a registry on loopback and records every request
(method, path, whether it carried credentials), optionally slowing blobs down or
redirecting blob downloads to a ``BlobServer`` (storage on "another host", as S3 is).

Everything started here is stopped, and every file removed, by ``close()`` / the context
managers, also when a test fails.
"""
from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.client
import http.server
import io
import json
import os
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.parse
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

REGISTRY_BIN = "/usr/bin/docker-registry"
USER, PASSWORD = "puller", "s3cret-pass"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_TYPES = {"gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
               "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
               "plain": "application/vnd.oci.image.layer.v1.tar"}


def missing_tools() -> Optional[str]:
    for path in (REGISTRY_BIN, shutil.which("skopeo"), shutil.which("openssl"),
                 shutil.which("htpasswd")):
        if not path or not os.path.exists(path):
            return "docker-registry, skopeo, openssl and htpasswd (apache2-utils) are needed"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd: Sequence[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), check=True, capture_output=True, **kw)


# ---------------------------------------------------------------------- images
def layer_tar(files: Dict[str, bytes], mtime: int = 1700000000) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({os.path.dirname(n) for n in files if os.path.dirname(n)})
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def compress(data: bytes, kind: str) -> bytes:
    if kind == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if kind == "zstd":
        return run(["zstd", "-q", "-c", "-3"], input=data).stdout
    return data


def _blob(layout: str, data: bytes) -> dict:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = os.path.join(layout, "blobs", "sha256", digest[7:])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    return {"digest": digest, "size": len(data)}


def _config(diff_ids: List[str], arch: str) -> bytes:
    return json.dumps({
        "architecture": arch, "os": "linux", "created": "2024-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2024-01-01T00:00:00Z", "created_by": "layer %d" % n}
                    for n in range(len(diff_ids))]}, sort_keys=True).encode()


def write_image(layout: str, layers: Sequence[Tuple[bytes, str]], arch: str = "amd64") -> dict:
    """Blobs of one image (layers as (tar, compression)) in ``layout``; its manifest desc."""
    descs = []
    for tar, kind in layers:
        descs.append(dict(_blob(layout, compress(tar, kind)), mediaType=LAYER_TYPES[kind]))
    config = _config(["sha256:" + hashlib.sha256(t).hexdigest() for t, _k in layers], arch)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": MT_MANIFEST,
                           "config": dict(_blob(layout, config), mediaType=MT_CONFIG),
                           "layers": descs}).encode()
    desc = dict(_blob(layout, manifest), mediaType=MT_MANIFEST)
    desc["image_id"] = "sha256:" + hashlib.sha256(config).hexdigest()
    desc["diff_ids"] = ["sha256:" + hashlib.sha256(t).hexdigest() for t, _k in layers]
    desc["blobs"] = [d["digest"] for d in descs]
    return desc


def _add_ref(layout: str, desc: dict, ref: str) -> None:
    with open(os.path.join(layout, "oci-layout"), "w") as handle:
        json.dump({"imageLayoutVersion": "1.0.0"}, handle)
    index_path = os.path.join(layout, "index.json")
    index = {"schemaVersion": 2, "manifests": []}
    if os.path.exists(index_path):
        with open(index_path) as handle:
            index = json.load(handle)
    entry = {k: desc[k] for k in ("mediaType", "digest", "size")}
    entry["annotations"] = {"org.opencontainers.image.ref.name": ref}
    index["manifests"].append(entry)
    with open(index_path, "w") as handle:
        json.dump(index, handle)


def image_layout(layout: str, ref: str, layers: Sequence[Tuple[bytes, str]],
                 arch: str = "amd64") -> dict:
    """An OCI layout holding one image under ``ref``; returns its manifest descriptor
    (plus ``image_id``, ``diff_ids`` and ``blobs``)."""
    desc = write_image(layout, layers, arch)
    _add_ref(layout, desc, ref)
    return desc


def index_layout(layout: str, ref: str,
                 images: Sequence[Tuple[str, Sequence[Tuple[bytes, str]]]]) -> dict:
    """An OCI layout whose ``ref`` is an index of one image per (arch, layers)."""
    entries, per_arch = [], {}
    for arch, layers in images:
        desc = write_image(layout, layers, arch)
        per_arch[arch] = desc
        entries.append({"mediaType": MT_MANIFEST, "digest": desc["digest"], "size": desc["size"],
                        "platform": {"os": "linux", "architecture": arch}})
    raw = json.dumps({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}).encode()
    desc = dict(_blob(layout, raw), mediaType=MT_INDEX)
    _add_ref(layout, desc, ref)
    desc["images"] = per_arch
    return desc


# ---------------------------------------------------------------------- TLS and tokens
def make_ca(work: str) -> Dict[str, str]:
    """A test CA and a server certificate for 127.0.0.1 (and localhost) signed by it."""
    paths = {k: os.path.join(work, k) for k in ("ca.key", "ca.crt", "server.key", "server.csr",
                                                "server.crt", "san.cnf")}
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=strata test CA", "-keyout", paths["ca.key"], "-out", paths["ca.crt"]])
    with open(paths["san.cnf"], "w") as handle:
        handle.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                     "extendedKeyUsage=serverAuth\n")
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
         "-keyout", paths["server.key"], "-out", paths["server.csr"]])
    run(["openssl", "x509", "-req", "-in", paths["server.csr"], "-CA", paths["ca.crt"],
         "-CAkey", paths["ca.key"], "-CAcreateserial", "-days", "2",
         "-extfile", paths["san.cnf"], "-out", paths["server.crt"]])
    return paths


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenService:
    """The token service of a bearer-auth registry: JWTs signed (RS256, x5c header) with a
    key made by openssl, granting pull to USER/PASSWORD and nothing to anonymous users."""

    def __init__(self, work: str, service: str = "strata-test", issuer: str = "strata-issuer",
                 realm_host: str = "127.0.0.1"):
        self.service, self.issuer = service, issuer
        self.key = os.path.join(work, "token.key")
        self.cert = os.path.join(work, "token.crt")
        run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=strata token signer", "-keyout", self.key, "-out", self.cert])
        self.der = run(["openssl", "x509", "-in", self.cert, "-outform", "DER"]).stdout
        self.requests: List[Dict[str, str]] = []
        self.server = _server(self._handler())
        self.realm = "http://%s:%d/token" % (realm_host, self.server.server_address[1])

    def _sign(self, scope: str, granted: bool) -> str:
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.der).decode("ascii")]}
        now = int(time.time())
        access = []
        if granted and scope.startswith("repository:"):
            _kind, name, actions = scope.split(":", 2)
            access = [{"type": "repository", "name": name,
                       "actions": [a for a in actions.split(",") if a in ("pull", "push")]}]
        claims = {"iss": self.issuer, "sub": USER if granted else "", "aud": self.service,
                  "exp": now + 300, "nbf": now - 10, "iat": now, "jti": os.urandom(8).hex(),
                  "access": access}
        payload = "%s.%s" % (_b64url(json.dumps(header).encode()),
                             _b64url(json.dumps(claims).encode()))
        signature = run(["openssl", "dgst", "-sha256", "-sign", self.key],
                        input=payload.encode()).stdout
        return payload + "." + _b64url(signature)

    def _handler(self):
        service = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                auth = self.headers.get("Authorization") or ""
                service.requests.append(dict(query, authorization=auth[:6]))
                good = "Basic " + base64.b64encode(("%s:%s" % (USER, PASSWORD)).encode()).decode()
                if auth and auth != good:
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"token": service._sign(query.get("scope", ""), bool(auth)),
                                   "expires_in": 300}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# ---------------------------------------------------------------------- the registry
class Registry:
    """A running ``docker-registry``: ``host`` is 127.0.0.1:PORT; ``close()`` stops it and
    removes its files."""

    def __init__(self, auth: Optional[str] = None, tls: bool = False,
                 realm_host: str = "127.0.0.1") -> None:
        self.work = tempfile.mkdtemp(prefix="strata-registry-")
        self.realm_host = realm_host
        self.proc: Optional[subprocess.Popen] = None
        self.token: Optional[TokenService] = None
        self.auth, self.tls = auth, tls
        self.ca: Optional[str] = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @property
    def storage(self) -> str:
        return os.path.join(self.work, "data")

    def _config(self) -> str:
        lines = ["version: 0.1", "log:", "  level: warn", "  accesslog:", "    disabled: true",
                 "storage:", "  filesystem:", "    rootdirectory: %s" % self.storage,
                 "  delete:", "    enabled: true", "http:", "  addr: %s" % self.host,
                 "  secret: strata-test-secret"]
        if self.tls:
            certs = make_ca(self.work)
            self.ca = certs["ca.crt"]
            lines += ["  tls:", "    certificate: %s" % certs["server.crt"],
                      "    key: %s" % certs["server.key"]]
        if self.auth == "htpasswd":
            path = os.path.join(self.work, "htpasswd")
            with open(path, "wb") as handle:
                handle.write(run(["htpasswd", "-Bbn", USER, PASSWORD]).stdout)
            lines += ["auth:", "  htpasswd:", "    realm: strata-test", "    path: %s" % path]
        elif self.auth == "token":
            self.token = TokenService(self.work, realm_host=self.realm_host)
            lines += ["auth:", "  token:", "    realm: %s" % self.token.realm,
                      "    service: %s" % self.token.service,
                      "    issuer: %s" % self.token.issuer,
                      "    rootcertbundle: %s" % self.token.cert]
        return "\n".join(lines) + "\n"

    def _start(self) -> None:
        self.host = "127.0.0.1:%d" % free_port()
        config = os.path.join(self.work, "config.yml")
        with open(config, "w") as handle:
            handle.write(self._config())
        self.log = open(os.path.join(self.work, "registry.log"), "wb")
        self.proc = subprocess.Popen([REGISTRY_BIN, "serve", config], stdout=self.log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("docker-registry exited: %s" % self.read_log())
            if self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError("docker-registry did not start: %s" % self.read_log())

    def _answers(self) -> bool:
        host, port = self.host.split(":")
        if self.tls:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                host, int(port), timeout=2, context=ssl._create_unverified_context())
        else:
            conn = http.client.HTTPConnection(host, int(port), timeout=2)
        try:
            conn.request("GET", "/v2/")
            conn.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            conn.close()

    def read_log(self) -> str:
        try:
            with open(os.path.join(self.work, "registry.log"), "rb") as handle:
                return handle.read().decode("utf-8", "replace")[-3000:]
        except OSError:
            return ""

    def push(self, layout: str, ref: str, dest: str, everything: bool = False,
             fmt: Optional[str] = None) -> str:
        """``skopeo copy`` of ``layout:ref`` to ``REGISTRY/dest``; returns the name pulled."""
        args = ["skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false"]
        if self.auth:
            args.append("--dest-creds=%s:%s" % (USER, PASSWORD))
        if everything:
            args.append("--all")
        if fmt:
            args += ["--format", fmt]
        name = "%s/%s" % (self.host, dest)
        proc = subprocess.run(args + ["oci:%s:%s" % (layout, ref), "docker://" + name],
                              check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError("skopeo copy to %s failed: %s\nregistry log: %s"
                               % (name, proc.stderr, self.read_log()))
        return name

    def _conn(self) -> http.client.HTTPConnection:
        host, port = self.host.split(":")
        if self.tls:
            return http.client.HTTPSConnection(host, int(port), timeout=30,
                                               context=ssl._create_unverified_context())
        return http.client.HTTPConnection(host, int(port), timeout=30)

    def _call(self, method: str, path: str, body: bytes = b"",
              headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
        headers = dict(headers or {})
        if self.auth == "htpasswd":
            headers["Authorization"] = "Basic " + base64.b64encode(
                ("%s:%s" % (USER, PASSWORD)).encode()).decode()
        conn = self._conn()
        try:
            conn.request(method, path, body=body or None, headers=headers)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def upload(self, layout: str, desc: dict, dest: str) -> str:
        """Push one image of ``layout`` byte for byte (skopeo compresses plain layers and
        re-serialises manifests; this keeps every blob and the manifest as written)."""
        repo, tag = dest.rsplit(":", 1)
        manifest_path = os.path.join(layout, "blobs", "sha256", desc["digest"][7:])
        with open(manifest_path, "rb") as handle:
            raw = handle.read()
        manifest = json.loads(raw)
        for blob in [manifest["config"]] + manifest["layers"]:
            with open(os.path.join(layout, "blobs", "sha256", blob["digest"][7:]), "rb") as handle:
                data = handle.read()
            status, headers, _body = self._call("POST", "/v2/%s/blobs/uploads/" % repo)
            if status != 202:
                raise RuntimeError("upload start for %s answered %d" % (repo, status))
            location = urllib.parse.urlsplit(headers["Location"])
            target = location.path + "?" + (location.query + "&" if location.query else "") + \
                urllib.parse.urlencode({"digest": blob["digest"]})
            status, _headers, body = self._call("PUT", target, data,
                                                {"Content-Type": "application/octet-stream"})
            if status != 201:
                raise RuntimeError("blob upload answered %d: %r" % (status, body))
        status, _headers, body = self._call("PUT", "/v2/%s/manifests/%s" % (repo, tag), raw,
                                            {"Content-Type": manifest["mediaType"]})
        if status != 201:
            raise RuntimeError("manifest upload answered %d: %r" % (status, body))
        return "%s/%s" % (self.host, dest)

    def manifest(self, repo: str, ref: str) -> dict:
        """What the registry serves for ``repo`` ``ref``: digest, and for an image manifest its
        config and layer blob digests; for an index, each platform's manifest the same way."""
        accept = ", ".join([MT_INDEX, MT_MANIFEST,
                            "application/vnd.docker.distribution.manifest.list.v2+json",
                            "application/vnd.docker.distribution.manifest.v2+json"])
        status, headers, raw = self._call("GET", "/v2/%s/manifests/%s" % (repo, ref),
                                          headers={"Accept": accept})
        if status != 200:
            raise RuntimeError("GET manifest %s:%s answered %d" % (repo, ref, status))
        data = json.loads(raw)
        seen = {"digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                "media_type": data.get("mediaType")}
        if "manifests" in data:
            seen["platforms"] = {m["platform"]["architecture"]: self.manifest(repo, m["digest"])
                                 for m in data["manifests"]}
        else:
            seen["config"] = data["config"]["digest"]
            seen["blobs"] = [layer["digest"] for layer in data["layers"]]
        return seen

    def blob_file(self, digest: str) -> str:
        hexpart = digest.split(":", 1)[1]
        return os.path.join(self.storage, "docker", "registry", "v2", "blobs", "sha256",
                            hexpart[:2], hexpart, "data")

    def close(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.token is not None:
            self.token.close()
            self.token = None
        if getattr(self, "log", None) is not None:
            self.log.close()
        shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def registry(auth: Optional[str] = None, tls: bool = False,
             realm_host: str = "127.0.0.1") -> Iterator[Registry]:
    reg = Registry(auth=auth, tls=tls, realm_host=realm_host)
    try:
        yield reg
    finally:
        reg.close()


# ---------------------------------------------------------------------- proxies
class _QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # the tests read the counters, not a log
        pass


def _server(handler) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "proxy-authenticate",
               "proxy-authorization", "te", "trailers", "upgrade"}


class CountingProxy:
    """An HTTP proxy on loopback in front of a plain-HTTP registry that records every request.

    ``delay`` slows blob bodies down (seconds per 64 KiB); ``redirect_to`` (a BlobServer)
    answers blob GETs with a 307 to it, as registries on object storage do.
    """

    def __init__(self, backend: str, delay: float = 0.0,
                 redirect_to: Optional["BlobServer"] = None, mangle: bool = False,
                 refuse_mounts: bool = False) -> None:
        self.backend, self.delay, self.redirect_to = backend, delay, redirect_to
        self.mangle = mangle  # flip a byte of every blob upload body (PATCH, PUT ?digest=)
        self.refuse_mounts = refuse_mounts  # 403 DENIED to every POST ?mount=&from=
        self.sent = 0         # bytes of request bodies forwarded
        self.requests: List[Tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.server = _server(self._handler())
        self.host = "127.0.0.1:%d" % self.server.server_address[1]

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()

    def paths(self) -> List[str]:
        with self.lock:
            return [p for _m, p, _a in self.requests]

    def blobs(self) -> List[str]:
        """Digests of the blobs fetched, in order."""
        return [p.rsplit("/", 1)[-1] for p in self.paths() if "/blobs/" in p]

    def manifests(self) -> List[str]:
        return [p.rsplit("/", 1)[-1] for p in self.paths() if "/manifests/" in p]

    def _handler(self):
        proxy = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                self._forward("GET")

            def do_HEAD(self) -> None:
                self._forward("HEAD")

            def do_POST(self) -> None:
                self._forward("POST")

            def do_PUT(self) -> None:
                self._forward("PUT")

            def do_PATCH(self) -> None:
                self._forward("PATCH")

            def do_DELETE(self) -> None:
                self._forward("DELETE")

            def _body(self, method: str) -> Optional[bytes]:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy.lock:
                    proxy.sent += len(body)
                upload = method == "PATCH" or (method == "PUT" and "digest=" in self.path)
                if body and proxy.mangle and upload:
                    body = bytes([body[0] ^ 0xFF]) + body[1:]
                return body if method not in ("GET", "HEAD") else None

            def _forward(self, method: str) -> None:
                with proxy.lock:
                    proxy.requests.append((method, self.path,
                                           "Authorization" in self.headers))
                if proxy.refuse_mounts and method == "POST" and "mount=" in self.path:
                    self._body(method)
                    denied = b'{"errors":[{"code":"DENIED","message":"access denied"}]}'
                    self.send_response(403)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(denied)))
                    self.end_headers()
                    self.wfile.write(denied)
                    return
                if proxy.redirect_to is not None and "/blobs/" in self.path:
                    self.send_response(307)
                    self.send_header("Location", proxy.redirect_to.url_for(self.path))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                host, port = proxy.backend.split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in HOP_HEADERS}
                    body = self._body(method)
                    conn.request(method, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    self.send_response(resp.status)
                    for key, value in resp.getheaders():
                        if key.lower() not in HOP_HEADERS:
                            self.send_header(key, value)
                    self.end_headers()
                    slow = proxy.delay and "/blobs/" in self.path
                    while method != "HEAD":
                        chunk = resp.read(65536)
                        if not chunk:
                            break
                        self.wfile.write(chunk)
                        if slow:
                            time.sleep(proxy.delay)
                except (OSError, http.client.HTTPException):
                    pass  # the client went away (a killed pull): nothing to report
                finally:
                    conn.close()

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class BlobServer:
    """Blob storage on "another host": serves blob files straight from a registry's
    storage directory and records whether a request carried an Authorization header."""

    def __init__(self, reg: Registry) -> None:
        self.registry = reg
        self.requests: List[Tuple[str, bool]] = []
        self.server = _server(self._handler())
        self.host = "127.0.0.1:%d" % self.server.server_address[1]

    def url_for(self, path: str) -> str:
        return "http://%s/storage/%s?signature=test" % (self.host, path.rsplit("/", 1)[-1])

    def _handler(self):
        blobs = self

        class Handler(_QuietHandler):
            def do_GET(self) -> None:
                digest = urllib.parse.urlsplit(self.path).path.rsplit("/", 1)[-1]
                blobs.requests.append((digest, "Authorization" in self.headers))
                try:
                    with open(blobs.registry.blob_file(digest), "rb") as handle:
                        data = handle.read()
                except (OSError, IndexError):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def counting_proxy(backend: str, delay: float = 0.0, redirect_to: Optional[BlobServer] = None,
                   mangle: bool = False, refuse_mounts: bool = False) -> Iterator[CountingProxy]:
    proxy = CountingProxy(backend, delay, redirect_to, mangle, refuse_mounts)
    try:
        yield proxy
    finally:
        proxy.close()


# ---------------------------------------------------------------------- scripted hosts
class ScriptedServer:
    """A host that answers as ``route(handler, body)`` says (a hostile registry, a storage
    host, an upload host on another address), on ``host`` (any 127.0.0.0/8 address), in
    plain HTTP or TLS (``tls``: make_ca's paths), recording (method, path, Authorization)
    of every request it receives."""

    def __init__(self, route, host: str = "127.0.0.1",
                 tls: Optional[Dict[str, str]] = None) -> None:
        self.route = route
        self.requests: List[Tuple[str, str, Optional[str]]] = []
        self.lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer((host, 0), self._handler())
        self.server.daemon_threads = True
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls["server.crt"], tls["server.key"])
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.host = "%s:%d" % (host, self.server.server_address[1])
        self.url = "%s://%s" % ("https" if tls else "http", self.host)

    def authorizations(self) -> List[str]:
        with self.lock:
            return [a for _m, _p, a in self.requests if a]

    def _handler(self):
        scripted = self

        class Handler(_QuietHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                length = self.headers.get("Content-Length") or "0"
                body = self.rfile.read(int(length)) if length.isdigit() else b""
                with scripted.lock:
                    scripted.requests.append((self.command, self.path,
                                              self.headers.get("Authorization")))
                scripted.route(self, body)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _any

            def reply(self, status: int, headers: Optional[Dict[str, str]] = None,
                      body: bytes = b"") -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def scripted(route, host: str = "127.0.0.1",
             tls: Optional[Dict[str, str]] = None) -> Iterator[ScriptedServer]:
    server = ScriptedServer(route, host, tls)
    try:
        yield server
    finally:
        server.close()
