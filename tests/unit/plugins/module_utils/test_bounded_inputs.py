"""Issue 18: broken or hostile input ends in a clear error naming the input, never in a
traceback, unbounded memory or a hang that holds the store.

Every case runs the real module file as a process (``python plugins/modules/X.py
args.json``, as Ansible runs it on a host), so what is asserted is what a user sees:
JSON with ``failed`` and ``msg``, no ``Traceback`` on stderr.  Inputs are made here;
bombs and floods are small, with the bound lowered to match.  Hang cases use small
deadlines and then check that the store lock is free.
"""
from __future__ import annotations

import fcntl
import http.server
import io
import json
import os
import resource
import socket
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from tests.support import ops
from tests.support.images import make_oci_layout
from tests.support.paths import REPO, python_env
from tests.support.tars import LayerTar, write

MODULES = os.path.join(REPO, "plugins", "modules")


def module(name: str, args: dict, tmp_path, memory: int = 0) -> dict:
    """Run module ``name`` as Ansible would on a host; its JSON answer."""
    argfile = tmp_path / ("args-%s-%d.json" % (name, time.monotonic_ns()))
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))

    def limit() -> None:
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    proc = subprocess.run([sys.executable, os.path.join(MODULES, name + ".py"), str(argfile)],
                          env=python_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=limit, check=False)
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def failed(answer: dict, error: str, *fragments: str) -> None:
    assert answer.get("failed"), answer
    assert answer["error"] == error, answer
    for fragment in fragments:
        assert fragment in answer["msg"], answer["msg"]


def lock_is_free(root: str) -> bool:
    """Nobody holds the store's lock; a refused first run leaves no store (issue 12), so
    no lock file at all is free too."""
    try:
        fd = os.open(os.path.join(root, "lock"), os.O_RDONLY)
    except FileNotFoundError:
        return not os.path.exists(root)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def tar_of(members: dict) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def layer_digest(data: bytes) -> str:
    import hashlib
    return "sha256:" + hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------- JSON bombs
DEEP = b"[" * 50_000 + b"]" * 50_000


@pytest.mark.parametrize("where", ["manifest", "config", "index"])
def test_deeply_nested_json_is_refused(where, tmp_path):
    if where == "index":
        layout = str(tmp_path / "layout")
        make_oci_layout(layout, [LayerTar().file("a", b"a").bytes()])
        with open(os.path.join(layout, "index.json"), "wb") as handle:
            handle.write(b'{"schemaVersion":2,"manifests":' + DEEP + b"}")
        src, fmt = layout, "oci-layout"
    else:
        config = b'{"rootfs":{"type":"layers","diff_ids":[]},"x":' + DEEP + b"}"
        manifest = DEEP if where == "manifest" else \
            json.dumps([{"Config": "c.json", "Layers": []}]).encode()
        src = write(tmp_path / "a.tar", tar_of({"manifest.json": manifest, "c.json": config}))
        fmt = "docker-archive"
    answer = module("layer_import", {"src": src, "format": fmt,
                                     "data_root": str(tmp_path / "store")}, tmp_path)
    failed(answer, "InvalidInput", "deep", src)


def test_a_fan_out_index_is_refused_within_bounded_memory(tmp_path):
    """5,000 index entries (each naming the same manifest) against max_entries 100, and
    a 4 MiB flood of empty arrays in a config, under a 1 GiB address-space limit."""
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [LayerTar().file("a", b"a").bytes()])
    with open(os.path.join(layout, "index.json")) as handle:
        index = json.load(handle)
    index["manifests"] = index["manifests"] * 5000
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump(index, handle)
    root = str(tmp_path / "store")
    answer = module("layer_import", {"src": layout, "format": "oci-layout", "data_root": root,
                                     "max_entries": 100}, tmp_path, memory=1 << 30)
    failed(answer, "InvalidInput", "5000 entries", "max_entries")
    flood = b'{"rootfs":{"type":"layers","diff_ids":[]},"x":[' + b"[]," * (1 << 20) + b"[]]}"
    src = write(tmp_path / "flood.tar", tar_of({
        "manifest.json": json.dumps([{"Config": "c.json", "Layers": []}]).encode(),
        "c.json": flood}))
    answer = module("layer_import", {"src": src, "data_root": root, "format": "docker-archive"},
                    tmp_path, memory=1 << 30)
    failed(answer, "InvalidInput", "arrays and objects")


def test_an_archive_with_a_huge_manifest_is_not_taken_for_a_layer(tmp_path):
    layer = LayerTar().file("a", b"a").bytes()
    hexd = layer_digest(layer)[7:]
    manifest = json.dumps([{"Config": "c.json", "Layers": [hexd + "/layer.tar"],
                            "RepoTags": ["x:%d" % n]} for n in range(400)]).encode()
    src = write(tmp_path / "big.tar", tar_of({hexd + "/layer.tar": layer,
                                              "manifest.json": manifest}))
    root = str(tmp_path / "store")
    answer = module("layer_import", {"src": src, "data_root": root,
                                     "max_metadata_size": 4096}, tmp_path)
    failed(answer, "InvalidInput", src, "looks like an image archive", "max_metadata_size")
    assert not os.path.exists(os.path.join(root, "store.json")) or \
        ops.facts(root)["layers"] == []


# ---------------------------------------------------------------------- decisions
@pytest.mark.parametrize("content", ["blobs-dir", "repositories-file"])
def test_gzip_layers_that_look_like_archives_import(content, tmp_path):
    layer = LayerTar().dir("blobs").file("blobs/x", b"x").bytes() if content == "blobs-dir" \
        else LayerTar().file("repositories", b'{"app": {}}').file("etc/a", b"a").bytes()
    src = write(tmp_path / "layer.tar.gz", layer, "gzip")
    answer = module("layer_import", {"src": src, "data_root": str(tmp_path / "store")},
                    tmp_path)
    assert answer["changed"] and not answer.get("failed"), answer
    assert answer["layers"][0]["diff_id"] == layer_digest(layer)


def test_an_absolute_hardlink_name_is_relative_to_the_layer_root(tmp_path):
    layer = LayerTar().dir("usr").dir("usr/bin").file("usr/bin/x", b"#!x", mode=0o755) \
        .hardlink("usr/bin/y", "/usr/bin/x").bytes()
    src = write(tmp_path / "abs.tar", layer)
    answer = module("layer_import", {"src": src, "data_root": str(tmp_path / "store")},
                    tmp_path)
    assert answer["changed"] and answer["layers"][0]["diff_id"] == layer_digest(layer), answer


def test_an_archive_too_deep_for_the_driver_leaves_the_store_as_it_was(tmp_path):
    root = str(tmp_path / "store")
    ops.run_here("migrate", {"data_root": root, "driver": "overlay2"})
    ops.run_here("import", {"data_root": root, "src": write(
        tmp_path / "base.tar", LayerTar().file("b", b"b").bytes()), "tag": ["base:1"]})
    before = ops.snapshot(root)
    layout = str(tmp_path / "deep")
    make_oci_layout(layout, [LayerTar().file("f%d" % n, b"%d" % n).bytes() for n in range(126)],
                    compress=False)
    answer = module("layer_import", {"src": layout, "data_root": root}, tmp_path)
    failed(answer, "Unsupported", layout, "126 layers", "at most 125")
    assert ops.snapshot(root) == before


# ---------------------------------------------------------------------- sources that never end
def test_sources_that_are_not_regular_files(tmp_path):
    root = str(tmp_path / "store")
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    failed(module("layer_import", {"src": fifo, "data_root": root}, tmp_path),
           "InvalidInput", fifo, "format: layer")
    failed(module("layer_import", {"src": "/dev/zero", "data_root": root}, tmp_path),
           "InvalidInput", "/dev/zero")
    sock_path = str(tmp_path / "sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(sock_path)
    try:
        failed(module("layer_import", {"src": sock_path, "data_root": root,
                                       "format": "layer"}, tmp_path),
               "InvalidInput", sock_path, "socket")
    finally:
        sock.close()
    # /dev/zero as a layer stream: bounded by max_size, then refused
    answer = module("layer_import", {"src": "/dev/zero", "format": "layer", "data_root": root,
                                     "max_size": 1 << 20}, tmp_path)
    failed(answer, "InvalidInput", "/dev/zero", "max_size")
    # a FIFO nobody writes to: gives up after src_timeout, lock free
    answer = module("layer_import", {"src": fifo, "format": "layer", "data_root": root,
                                     "src_timeout": 1}, tmp_path)
    failed(answer, "InvalidInput", fifo, "no data for 1 seconds")
    assert lock_is_free(root)


def test_a_fifo_with_a_writer_imports(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    layer = LayerTar().file("streamed", b"s").bytes()

    def feed() -> None:
        with open(fifo, "wb") as handle:
            handle.write(layer)
    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        answer = module("layer_import", {"src": fifo, "format": "layer",
                                         "data_root": str(tmp_path / "store")}, tmp_path)
    finally:
        feeder.join(timeout=60)
    assert answer["changed"] and answer["layers"][0]["diff_id"] == layer_digest(layer)


# ---------------------------------------------------------------------- read-only data root
def test_a_read_only_data_root(tmp_path):
    root = str(tmp_path / "store")
    ops.run_here("import", {"data_root": root, "src": write(
        tmp_path / "a.tar", LayerTar().file("a", b"a").bytes()), "tag": ["a:1"]})
    subprocess.run(["mount", "--bind", root, root], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", root], check=True)
        info = module("store_info", {"data_root": root}, tmp_path)
        assert not info.get("failed") and info["images"][0]["tags"] == ["a:1"], info
        checked = module("store_check", {"data_root": root}, tmp_path)
        assert checked["ok"], checked
        src = write(tmp_path / "b.tar", LayerTar().file("b", b"b").bytes())
        for name, args in (("layer_import", {"src": src}),
                           ("container_layer", {"name": "c", "image": "a:1"}),
                           ("image", {"name": "a:1", "tag": ["b:1"]}),
                           ("store_prune", {})):
            failed(module(name, dict(args, data_root=root), tmp_path), "StoreError",
                   root, "read-only")
    finally:
        subprocess.run(["umount", root], check=True)


# ---------------------------------------------------------------------- full disk
def fill(path: str) -> str:
    """Fill the filesystem of ``path`` to the last block; returns the filler's name."""
    filler = os.path.join(os.path.dirname(path), "filler")
    with open(filler, "wb") as handle:
        chunk = b"\xa5" * (1 << 20)
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError:
            pass
        try:
            while True:
                handle.write(b"\xa5" * 4096)
                handle.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_during_tag_container_removal_and_prune(make_fs, tmp_path):
    fs = make_fs("ext4", 40)
    root = os.path.join(fs.mountpoint, "store")
    try:
        ops.run_here("migrate", {"data_root": root, "driver": "overlay2"})
        ops.run_here("import", {"data_root": root, "src": write(
            tmp_path / "a.tar", LayerTar().file("a", b"a" * 5000).bytes()), "tag": ["a:1"]})
        ops.run_here("import", {"data_root": root, "src": write(   # unused: prune's work
            tmp_path / "u.tar", LayerTar().file("u", b"u" * 5000).bytes())})
        ops.run_here("container", {"data_root": root, "name": "c", "image": "a:1"})
        ops.settle(root)
        filler = fill(root)
        try:
            before = ops.snapshot(root)
            for name, args in (("image", {"name": "a:1", "tag": ["b:1"]}),
                               ("container_layer", {"name": "c", "state": "absent"}),
                               ("store_prune", {})):
                failed(module(name, dict(args, data_root=root), tmp_path), "NoSpace",
                       "no space left", "free space")
                assert ops.snapshot(root) == before
                assert lock_is_free(root)
        finally:
            os.unlink(filler)
        assert ops.findings(root) == []
        assert module("store_prune", {"data_root": root}, tmp_path)["changed"]
    finally:
        ops.unmount_and_remove(root)


# ---------------------------------------------------------------------- registries
class FakeRegistry:
    """A registry of one image served from memory, with hostile behaviours on demand:
    ``stall`` (accept, never answer), ``drip`` (a blob a byte at a time), ``huge_401`` /
    ``huge_redirect`` (bodies that never end).  It counts blob requests."""

    def __init__(self, layers: int = 1, behaviour: str = "", layer_size: int = 0) -> None:
        self.behaviour, self.blob_requests = behaviour, []
        self.arrived = threading.Event()
        self.blobs = {}
        descs, diff_ids = [], []
        for n in range(layers):
            data = LayerTar().file("f%d" % n, b"%d" % n + b"\0" * layer_size).bytes()
            digest = layer_digest(data)
            self.blobs[digest] = data
            diff_ids.append(digest)
            descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar",
                          "digest": digest, "size": len(data)})
        config = json.dumps({"architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
        self.blobs[layer_digest(config)] = config
        self.manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": layer_digest(config), "size": len(config)},
            "layers": descs}).encode()
        self.config_digest = layer_digest(config)
        self.last_layer = diff_ids[-1] if diff_ids else None
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.host = "127.0.0.1:%d" % self.server.server_address[1]

    def _handler(self):
        reg = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def endless(self, status: int, extra: dict) -> None:
                self.send_response(status)
                for key, value in extra.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(1 << 40))
                self.end_headers()
                try:
                    while True:
                        self.wfile.write(b"x" * 65536)
                except OSError:
                    pass

            def do_GET(self) -> None:
                if reg.behaviour == "stall":
                    time.sleep(30)
                    return
                if reg.behaviour == "huge_401":
                    return self.endless(401, {"WWW-Authenticate": "Basic realm=x"})
                if reg.behaviour == "huge_redirect" and "/elsewhere" not in self.path:
                    return self.endless(302, {"Location": "/elsewhere" + self.path})
                path = self.path.replace("/elsewhere", "")
                if "/manifests/" in path:
                    return self.answer(reg.manifest, "application/vnd.oci.image.manifest.v1+json")
                digest = path.rsplit("/", 1)[-1]
                if digest != reg.config_digest:
                    reg.blob_requests.append(digest)
                data = reg.blobs.get(digest)
                if data is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                if reg.behaviour == "slow" and digest != reg.config_digest:
                    reg.arrived.wait(60)      # held until the test has seen the lock free
                if reg.behaviour == "slow-last" and digest == reg.last_layer:
                    reg.arrived.wait(60)
                if reg.behaviour == "drip" and digest != reg.config_digest:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    try:
                        for byte in data:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(0.2)
                    except OSError:
                        pass
                    return
                self.answer(data, "application/octet-stream")

            def answer(self, data: bytes, media_type: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", media_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_registry():
    made = []

    def factory(**kw) -> FakeRegistry:
        made.append(FakeRegistry(**kw))
        return made[-1]
    yield factory
    for reg in made:
        reg.close()


def pull_args(reg: FakeRegistry, root: str, **extra) -> dict:
    return dict({"name": "%s/test/img:1" % reg.host, "insecure": True, "data_root": root},
                **extra)


def test_a_pull_works_against_the_fake_registry(fake_registry, tmp_path):
    reg = fake_registry(layers=2)
    answer = module("image_pull", pull_args(reg, str(tmp_path / "store")), tmp_path)
    assert answer["changed"] and len(answer["layers"]) == 2, answer


@pytest.mark.parametrize("behaviour, options, fragments", [
    ("stall", {"timeout": 1}, ["no answer within"]),
    ("drip", {"timeout": 5, "blob_timeout": 2}, ["not complete within 2 seconds",
                                                 "blob_timeout"]),
    ("huge_401", {}, ["requires authentication"]),
    ("huge_redirect", {}, None),        # the redirect's endless body is never read
])
def test_registry_hangs_and_floods_end_with_a_clear_error(behaviour, options, fragments,
                                                          fake_registry, tmp_path):
    reg = fake_registry(behaviour=behaviour, layer_size=64)
    root = str(tmp_path / "store")
    answer = module("image_pull", pull_args(reg, root, **options), tmp_path, memory=1 << 30)
    if fragments is None:
        assert answer["changed"] and not answer.get("failed"), answer
        return
    assert answer.get("failed"), answer
    for fragment in fragments:
        assert fragment in answer["msg"], answer["msg"]
    assert not os.path.exists(os.path.join(root, "lock")) or lock_is_free(root)


def test_a_pull_too_deep_for_the_driver_downloads_nothing(fake_registry, tmp_path):
    reg = fake_registry(layers=126)
    root = str(tmp_path / "store")
    ops.run_here("migrate", {"data_root": root, "driver": "overlay2"})
    answer = module("image_pull", pull_args(reg, root), tmp_path)
    failed(answer, "Unsupported", "126 layers", "at most 125")
    assert reg.blob_requests == []
    assert ops.facts(root)["layers"] == []


def test_max_size_is_checked_before_any_download(fake_registry, tmp_path):
    reg = fake_registry(layers=3, layer_size=200_000)
    root = str(tmp_path / "store")
    answer = module("image_pull", pull_args(reg, root, max_size=100_000), tmp_path)
    failed(answer, "InvalidInput", "max_size", "before downloading")
    assert reg.blob_requests == []


def test_a_registry_port_out_of_range_is_named(tmp_path):
    answer = module("image_pull", {"name": "127.0.0.1:99999/x/y:1", "insecure": True,
                                   "data_root": str(tmp_path / "store")}, tmp_path)
    failed(answer, "InvalidReference", "99999", "out of range")


def test_challenges_are_parsed_in_one_pass():
    from ansible_collections.strata.layers.plugins.module_utils._registry import (
        parse_challenges)
    assert parse_challenges('Bearer realm="https://a/t",service="r",scope="repository:x:pull"') \
        == {"bearer": {"realm": "https://a/t", "service": "r", "scope": "repository:x:pull"}}
    assert parse_challenges('Basic realm="x", Bearer realm="a\\"b",service=s') == \
        {"basic": {"realm": "x"}, "bearer": {"realm": 'a"b', "service": "s"}}
    # inputs that made the former regex split quadratic: they end (no timing asserted)
    for header in (", " * 50_000, "Bearer " + "a " * 50_000, "Bearer a" + " " * 100_000 + "b",
                   'x="' + '\\"' * 50_000, "Bearer " + "a a=" * 25_000):
        assert isinstance(parse_challenges(header), dict)


@pytest.mark.parametrize("existing", ["deep", "dev-zero", "not-objects"])
def test_export_into_a_layout_with_a_hostile_index(existing, tmp_path):
    root = str(tmp_path / "store")
    ops.run_here("import", {"data_root": root, "src": write(
        tmp_path / "a.tar", LayerTar().file("a", b"a").bytes()), "tag": ["a:1"]})
    dest = tmp_path / "layout"
    dest.mkdir()
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = dest / "index.json"
    if existing == "deep":
        index.write_bytes(b'{"manifests":' + DEEP + b"}")
    elif existing == "dev-zero":
        index.symlink_to("/dev/zero")
    else:
        index.write_text('{"manifests": [1, "x", null]}')
    answer = module("image_export", {"data_root": root, "image": "a:1", "dest": str(dest),
                                     "format": "oci-layout"}, tmp_path)
    # refused in bounded time, naming the index, before anything is written (an export
    # merges into it: taking it as empty would drop the layout's other images)
    failed(answer, "InvalidInput", str(index))
    assert sorted(os.listdir(str(dest))) == ["index.json", "oci-layout"]


def start_pull(reg, tmp_path):
    """A store holding one image, and image_pull from ``reg`` into it started as a module
    process (not waited for)."""
    root = str(tmp_path / "store")
    ops.run_here("import", {"data_root": root, "src": write(
        tmp_path / "a.tar", LayerTar().file("a", b"a").bytes()), "tag": ["a:1"]})
    argfile = tmp_path / "pull.json"
    argfile.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": pull_args(reg, root)}))
    puller = subprocess.Popen([sys.executable, os.path.join(MODULES, "image_pull.py"),
                               str(argfile)], env=python_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    return root, puller


def test_a_pull_downloads_without_holding_the_store_lock(fake_registry, tmp_path):
    """While the layers download (held back by the registry), another change to the
    store goes through with a 1 s lock timeout; then the pull completes."""
    reg = fake_registry(layers=2, behaviour="slow")
    root, puller = start_pull(reg, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(reg.blob_requests) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(reg.blob_requests) == 2, "the pull never asked for its layers"
        assert lock_is_free(root)
        tagged = module("image", {"data_root": root, "name": "a:1", "tag": ["b:1"],
                                  "lock_timeout": 1}, tmp_path)
        assert tagged["changed"], tagged
        reg.arrived.set()
        out, err = puller.communicate(timeout=120)
    finally:
        reg.arrived.set()
        if puller.poll() is None:
            puller.kill()
            puller.wait()
    assert "Traceback" not in err, err
    assert json.loads(out)["changed"]
    assert os.listdir(os.path.join(root, "downloads")) == []
    assert ops.findings(root) == []


def test_downloads_left_by_a_killed_pull_are_swept(fake_registry, tmp_path):
    reg = fake_registry(layers=1)
    root = str(tmp_path / "store")
    ops.run_here("import", {"data_root": root, "src": write(
        tmp_path / "a.tar", LayerTar().file("a", b"a").bytes())})
    stale = os.path.join(root, "downloads", "0123456789abcdef")
    os.makedirs(stale)
    with open(os.path.join(stale, "0-partial"), "wb") as handle:
        handle.write(b"x" * 1000)
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    answer = module("image_pull", pull_args(reg, root), tmp_path)
    assert answer["changed"], answer
    assert os.listdir(os.path.join(root, "downloads")) == []


# ---------------------------------------------------------------------- sparse files
def allocated(path: str) -> int:
    return os.lstat(path).st_blocks * 512


@pytest.mark.parametrize("driver", ["overlay2", "vfs"])
def test_a_sparse_file_stays_sparse_through_commit_export_and_migration(driver, make_fs,
                                                                        tmp_path):
    """A 256 MiB sparse file in a container on a 40 MB ext4: the commit fits, the new
    layer's copy is sparse, re-imported and migrated copies too, and an exported
    oci-layout keeps the holes."""
    fs = make_fs("ext4", 40)
    root = os.path.join(fs.mountpoint, "store")
    try:
        ops.run_here("migrate", {"data_root": root, "driver": driver})
        ops.run_here("import", {"data_root": root, "src": write(
            tmp_path / "a.tar", LayerTar().dir("srv").file("srv/a", b"a").bytes()),
            "tag": ["a:1"]})
        made = ops.run_here("container", {"data_root": root, "name": "c", "image": "a:1",
                                          "state": "mounted"})
        big = os.path.join(made["mount_point"], "srv", "disk.img")
        with open(big, "wb") as handle:
            handle.write(b"head")
            handle.seek(128 << 20)
            handle.write(b"middle")
            handle.truncate(256 << 20)
        committed = module("container_commit", {"data_root": root, "name": "c",
                                                "tag": ["sparse:1"]}, tmp_path)
        assert committed["changed"] and not committed.get("failed"), committed
        ops.run_here("container", {"data_root": root, "name": "c", "state": "absent"})
        view = ops.run_here("container", {"data_root": root, "name": "v", "image": "sparse:1",
                                          "state": "mounted"})
        copy = os.path.join(view["mount_point"], "srv", "disk.img")
        assert os.path.getsize(copy) == 256 << 20 and allocated(copy) < 4 << 20
        with open(copy, "rb") as handle:
            handle.seek(128 << 20)
            assert handle.read(6) == b"middle"
        ops.run_here("container", {"data_root": root, "name": "v", "state": "absent"})
        layout = os.path.join(fs.mountpoint, "layout")
        exported = module("image_export", {"data_root": root, "image": "sparse:1",
                                           "dest": layout, "format": "oci-layout"}, tmp_path)
        assert exported["changed"] and not exported.get("failed"), exported
        blobs = os.path.join(layout, "blobs", "sha256")
        assert sum(allocated(os.path.join(blobs, b)) for b in os.listdir(blobs)) < 4 << 20
        other = "vfs" if driver == "overlay2" else "overlay2"
        moved = module("storage_driver", {"data_root": root, "driver": other, "migrate": True},
                       tmp_path)
        assert not moved.get("failed"), moved
        view = ops.run_here("container", {"data_root": root, "name": "w", "image": "sparse:1",
                                          "state": "mounted"})
        assert allocated(os.path.join(view["mount_point"], "srv", "disk.img")) < 4 << 20
        ops.run_here("container", {"data_root": root, "name": "w", "state": "absent"})
        assert ops.findings(root) == []
    finally:
        ops.unmount_and_remove(root)


def test_index_entries_naming_one_manifest_cost_it_once(tmp_path):
    """1,000 entries naming one manifest whose config is 1 MiB: read, hashed and parsed
    once (it was ~24 MiB more per entry), so the import fits in 1 GiB of address space."""
    layer = LayerTar().file("a", b"a").bytes()
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Labels": {"l%d" % n: "v" * 100 for n in range(10_000)}},
                         "rootfs": {"type": "layers", "diff_ids": [layer_digest(layer)]}}).encode()
    layout = str(tmp_path / "layout")
    make_oci_layout(layout, [layer], ref=None, config=config)
    with open(os.path.join(layout, "index.json")) as handle:
        index = json.load(handle)
    index["manifests"] = index["manifests"] * 1000
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump(index, handle)
    answer = module("layer_import", {"src": layout, "format": "oci-layout",
                                     "data_root": str(tmp_path / "store")}, tmp_path,
                    memory=1 << 30)
    assert answer["changed"] and len(answer["image_ids"]) == 1000, answer.get("msg")


def test_a_layer_pruned_between_turns_is_applied_again(fake_registry, tmp_path):
    """The lock is taken per layer: store_prune may remove layer 1 (no image uses it yet)
    while layer 2 downloads; the pull applies it again from its file and completes."""
    reg = fake_registry(layers=2, behaviour="slow-last")
    root, puller = start_pull(reg, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(ops.facts(root)["layers"]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(ops.facts(root)["layers"]) == 2, "layer 1 was never applied"
        pruned = module("store_prune", {"data_root": root, "lock_timeout": 5}, tmp_path)
        assert pruned["removed"]["layers"], pruned
        reg.arrived.set()
        out, err = puller.communicate(timeout=120)
    finally:
        reg.arrived.set()
        if puller.poll() is None:
            puller.kill()
            puller.wait()
    assert "Traceback" not in err, err
    answer = json.loads(out)
    assert answer["changed"] and [layer["imported"] for layer in answer["layers"]] == [True, True]
    assert ops.findings(root) == []
