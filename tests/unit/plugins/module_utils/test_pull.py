"""image_pull against a real registry on loopback (Debian's docker-registry, filled by skopeo).

What is counted is counted for real: a proxy on loopback in front of the registry records
every request, so "re-pull is one manifest request" and "only the new layers are fetched"
are observed, not assumed.  Every registry, proxy and temp dir is removed at teardown.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    DigestMismatch, InvalidInput, InvalidReference, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    AuthenticationRefused, TLSFailure, Unreachable)
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from tests.support import registry as reg_support
from tests.support.paths import COLLECTIONS, REPO, python_env
from tests.support.registry import (
    PASSWORD, USER, BlobServer, counting_proxy, image_layout, index_layout, layer_tar, registry)

pytestmark = pytest.mark.skipif(reg_support.missing_tools() is not None,
                                reason=str(reg_support.missing_tools()))


def _files(tag: str, count: int = 3, size: int = 40000) -> dict:
    # Random bytes: gzip cannot shrink them, so blob sizes are realistic for their content.
    return {"%s/f%d" % (tag, n): os.urandom(size) for n in range(count)}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Layouts built once per module; ``image_id`` and ``diff_ids`` of each (what the
    registry serves for them is in ``plain.seen``: skopeo compresses plain layers and
    re-serialises manifests on the way)."""
    work = str(tmp_path_factory.mktemp("layouts"))
    base = [(layer_tar(_files("b%d" % n)), "gzip") for n in range(3)]
    child = base + [(layer_tar(_files("c1")), "gzip")]
    big = [(layer_tar(_files("big%d" % n, 4, 250000)), "gzip") for n in range(4)]
    made = {
        "base": image_layout(os.path.join(work, "base"), "1", base),
        "child": image_layout(os.path.join(work, "child"), "1", child),
        "raw": image_layout(os.path.join(work, "raw"), "1", [
            (layer_tar(_files("r1")), "gzip"), (layer_tar(_files("r2")), "zstd"),
            (layer_tar(_files("r3")), "plain")]),
        "docker": image_layout(os.path.join(work, "docker"), "1",
                               [(layer_tar(_files("d%d" % n)), "gzip") for n in range(2)]),
        "multi": index_layout(os.path.join(work, "multi"), "1", [
            ("amd64", [(layer_tar(_files("amd")), "gzip")]),
            ("arm64", [(layer_tar(_files("arm")), "gzip")])]),
        "big": image_layout(os.path.join(work, "big"), "1", big),
        "tamper": image_layout(os.path.join(work, "tamper"), "1",
                               [(layer_tar(_files("t%d" % n)), "gzip") for n in range(3)]),
        "short": image_layout(os.path.join(work, "short"), "1",
                              [(layer_tar(_files("s%d" % n)), "gzip") for n in range(2)]),
    }
    made["work"] = work
    return made


@pytest.fixture(scope="module")
def plain(images):
    """A plain-HTTP registry holding every test image (pushed by skopeo; ``raw`` uploaded
    byte for byte, so its plain and zstd layers reach the registry as they are)."""
    with registry() as reg:
        for repo in ("base", "child", "big", "tamper", "short"):
            reg.push(os.path.join(images["work"], repo), "1", "test/%s:1" % repo)
        reg.push(os.path.join(images["work"], "multi"), "1", "test/multi:1", everything=True)
        reg.push(os.path.join(images["work"], "docker"), "1", "test/docker:1", fmt="v2s2")
        reg.upload(os.path.join(images["work"], "raw"), images["raw"], "test/raw:1")
        reg.seen = {repo: reg.manifest("test/" + repo, "1")
                    for repo in ("base", "child", "big", "tamper", "short", "multi", "docker",
                                 "raw")}
        yield reg


@pytest.fixture
def proxy(plain):
    with counting_proxy(plain.host) as counting:
        yield counting


def pull(host: str, repo: str, store_root: str, check_mode: bool = False, **options) -> dict:
    params = {"name": "%s/%s" % (host, repo), "insecure": True, "data_root": store_root,
              "lock_timeout": 30, "timeout": 20}
    params.update(options)
    return image_pull(params, check_mode=check_mode)


def blob_count(proxy) -> int:
    return len(proxy.blobs())


# ---------------------------------------------------------------------- pulls
def test_pull_then_repull_is_one_manifest_request(proxy, plain, images, store_root):
    expected, seen = images["base"], plain.seen["base"]
    result = pull(proxy.host, "test/base:1", store_root)
    assert result["changed"] is True
    assert result["image_id"] == expected["image_id"]
    assert result["image_ids"] == [expected["image_id"]]
    assert [l["diff_id"] for l in result["layers"]] == expected["diff_ids"]
    assert all(l["imported"] for l in result["layers"])
    assert all(l["size"] == 3 * 40000 for l in result["layers"])
    assert result["tags"] == ["%s/test/base:1" % proxy.host]
    assert result["digest"] == seen["digest"] == result["manifest_digest"]
    # the config and three layers, each exactly once
    assert sorted(proxy.blobs()) == sorted([seen["config"]] + seen["blobs"])
    store = Store(store_root)
    assert store.images.resolve("%s/test/base:1" % proxy.host) == expected["image_id"]
    for blob, diff_id in zip(seen["blobs"], expected["diff_ids"]):
        assert store.known_diff_id(blob) == diff_id  # remembered for the next pull of it

    proxy.reset()
    again = pull(proxy.host, "test/base:1", store_root)
    assert again["changed"] is False
    assert proxy.paths() == ["/v2/test/base/manifests/1"]
    assert again["image_id"] == result["image_id"]
    assert again["layers"] == [dict(l, imported=False) for l in result["layers"]]


def test_child_image_fetches_only_its_new_layer(proxy, plain, images, store_root):
    pull(proxy.host, "test/base:1", store_root)
    proxy.reset()
    result = pull(proxy.host, "test/child:1", store_root)
    seen = plain.seen["child"]
    assert result["changed"] is True
    assert [l["imported"] for l in result["layers"]] == [False, False, False, True]
    assert proxy.blobs() == [seen["config"], seen["blobs"][3]]
    assert result["image_id"] == images["child"]["image_id"]
    assert seen["blobs"][:3] == plain.seen["base"]["blobs"]  # really shared in the registry


def test_exact_blobs_plain_gzip_and_zstd(proxy, plain, images, store_root):
    result = pull(proxy.host, "test/raw:1", store_root)
    assert result["digest"] == images["raw"]["digest"]  # uploaded byte for byte
    assert result["image_id"] == images["raw"]["image_id"]
    assert [l["diff_id"] for l in result["layers"]] == images["raw"]["diff_ids"]
    assert images["raw"]["blobs"][2] == images["raw"]["diff_ids"][2]  # the plain one


def test_layers_imported_from_an_archive_are_not_downloaded(proxy, plain, images, store_root):
    from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
    layer_import({"src": os.path.join(images["work"], "base"), "format": "oci-layout",
                  "data_root": store_root})
    result = pull(proxy.host, "test/base:1", store_root)
    assert proxy.blobs() == [plain.seen["base"]["config"]]
    assert not any(l["imported"] for l in result["layers"])
    # only the tag is new
    assert result["changed"] is True
    assert result["tags"] == ["%s/test/base:1" % proxy.host]


def test_check_mode_asks_for_manifest_and_config_and_writes_nothing(
        proxy, plain, images, store_root):
    result = pull(proxy.host, "test/child:1", store_root, check_mode=True)
    assert result["changed"] is True
    assert result["image_id"] == images["child"]["image_id"]
    assert [l["imported"] for l in result["layers"]] == [True] * 4
    assert [l["size"] for l in result["layers"]] == [None] * 4
    assert proxy.manifests() == ["1"]
    assert proxy.blobs() == [plain.seen["child"]["config"]]
    assert not os.path.exists(store_root)

    pull(proxy.host, "test/base:1", store_root)
    planned = pull(proxy.host, "test/child:1", store_root, check_mode=True)
    assert [l["imported"] for l in planned["layers"]] == [False, False, False, True]
    assert planned["layers"][0]["size"] == 3 * 40000
    assert not Store(store_root).images.exists(images["child"]["image_id"])


def test_pull_by_digest_tags_nothing_and_repeats_without_a_request(
        proxy, plain, images, store_root):
    digest = plain.seen["base"]["digest"]
    result = pull(proxy.host, "test/base@" + digest, store_root, tag=["acme/base:pinned"])
    assert result["image_id"] == images["base"]["image_id"]
    assert result["tags"] == ["acme/base:pinned"]
    proxy.reset()
    again = pull(proxy.host, "test/base@" + digest, store_root, tag=["acme/base:pinned"])
    assert again["changed"] is False
    assert proxy.paths() == []


def test_multi_platform_index_picks_the_platform(proxy, plain, images, store_root):
    multi, seen = images["multi"], plain.seen["multi"]
    host = pull(proxy.host, "test/multi:1", store_root)
    assert host["image_id"] == multi["images"]["amd64"]["image_id"]
    assert host["platform"] == "linux/amd64"
    assert host["digest"] == seen["digest"]
    assert host["manifest_digest"] == seen["platforms"]["amd64"]["digest"]
    assert proxy.blobs() == [seen["platforms"]["amd64"]["config"]] + \
        seen["platforms"]["amd64"]["blobs"]

    arm = pull(proxy.host, "test/multi:1", store_root, platform="linux/arm64",
               tag=["acme/multi:arm"])
    assert arm["image_id"] == multi["images"]["arm64"]["image_id"]
    assert arm["changed"] is True
    # the name now points at the arm64 image; pulling for this host again moves it back
    # (the record of the amd64 pull is intact: one manifest request, nothing downloaded)
    proxy.reset()
    back = pull(proxy.host, "test/multi:1", store_root)
    assert back["changed"] is True and back["image_id"] == host["image_id"]
    assert proxy.paths() == ["/v2/test/multi/manifests/1"]
    assert pull(proxy.host, "test/multi:1", store_root)["changed"] is False
    assert Store(store_root).images.tags()["acme/multi:arm"] == arm["image_id"]

    with pytest.raises(NotFound) as info:
        pull(proxy.host, "test/multi:1", store_root, platform="linux/s390x")
    assert "linux/s390x" in str(info.value)
    assert "it offers: linux/amd64, linux/arm64" in str(info.value)


def test_single_platform_image_must_match_an_explicit_platform(proxy, store_root):
    with pytest.raises(NotFound) as info:
        pull(proxy.host, "test/base:1", store_root, platform="linux/arm64")
    assert "linux/amd64 only" in str(info.value)
    assert not os.path.exists(os.path.join(store_root, "images"))


def test_docker_schema2_manifest(proxy, plain, images, store_root):
    assert plain.seen["docker"]["media_type"] == \
        "application/vnd.docker.distribution.manifest.v2+json"
    result = pull(proxy.host, "test/docker:1", store_root)
    # skopeo rewrote the manifest as Docker v2 schema 2: same config, same layers
    assert result["image_id"] == images["docker"]["image_id"]
    assert [l["diff_id"] for l in result["layers"]] == images["docker"]["diff_ids"]
    assert result["digest"] == plain.seen["docker"]["digest"]


def test_max_size_refuses_a_layer_and_keeps_nothing_of_it(proxy, store_root):
    with pytest.raises(InvalidInput) as info:
        pull(proxy.host, "test/base:1", store_root, max_size=1000)
    assert "max_size" in str(info.value)
    store = Store(store_root)
    assert store.layers.chains() == []
    assert store.images.ids() == []


def test_a_pulled_store_passes_store_check(proxy, store_root):
    from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
    pull(proxy.host, "test/child:1", store_root)
    pull(proxy.host, "test/multi:1", store_root, platform="linux/arm64")
    result = store_check({"data_root": store_root})
    assert result["ok"] is True, result["findings"]


# ---------------------------------------------------------------------- interrupted pulls
def _pull_in_child(host: str, repo: str, store_root: str, env_extra: dict) -> subprocess.Popen:
    code = ("import json, sys\n"
            "from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull\n"
            "print(json.dumps(image_pull(json.loads(sys.argv[1]))))\n")
    params = {"name": "%s/%s" % (host, repo), "insecure": True, "data_root": store_root}
    env = dict(python_env(), **env_extra)
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(params)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_pull_resumes_without_fetching_completed_layers(
        proxy, plain, images, store_root, tmp_path):
    big, seen = images["big"], plain.seen["big"]
    child = _pull_in_child(proxy.host, "test/big:1", store_root,
                           {"STRATA_CRASH_AT": "import.done", "STRATA_CRASH_SKIP": "1"})
    try:
        child.communicate(timeout=120)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    store = Store(store_root)
    assert len(store.layers.chains()) == 2  # killed right after the second layer committed
    assert store.images.ids() == []
    assert store.images.tags() == {}

    proxy.reset()
    resumed = pull(proxy.host, "test/big:1", store_root)
    assert [l["imported"] for l in resumed["layers"]] == [False, False, True, True]
    assert sorted(proxy.blobs()) == sorted([seen["config"]] + seen["blobs"][2:])
    assert os.listdir(os.path.join(store_root, "tmp")) == []

    fresh = pull(proxy.host, "test/big:1", str(tmp_path / "fresh"))
    assert resumed["image_id"] == fresh["image_id"] == big["image_id"]
    assert [dict(l, imported=None) for l in resumed["layers"]] == \
        [dict(l, imported=None) for l in fresh["layers"]]


def test_pull_killed_mid_download_restarts_cleanly(plain, images, store_root):
    with counting_proxy(plain.host, delay=0.05) as slow:
        child = _pull_in_child(slow.host, "test/big:1", store_root, {})
        try:
            # config, the streamed first layer and a download ahead have started; each
            # blob takes ~1 s through this proxy, so the pull is mid-download here
            deadline = time.time() + 60
            while len(slow.blobs()) < 3 and time.time() < deadline:
                time.sleep(0.01)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        leftovers = os.listdir(os.path.join(store_root, "tmp"))
        assert leftovers, "expected partial downloads in tmp/ from the killed pull"
    result = pull(plain.host, "test/big:1", store_root)
    assert result["image_id"] == images["big"]["image_id"]
    assert os.listdir(os.path.join(store_root, "tmp")) == []


# ---------------------------------------------------------------------- verification
def test_tampered_blob_fails_verification_and_keeps_nothing_of_it(plain, images, store_root):
    tamper, seen = images["tamper"], plain.seen["tamper"]
    path = plain.blob_file(seen["blobs"][1])
    with open(path, "rb") as handle:
        data = bytearray(handle.read())
    data[len(data) // 2] ^= 0xFF  # same size: only the digest can tell
    with open(path, "wb") as handle:
        handle.write(bytes(data))
    with pytest.raises(DigestMismatch) as info:
        pull(plain.host, "test/tamper:1", store_root)
    assert "failed verification" in str(info.value)
    assert seen["blobs"][1] in str(info.value)
    store = Store(store_root)
    # layer 1 (verified) stays; nothing of layer 2; no image, no tag
    assert store.layers.chains() == [tamper["diff_ids"][0]]
    assert store.images.ids() == [] and store.images.tags() == {}
    assert os.listdir(os.path.join(store_root, "tmp")) == []


def test_truncated_blob_is_refused_by_its_size(plain, images, store_root):
    path = plain.blob_file(plain.seen["short"]["blobs"][0])
    with open(path, "rb") as handle:
        data = handle.read()
    with open(path, "wb") as handle:
        handle.write(data[:-10])
    with pytest.raises(DigestMismatch) as info:
        pull(plain.host, "test/short:1", store_root)
    assert "manifest says %d" % len(data) in str(info.value)
    assert Store(store_root).layers.chains() == []


def test_tampered_manifest_fails_verification(images, store_root):
    with registry() as reg:
        reg.upload(os.path.join(images["work"], "docker"), images["docker"], "test/docker:1")
        path = reg.blob_file(images["docker"]["digest"])
        with open(path, "rb") as handle:
            raw = handle.read()
        with open(path, "wb") as handle:
            handle.write(raw.replace(b'"schemaVersion": 2', b'"schemaVersion":2 '))
        with pytest.raises(DigestMismatch) as info:
            pull(reg.host, "test/docker:1", store_root)
    assert "manifest 1 of" in str(info.value)
    assert "failed verification" in str(info.value)


# ---------------------------------------------------------------------- errors in user terms
def test_unknown_tag_and_repository_are_named(proxy, store_root):
    with pytest.raises(NotFound) as info:
        pull(proxy.host, "test/base:nope", store_root)
    assert "tag nope is not in repository test/base" in str(info.value)
    with pytest.raises(NotFound) as info:
        pull(proxy.host, "test/absent:1", store_root)
    assert "repository test/absent is not known to registry %s" % proxy.host in str(info.value)


def test_unreachable_registry_names_its_address(store_root):
    port = reg_support.free_port()  # nothing listens there
    with pytest.raises(Unreachable) as info:
        pull("127.0.0.1:%d" % port, "test/base:1", store_root)
    assert "127.0.0.1:%d" % port in str(info.value)
    assert "connection refused" in str(info.value)


def test_name_without_registry_is_refused(store_root):
    with pytest.raises(InvalidReference) as info:
        image_pull({"name": "library/busybox:1.36", "data_root": store_root})
    assert "no default registry" in str(info.value)


def test_https_to_a_plain_http_registry(plain, store_root):
    with pytest.raises(TLSFailure) as info:
        pull(plain.host, "test/base:1", store_root, insecure=False)
    assert "insecure: true" in str(info.value)


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_credentials(images, auth, tmp_path):
    with registry(auth=auth) as reg:
        reg.push(os.path.join(images["work"], "base"), "1", "test/base:1")
        good = pull(reg.host, "test/base:1", str(tmp_path / "good"), username=USER,
                    password=PASSWORD)
        assert good["image_id"] == images["base"]["image_id"]
        with pytest.raises(AuthenticationRefused) as info:
            pull(reg.host, "test/base:1", str(tmp_path / "wrong"), username=USER,
                 password="not-" + PASSWORD)
        assert "refused the credentials of user 'puller'" in str(info.value)
        assert "check username and password" in str(info.value)
        with pytest.raises(AuthenticationRefused) as info:
            pull(reg.host, "test/base:1", str(tmp_path / "none"))
        assert "requires authentication" in str(info.value)
        if auth == "token":
            scopes = {r.get("scope") for r in reg.token.requests}
            assert "repository:test/base:pull" in scopes
    assert not os.path.exists(str(tmp_path / "wrong" / "images"))


def test_blob_redirect_to_another_host_drops_credentials(images, store_root):
    with registry(auth="htpasswd") as reg:
        reg.push(os.path.join(images["work"], "base"), "1", "test/base:1")
        storage = BlobServer(reg)
        try:
            with counting_proxy(reg.host, redirect_to=storage) as proxy:
                result = pull(proxy.host, "test/base:1", store_root, username=USER,
                              password=PASSWORD)
                assert result["image_id"] == images["base"]["image_id"]
                # the registry saw credentials on every blob request it redirected ...
                assert all(auth for _m, path, auth in proxy.requests[1:] if "/blobs/" in path)
        finally:
            storage.close()
        # ... and the storage host never did
        assert len(storage.requests) == 4
        assert not any(auth for _digest, auth in storage.requests)


def test_tls_registry_with_and_without_ca_path(images, store_root, tmp_path):
    with registry(tls=True) as reg:
        reg.push(os.path.join(images["work"], "base"), "1", "test/base:1")
        with pytest.raises(TLSFailure) as info:
            pull(reg.host, "test/base:1", store_root, insecure=False)
        assert "certificate could not be verified" in str(info.value)
        assert "ca_path" in str(info.value)
        result = pull(reg.host, "test/base:1", store_root, insecure=False, ca_path=reg.ca)
        assert result["image_id"] == images["base"]["image_id"]
        with pytest.raises(TLSFailure) as info:
            pull(reg.host, "test/base:1", str(tmp_path / "plain"), insecure=True)
        assert "speaks HTTPS" in str(info.value)


def test_errors_are_store_errors(store_root):
    with pytest.raises(InvalidInput) as info:
        image_pull({"name": "127.0.0.1:1/x:1", "data_root": store_root, "username": "u"})
    assert isinstance(info.value, StoreError)


# ---------------------------------------------------------------------- ansible-playbook
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/strata.layers.layers:
      data_root: "{{ root }}"
  tasks:
    - name: Check mode on an empty store
      strata.layers.image_pull: {name: "{{ name }}", insecure: true}
      check_mode: true
      register: planned
    - ansible.builtin.stat: {path: "{{ root }}"}
      register: st
    - ansible.builtin.assert:
        that:
          - planned is changed
          - planned.layers | map(attribute='imported') | list == [true, true, true]
          - not st.stat.exists
    - name: Pull
      strata.layers.image_pull: {name: "{{ name }}", insecure: true, tag: [acme/base:it]}
      register: first
    - name: Pull again
      strata.layers.image_pull: {name: "{{ name }}", insecure: true, tag: [acme/base:it]}
      register: second
    - name: Wrong tag
      strata.layers.image_pull: {name: "{{ name }}-missing", insecure: true}
      register: bad
      ignore_errors: true
    - ansible.builtin.assert:
        that:
          - first is changed
          - first.image_id == expected
          - "'acme/base:it' in first.tags"
          - second is not changed
          - second.image_id == expected
          - bad is failed
          - "'unknown tag' in bad.msg"
          - bad.error == 'NotFound'
"""


def test_through_ansible_playbook(proxy, images, tmp_path):
    playbook = tmp_path / "pull.yml"
    playbook.write_text(PLAYBOOK)
    extra = {"root": str(tmp_path / "store"), "name": "%s/test/base:1" % proxy.host,
             "expected": images["base"]["image_id"]}
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_NOCOLOR="1",
               ANSIBLE_FORCE_COLOR="0")
    bindir = os.path.dirname(sys.executable)
    proc = subprocess.run([os.path.join(bindir, "ansible-playbook"), str(playbook),
                           "-e", json.dumps(extra)], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    # the second pull was one manifest request
    assert proxy.paths().count("/v2/test/base/manifests/1") == 3
