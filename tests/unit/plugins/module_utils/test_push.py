"""image_push against the real Debian docker-registry on loopback (htpasswd + TLS, and plain
HTTP behind a recording proxy), checked by the other clients: skopeo, podman and our own
image_pull must see the very image the store holds (same image id).

Every registry, proxy, podman root and temp dir is removed at teardown.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    DigestMismatch, InvalidInput, InvalidReference, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.image_push import image_push
from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    AuthenticationRefused)
from tests.support import registry as reg_support
from tests.support.paths import COLLECTIONS
from tests.support.podman import private_podman
from tests.support.registry import (
    PASSWORD, USER, counting_proxy, image_layout, layer_tar, registry)

pytestmark = pytest.mark.skipif(reg_support.missing_tools() is not None,
                                reason=str(reg_support.missing_tools()))


def _files(tag: str, count: int = 3, size: int = 40000) -> dict:
    return {"%s/f%d" % (tag, n): os.urandom(size) for n in range(count)}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    work = str(tmp_path_factory.mktemp("push-layouts"))
    base = [(layer_tar(_files("b%d" % n)), "gzip") for n in range(2)]
    made = {
        "app": image_layout(os.path.join(work, "app"), "1",
                            base + [(layer_tar(_files("app")), "gzip")]),
        "big": image_layout(os.path.join(work, "big"), "1",
                            [(layer_tar(_files("big", 5, 2 << 20)), "plain")]),
    }
    made["work"] = work
    return made


@pytest.fixture(scope="module")
def source_store(layouts, tmp_path_factory):
    """A store holding ``app:1`` and ``big:1`` (imported from OCI layouts)."""
    root = str(tmp_path_factory.mktemp("push-store") / "store")
    for name in ("app", "big"):
        layer_import({"src": os.path.join(layouts["work"], name), "format": "oci-layout",
                      "tag": ["%s:1" % name], "data_root": root, "lock_timeout": 30})
    return root


@pytest.fixture(scope="module")
def secure():
    with registry(auth="htpasswd", tls=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def plain():
    with registry() as reg:
        yield reg


def copy_store(src: str, dst: str) -> str:
    """A private copy of a store (each test pushes from its own records)."""
    subprocess.run(["cp", "-a", src, dst], check=True)
    return dst


def push(store: str, name: str, dest: str, check_mode: bool = False, **options) -> dict:
    params = {"name": name, "dest": dest, "data_root": store, "lock_timeout": 30,
              "timeout": 20}
    params.update(options)
    return image_push(params, check_mode=check_mode)


def secure_opts(reg) -> dict:
    return {"ca_path": reg.ca, "username": USER, "password": PASSWORD}


# ---------------------------------------------------------------------- push, pull back
def test_push_then_pull_by_skopeo_podman_and_image_pull(secure, layouts, source_store,
                                                        tmp_path):
    store = copy_store(source_store, str(tmp_path / "store"))
    dest = "%s/team/app:1" % secure.host
    result = push(store, "app:1", dest, **secure_opts(secure))
    expected = layouts["app"]["image_id"]
    assert result["changed"] is True
    assert result["image_id"] == expected
    assert len(result["blobs"]["uploaded"]) == 4          # three layers and the config
    assert result["blobs"]["skipped"] == result["blobs"]["mounted"] == []
    assert result["bytes_sent"] > 3 * 3 * 40000
    seen = secure.manifest("team/app", "1")
    assert seen["digest"] == result["digest"]
    assert seen["config"] == expected
    assert seen["media_type"] == "application/vnd.oci.image.manifest.v1+json"

    # skopeo reads the config we pushed: its digest is our image id
    raw = subprocess.run(["skopeo", "inspect", "--config", "--raw", "--tls-verify=false",
                          "--creds", "%s:%s" % (USER, PASSWORD), "docker://" + dest],
                         check=True, capture_output=True).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == expected
    # and copies the image (every blob verified against the manifest)
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--src-tls-verify=false",
                    "--src-creds", "%s:%s" % (USER, PASSWORD), "docker://" + dest,
                    "oci:%s:x" % (tmp_path / "skopeo")], check=True, capture_output=True)
    # podman (in a private root, vfs: nothing mounted) gives it the same id
    with private_podman(str(tmp_path / "podman-root")) as podman:
        proc = subprocess.run(podman + ["pull", "-q", "--tls-verify=false", "--creds",
                                        "%s:%s" % (USER, PASSWORD), dest], check=False,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        ident = subprocess.run(podman + ["image", "inspect", "--format", "{{.Id}}", dest],
                               check=True, capture_output=True, text=True).stdout.strip()
        assert "sha256:" + ident == expected
    # and our own pull, into another store
    pulled = image_pull({"name": dest, "data_root": str(tmp_path / "other"), "lock_timeout": 30,
                         "timeout": 20, **secure_opts(secure)})
    assert pulled["image_id"] == expected
    assert [l["diff_id"] for l in pulled["layers"]] == layouts["app"]["diff_ids"]


def test_repush_sends_nothing_and_compresses_nothing(plain, source_store, tmp_path):
    store = copy_store(source_store, str(tmp_path / "store"))
    with counting_proxy(plain.host) as proxy:
        dest = "%s/team/again:1" % proxy.host
        first = push(store, "app:1", dest, insecure=True)
        assert first["changed"] is True
        proxy.reset()
        again = push(store, "app:1", dest, insecure=True)
        assert again["changed"] is False
        assert again["digest"] == first["digest"]
        assert again["blobs"]["uploaded"] == again["blobs"]["mounted"] == []
        assert sorted(again["blobs"]["skipped"]) == sorted(first["blobs"]["uploaded"])
        assert again["bytes_sent"] == 0
        # one question: the manifest under the tag
        assert [m for m, _p, _a in proxy.requests] == ["HEAD"]
        assert proxy.paths() == ["/v2/team/again/manifests/1"]
        # check mode on a pushed image: nothing to do either
        checked = push(store, "app:1", dest, check_mode=True, insecure=True)
        assert checked["changed"] is False


def test_check_mode_lists_blobs_and_sends_nothing(plain, source_store, tmp_path):
    store = copy_store(source_store, str(tmp_path / "store"))
    before = _tree(store)
    with counting_proxy(plain.host) as proxy:
        dest = "%s/team/check:1" % proxy.host
        plan = push(store, "app:1", dest, check_mode=True, insecure=True)
        assert plan["changed"] is True
        assert len(plan["blobs"]["uploaded"]) == 4
        assert plan["bytes_sent"] == 0
        assert proxy.sent == 0
        assert {m for m, _p, _a in proxy.requests} == {"HEAD"}
    assert _tree(store) == before
    done = push(store, "app:1", "%s/team/check:1" % plain.host, insecure=True)
    assert sorted(done["blobs"]["uploaded"]) == sorted(plan["blobs"]["uploaded"])
    assert done["digest"] == plan["digest"]


def test_deterministic_compression_across_stores(plain, source_store, tmp_path):
    """Two stores that never saw each other's records produce the same blobs."""
    one = copy_store(source_store, str(tmp_path / "one"))
    two = copy_store(source_store, str(tmp_path / "two"))
    first = push(one, "app:1", "%s/det/a:1" % plain.host, insecure=True)
    second = push(two, "app:1", "%s/det/b:1" % plain.host, insecure=True)
    assert first["digest"] == second["digest"]
    assert first["blobs"]["uploaded"] == second["blobs"]["uploaded"]


@pytest.mark.parametrize("compression,fmt", [("zstd", "oci"), ("none", "oci"),
                                             ("gzip", "docker")])
def test_compressions_and_formats_pull_back(plain, layouts, source_store, tmp_path,
                                            compression, fmt):
    store = copy_store(source_store, str(tmp_path / "store"))
    dest = "%s/fmt/%s-%s:1" % (plain.host, compression, fmt)
    result = push(store, "app:1", dest, insecure=True, compression=compression,
                  manifest_format=fmt)
    seen = plain.manifest("fmt/%s-%s" % (compression, fmt), "1")
    assert seen["digest"] == result["digest"]
    if fmt == "docker":
        assert seen["media_type"] == "application/vnd.docker.distribution.manifest.v2+json"
    pulled = image_pull({"name": dest, "insecure": True, "data_root": str(tmp_path / "back"),
                         "lock_timeout": 30})
    assert pulled["image_id"] == layouts["app"]["image_id"]
    again = push(store, "app:1", dest, insecure=True, compression=compression,
                 manifest_format=fmt)
    assert again["changed"] is False


def test_pulled_image_is_mounted_into_another_repository(plain, layouts, tmp_path):
    plain.push(os.path.join(layouts["work"], "app"), "1", "origin/app:1")
    store = str(tmp_path / "store")
    pulled = image_pull({"name": "%s/origin/app:1" % plain.host, "insecure": True,
                         "data_root": store, "lock_timeout": 30})
    result = push(store, pulled["image_id"], "%s/copy/app:2" % plain.host, insecure=True)
    assert result["changed"] is True
    assert result["blobs"]["uploaded"] == []
    assert len(result["blobs"]["mounted"]) == 4       # three layers and the config
    assert result["bytes_sent"] < 2000                # the manifest only
    seen = plain.manifest("copy/app", "2")
    assert seen["config"] == layouts["app"]["image_id"]
    assert seen["blobs"] == plain.manifest("origin/app", "1")["blobs"]


def test_a_refused_mount_falls_back_to_an_upload(plain, layouts, tmp_path):
    plain.push(os.path.join(layouts["work"], "app"), "1", "origin/app:1")
    with counting_proxy(plain.host, refuse_mounts=True) as proxy:
        store = str(tmp_path / "store")
        pulled = image_pull({"name": "%s/origin/app:1" % proxy.host, "insecure": True,
                             "data_root": store, "lock_timeout": 30})
        result = push(store, pulled["image_id"], "%s/refused/app:2" % proxy.host,
                      insecure=True)
        assert any("mount=" in path for path in proxy.paths())     # asked, and refused
    assert result["changed"] is True
    assert result["blobs"]["mounted"] == []
    assert len(result["blobs"]["uploaded"]) == 4       # three layers and the config
    assert plain.manifest("refused/app", "2")["config"] == layouts["app"]["image_id"]


def _tree(root: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, int(st.st_mtime_ns))
    return out


# ---------------------------------------------------------------------- failures
def test_bad_credentials_fail_naming_the_registry(secure, source_store, tmp_path):
    with pytest.raises(AuthenticationRefused) as info:
        push(source_store, "app:1", "%s/team/denied:1" % secure.host, ca_path=secure.ca,
             username=USER, password="wrong-" + PASSWORD)
    message = str(info.value)
    assert secure.host in message and "refused the credentials" in message
    assert PASSWORD not in message
    with pytest.raises(AuthenticationRefused) as info:
        push(source_store, "app:1", "%s/team/denied:1" % secure.host, ca_path=secure.ca)
    assert "requires authentication" in str(info.value)


def test_rejected_digest_fails_clearly_and_store_is_untouched(plain, source_store, tmp_path):
    store = copy_store(source_store, str(tmp_path / "store"))
    before = _tree(store)
    with counting_proxy(plain.host, mangle=True) as proxy:
        with pytest.raises(DigestMismatch) as info:
            push(store, "app:1", "%s/team/mangled:1" % proxy.host, insecure=True)
    assert "rejected blob" in str(info.value) and "DIGEST_INVALID" in str(info.value)
    assert _tree(store) == before
    with pytest.raises(RuntimeError, match="answered 404"):   # the test registry client's error
        plain.manifest("team/mangled", "1")


def test_bad_input(source_store):
    with pytest.raises(InvalidReference):
        push(source_store, "app:1", "team/app:1")
    with pytest.raises(InvalidReference):
        push(source_store, "app:1", "127.0.0.1:5/team/app@sha256:" + "a" * 64)
    with pytest.raises(InvalidInput) as info:
        push(source_store, "app:1", "127.0.0.1:5/team/app:1", compression="zstd",
             manifest_format="docker")
    assert "manifest_format" in str(info.value)
    with pytest.raises(NotFound):
        push(source_store, "nope:1", "127.0.0.1:5/team/app:1", insecure=True)


# ---------------------------------------------------------------------- large blobs
def _push_in_child(store: str, dest: str, crash_at: str, skip: int) -> subprocess.CompletedProcess:
    code = ("import sys; sys.path[:0] = %r; "
            "from ansible_collections.strata.layers.plugins.module_utils._ops.image_push "
            "import image_push; image_push({'name': 'big:1', 'dest': %r, 'data_root': %r, "
            "'insecure': True, 'lock_timeout': 30, 'chunk_size': 1 << 20})"
            % ([COLLECTIONS], dest, store))
    env = dict(os.environ, STRATA_CRASH_AT=crash_at, STRATA_CRASH_SKIP=str(skip))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=False)


def test_push_killed_mid_blob_resumes(plain, source_store, tmp_path):
    store = copy_store(source_store, str(tmp_path / "store"))
    dest = "%s/team/big:1" % plain.host
    proc = _push_in_child(store, dest, "image_push.chunk", 3)    # killed after 4 chunks
    assert proc.returncode == -9, proc.stderr
    uploads = os.listdir(os.path.join(store, "registry", "uploads"))
    assert len(uploads) == 1
    result = push(store, "big:1", dest, insecure=True, chunk_size=1 << 20)
    assert result["changed"] is True
    [layer_blob] = [d for d in result["blobs"]["uploaded"] if d != result["image_id"]]
    size = os.path.getsize(plain.blob_file(layer_blob))
    # the four chunks the killed push sent are not sent again
    assert result["bytes_sent"] < size - 4 * (1 << 20) + 20000
    assert os.listdir(os.path.join(store, "registry", "uploads")) == []
    pulled = image_pull({"name": dest, "insecure": True, "data_root": str(tmp_path / "back"),
                         "lock_timeout": 30})
    assert pulled["image_id"] == result["image_id"]


def test_large_layer_pushes_in_chunks(plain, layouts, source_store, tmp_path):
    store = copy_store(source_store, str(tmp_path / "store"))
    with counting_proxy(plain.host) as proxy:
        result = push(store, "big:1", "%s/team/chunks:1" % proxy.host, insecure=True,
                      chunk_size=1 << 20)
        patches = [p for m, p, _a in proxy.requests if m == "PATCH"]
    assert len(patches) >= 5              # ~10 MiB compressed, 1-2 MiB a PATCH
    assert result["image_id"] == layouts["big"]["image_id"]


PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    strata.layers.image_push:
      data_root: "{{ root }}"
      ca_path: "{{ ca }}"
      username: "{{ user }}"
      password: "{{ secret }}"
  tasks:
    - name: check mode lists what it would send
      strata.layers.image_push: {name: "app:1", dest: "{{ dest }}"}
      check_mode: true
      register: plan
    - strata.layers.image_push: {name: "app:1", dest: "{{ dest }}"}
      register: first
    - strata.layers.image_push: {name: "app:1", dest: "{{ dest }}"}
      register: second
    - strata.layers.image_push: {name: "app:1", dest: "{{ dest }}", password: "wrong-{{ secret }}"}
      register: bad
      ignore_errors: true
    - ansible.builtin.assert:
        that:
          - plan is changed and plan.blobs.uploaded | length == 4 and plan.bytes_sent == 0
          - first is changed and first.blobs.uploaded | sort == plan.blobs.uploaded | sort
          - second is not changed and second.bytes_sent == 0
          - second.digest == first.digest
          - bad is failed and 'refused the credentials' in bad.msg
          - bad.error == 'AuthenticationRefused'
"""


def test_through_ansible_playbook(secure, source_store, tmp_path):
    store = copy_store(source_store, str(tmp_path / "store"))
    playbook = tmp_path / "push.yml"
    playbook.write_text(PLAYBOOK)
    extra = {"root": store, "ca": secure.ca, "user": USER, "secret": PASSWORD,
             "dest": "%s/play/app:1" % secure.host}
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    bindir = os.path.dirname(sys.executable)
    proc = subprocess.run([os.path.join(bindir, "ansible-playbook"), "-vvv", str(playbook),
                           "-e", json.dumps(extra)], env=env, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    # no_log: the password is in no result and no message, even at -vvv
    assert PASSWORD not in proc.stdout.replace(json.dumps(extra), "")


def test_large_layer_is_asked_for_before_it_is_sent(plain, source_store, tmp_path):
    """Another store with the same layer and no records of it: the layer is compressed to
    a spool file, found at the registry by its (deterministic) digest, and not sent."""
    one = copy_store(source_store, str(tmp_path / "one"))
    two = copy_store(source_store, str(tmp_path / "two"))
    dest = "%s/team/spooled:1" % plain.host
    first = push(one, "big:1", dest, insecure=True, chunk_size=4 << 20)
    assert len(first["blobs"]["uploaded"]) == 2
    second = push(two, "big:1", dest, insecure=True)
    assert second["blobs"]["uploaded"] == []
    assert sorted(second["blobs"]["skipped"]) == sorted(first["blobs"]["uploaded"])
    assert second["bytes_sent"] == 0 and second["changed"] is False
    assert os.listdir(os.path.join(two, "tmp")) == []      # the spool file is gone
