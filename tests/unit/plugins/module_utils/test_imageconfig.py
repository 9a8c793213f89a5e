"""Image configs (``_imageconfig.py``): parsing, a child's derived config, platforms."""
from __future__ import annotations

import hashlib
import json
import platform

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput, InvalidReference, NotFound)
from ansible_collections.strata.layers.plugins.module_utils import _imageconfig as imageconfig
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    ARM_VARIANTS, GOARCH, Platform, compatible, derive_config, host_platform, json_object,
    parse_config, parse_platform, pick_platform, platform_config)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
DIGEST = "sha256:" + "ab" * 32


def _config(**extra):
    data = {"architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
            "config": {"Env": ["A=1"], "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": [D1]},
            "history": [{"created_by": "ADD rootfs"}]}
    data.update(extra)
    return data


def test_the_id_is_the_digest_of_the_exact_bytes():
    raw = b'{ "rootfs": {"type": "layers", "diff_ids": []} }\n'
    config = parse_config(raw, "here")
    assert config.raw == raw
    assert config.id == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert config.diff_ids == [] and config.created == "" and config.history == []


def test_parse_config_keeps_diff_ids_created_and_history():
    config = parse_config(json.dumps(_config()).encode(), "here")
    assert config.diff_ids == [D1]
    assert config.created == "2024-01-01T00:00:00Z"
    assert config.history == [{"created_by": "ADD rootfs"}]


@pytest.mark.parametrize("rootfs", [None, {"type": "other", "diff_ids": []},
                                    {"type": "layers", "diff_ids": "x"}, "layers"])
def test_a_config_without_a_layers_rootfs_is_corrupt_naming_where(rootfs):
    raw = json.dumps(_config(rootfs=rootfs)).encode()
    with pytest.raises(Corrupt, match="image config in/archive has no rootfs"):
        parse_config(raw, "in/archive")


def test_a_diff_id_that_is_not_a_digest_is_refused_before_any_path_is_built():
    raw = json.dumps(_config(rootfs={"type": "layers", "diff_ids": ["../../etc"]})).encode()
    with pytest.raises(InvalidReference, match="diff_id in image config here"):
        parse_config(raw, "here")


@pytest.mark.parametrize("raw", [b"[]", b"not json", b"\xff"])
def test_json_object_is_corrupt_naming_what_for_anything_but_an_object(raw):
    with pytest.raises(Corrupt, match="manifest m"):
        json_object(raw, "manifest m")


def test_host_platform_is_linux_and_the_go_architecture():
    machine = platform.machine()
    assert host_platform() == Platform("linux", GOARCH.get(machine, machine),
                                       ARM_VARIANTS.get(machine))


def test_a_config_derived_from_nothing_has_the_host_platform_and_one_layer():
    data = json.loads(derive_config(None, D1, "2025-01-01T00:00:00Z", "import"))
    host = host_platform()
    assert (data["os"], data["architecture"], data.get("variant")) == (
        host.os, host.architecture, host.variant)
    assert data["rootfs"] == {"type": "layers", "diff_ids": [D1]}
    assert data["history"] == [{"created": "2025-01-01T00:00:00Z", "created_by": "import"}]
    assert data["created"] == "2025-01-01T00:00:00Z"


def test_a_derived_config_adds_a_layer_and_drops_the_legacy_fields():
    base = parse_config(json.dumps(_config(id="x", parent="y", container="z",
                                           container_config={})).encode(), "base")
    raw = derive_config(base, D2, "2025-01-01T00:00:00Z", "RUN x", comment="why",
                        changes={"Cmd": ["app"], "WorkingDir": "/srv"})
    data = json.loads(raw)
    assert data["rootfs"]["diff_ids"] == [D1, D2]
    assert data["history"][-1] == {"created": "2025-01-01T00:00:00Z", "created_by": "RUN x",
                                   "comment": "why"}
    assert data["config"] == {"Env": ["A=1"], "Cmd": ["app"], "WorkingDir": "/srv"}
    assert not {"id", "parent", "container", "container_config"} & set(data)
    assert (data["os"], data["architecture"]) == ("linux", "amd64")
    assert json.loads(base.raw)["rootfs"]["diff_ids"] == [D1]
    assert parse_config(raw, "child").diff_ids == [D1, D2]


def test_an_empty_layer_step_adds_history_but_no_diff_id():
    base = parse_config(json.dumps(_config()).encode(), "base")
    data = json.loads(derive_config(base, None, "2025-01-01T00:00:00Z", "ENV B=2"))
    assert data["rootfs"]["diff_ids"] == [D1]
    assert data["history"][-1]["empty_layer"] is True


# ---------------------------------------------------------------------- platforms
@pytest.mark.parametrize("value, expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm64", Platform("linux", "arm64")),
    ("linux/aarch64", Platform("linux", "arm64")),
    ("linux/arm/v7", Platform("linux", "arm", "v7")),
    # containerd's normalization (what docker pull --platform compares)
    ("linux/arm", Platform("linux", "arm", "v7")),
    ("linux/armhf", Platform("linux", "arm", "v7")),
    ("linux/armel", Platform("linux", "arm", "v6")),
    ("linux/arm/7", Platform("linux", "arm", "v7")),
    ("linux/arm64/v8", Platform("linux", "arm64")),
    ("linux/amd64/v1", Platform("linux", "amd64")),
    ("linux/x86_64/v3", Platform("linux", "amd64", "v3")),
    ("Linux/AMD64", Platform("linux", "amd64")),
    ("linux/i386", Platform("linux", "386")),
    ("linux/armhf/v6", Platform("linux", "arm", "v7")),   # the alias says the variant
    ("linux/arm64/v8.0", Platform("linux", "arm64")),
    ("linux/arm64/9.0", Platform("linux", "arm64", "v9")),
])
def test_platforms(value, expected):
    assert parse_platform(value) == expected


@pytest.mark.parametrize("machine, expected", [
    ("x86_64", Platform("linux", "amd64")), ("aarch64", Platform("linux", "arm64")),
    ("armv7l", Platform("linux", "arm", "v7")), ("armv8l", Platform("linux", "arm", "v8")),
    ("armv5tel", Platform("linux", "arm", "v5")), ("riscv64", Platform("linux", "riscv64")),
])
def test_the_host_platform_from_the_machine_name(monkeypatch, machine, expected):
    monkeypatch.setattr(imageconfig.platform, "machine", lambda: machine)
    assert host_platform() == expected


@pytest.mark.parametrize("wanted, expected", [
    ("linux/arm/v7", ["linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("linux/arm/v5", ["linux/arm/v5"]),
    ("linux/arm64", ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6",
                     "linux/arm/v5"]),
    ("linux/amd64/v3", ["linux/amd64/v3", "linux/amd64/v2", "linux/amd64", "linux/386"]),
    ("linux/amd64", ["linux/amd64", "linux/386"]),
    ("linux/s390x", ["linux/s390x"]),
    ("linux/arm64/v8.2", ["linux/arm64/v8.2", "linux/arm64/v8.1", "linux/arm64",
                          "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
    ("linux/arm64/v9.1", ["linux/arm64/v9.1", "linux/arm64/v9"] +
     ["linux/arm64/v8.%d" % n for n in range(6, 0, -1)] +
     ["linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]),
])
def test_what_a_platform_runs_best_first(wanted, expected):
    assert [str(p) for p in compatible(parse_platform(wanted))] == expected


def test_bad_platform():
    with pytest.raises(InvalidInput):
        parse_platform("amd64")


def _entry(arch, variant=None, os_name="linux"):
    platform = {"os": os_name, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": DIGEST,
            "size": 1, "platform": platform, "name": "%s/%s" % (arch, variant)}


def test_pick_platform():
    index = [_entry("amd64"), _entry("arm64", "v8"), _entry("arm", "v6"), _entry("arm", "v7"),
             _entry("unknown", os_name="unknown")]
    assert pick_platform(index, Platform("linux", "amd64"), "x")["name"] == "amd64/None"
    assert pick_platform(index, Platform("linux", "arm64"), "x")["name"] == "arm64/v8"
    assert pick_platform(index, Platform("linux", "arm", "v7"), "x")["name"] == "arm/v7"
    assert pick_platform(index[:3], Platform("linux", "arm", "v7"), "x")["name"] == "arm/v6"
    # as docker pull: an index's bare "arm" is arm/v7, "linux/arm" asked for prefers v7
    # whatever the index's order, an arm64 host takes 32-bit arm, amd64/v2 takes amd64
    assert pick_platform([_entry("arm")], Platform("linux", "arm", "v7"), "x")["name"] == \
        "arm/None"
    arms = [_entry("arm", "v6"), _entry("arm", "v8"), _entry("arm", "v7")]
    assert pick_platform(arms, parse_platform("linux/arm"), "x")["name"] == "arm/v7"
    assert pick_platform(arms, Platform("linux", "arm64"), "x")["name"] == "arm/v8"
    assert pick_platform([_entry("amd64")], parse_platform("linux/amd64/v2"), "x")["name"] == \
        "amd64/None"
    with pytest.raises(NotFound):  # a higher level than the host's is not taken
        pick_platform([_entry("amd64", "v3")], Platform("linux", "amd64"), "x")
    assert pick_platform([_entry("386"), _entry("s390x")], Platform("linux", "amd64"),
                         "x")["name"] == "386/None"
    assert pick_platform([_entry("arm64", "v8.0")], Platform("linux", "arm64"),
                         "x")["name"] == "arm64/v8.0"
    with pytest.raises(NotFound) as info:
        pick_platform(index, Platform("linux", "s390x"), "reg/app:1")
    assert "it offers: linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64" in str(info.value)


def test_a_descriptor_without_a_platform_comes_after_every_match():
    """As dockerd's pull: taken when nothing names a platform this host runs, in an
    index of any size, and never before one that does."""
    bare = dict(_entry("amd64"), name="bare")
    del bare["platform"]
    assert pick_platform([bare, _entry("amd64")], Platform("linux", "amd64"),
                         "x")["name"] == "amd64/None"
    assert pick_platform([_entry("s390x"), bare, dict(bare, name="second")],
                         Platform("linux", "amd64"), "x")["name"] == "bare"


def test_a_platform_config_names_the_variant_only_when_there_is_one():
    assert platform_config(Platform("linux", "amd64")) == {
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": []}, "history": []}
    assert platform_config(Platform("linux", "arm", "v7"))["variant"] == "v7"


def test_no_suitable_platform_names_the_index_and_the_callers_advice():
    with pytest.raises(NotFound) as info:
        pick_platform([_entry("arm64")], Platform("linux", "amd64"), "index i", "; do this")
    assert str(info.value) == ("index i offers no image for platform linux/amd64 "
                               "(it offers: linux/arm64); do this")
