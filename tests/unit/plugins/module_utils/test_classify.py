"""``format: auto`` on a plain tar: the lean names-only pass (``_may_be_archive``) may
only ever say "surely a layer" when the full scan agrees, whatever the tar's dialect
(ustar with a prefix, GNU long names, PAX path and size records) or damage."""
from __future__ import annotations

import io
import json
import tarfile

from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.strata.layers.plugins.module_utils import _archive
from tests.support.hostile import END, entry, header, pad

DOCKER_MANIFEST = json.dumps([{"Config": "c.json", "RepoTags": ["x:1"],
                               "Layers": ["l/layer.tar"]}]).encode()
NAMES = ["manifest.json", "./manifest.json", "manifest.json/", "a/manifest.json",
         "oci-layout", "./oci-layout", "index.json", "c.json", "l/layer.tar", "etc/passwd",
         "x" * 120 + "/manifest.json", "./" + "y" * 110, "manifest.jsonx"]
FORMATS = {"gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT, "ustar": tarfile.USTAR_FORMAT}


def full_answer(path: str) -> str:
    try:
        index = _archive.TarIndex(path)
    except Exception:   # pylint: disable=broad-except  # the full scan refuses: a layer
        return "layer"
    try:
        return _archive.archive_format(index) or "layer"
    finally:
        index.close()


def agree(path: str) -> None:
    quick = _archive._may_be_archive(path)   # pylint: disable=protected-access
    full = full_answer(path)
    assert quick or full == "layer", "quick pass says layer, full scan says %s" % full
    assert _archive.classify(path) == full


def build(members, fmt: str, tail: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=FORMATS[fmt]) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue() + tail


@settings(max_examples=150, deadline=None)
@given(names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=6, unique=True),
       fmt=st.sampled_from(sorted(FORMATS)), cut=st.integers(0, 3))
def test_lean_pass_never_calls_an_archive_a_layer(tmp_path_factory, names, fmt, cut):
    members = []
    for name in names:
        if name.rstrip("/").endswith("manifest.json"):
            members.append((name.rstrip("/"), DOCKER_MANIFEST))
        elif name.endswith("oci-layout"):
            members.append((name, b'{"imageLayoutVersion": "1.0.0"}'))
        elif name == "index.json":
            members.append((name, json.dumps({"schemaVersion": 2, "manifests": []}).encode()))
        else:
            members.append((name, b"data"))
    if fmt == "ustar" and any(len(n) > 100 and "/" not in n[-100:] for n, _data in members):
        return          # not representable in ustar
    try:
        data = build(members, fmt)
    except ValueError:
        return
    if cut:
        data = data[:len(data) - 512 * cut * 3]     # truncated: no end marker
    path = tmp_path_factory.mktemp("t") / "t.tar"
    path.write_bytes(data)
    agree(str(path))


def test_archives_are_never_quick_layers(tmp_path):
    """Every way of naming the top-level manifest.json the full parser understands."""
    body = DOCKER_MANIFEST
    variants = {
        "plain": entry("manifest.json", body),
        "dot": entry("./manifest.json", body),
        # ustar prefix "." and name manifest.json: "./manifest.json"
        "prefix-dot": header("manifest.json", size=len(body), raw={"prefix": b"."}) + pad(body),
        # PAX path record naming it, the ustar name something else
        "pax-path": header("PaxHeader", typeflag=b"x", size=len(b"22 path=manifest.json\n"))
        + pad(b"22 path=manifest.json\n") + header("junk", size=len(body)) + pad(body),
        # GNU long name naming it
        "gnu-long": header("././@LongLink", typeflag=b"L", size=14, magic=b"ustar  \0")
        + pad(b"manifest.json\0") + header("junk", size=len(body), magic=b"ustar  \0")
        + pad(body),
    }
    for label, first in variants.items():
        layer = entry("l/layer.tar", b"") + entry("c.json", b"{}")
        path = tmp_path / (label + ".tar")
        path.write_bytes(layer + first + END)
        assert _archive._may_be_archive(str(path)), label  # pylint: disable=protected-access
        agree(str(path))


def test_a_layer_is_decided_by_the_lean_pass(tmp_path):
    path = tmp_path / "layer.tar"
    path.write_bytes(build([("etc/passwd", b"root"), ("a/manifest.json", b"{}"),
                            ("z" * 150, b"long")], "pax"))
    assert not _archive._may_be_archive(str(path))  # pylint: disable=protected-access
    assert _archive.classify(str(path)) == "layer"


def test_a_pax_record_cannot_pose_as_a_gnu_long_name(tmp_path):
    """A PAX key the full parser ignores must not rename the member for the lean pass
    (review: a "\\0longname" record hid an archive's manifest.json)."""
    record = b"17 \0longname=foo\n"
    path = tmp_path / "archive.tar"
    pax = header("PaxHeader", typeflag=b"x", size=len(record)) + pad(record)
    path.write_bytes(entry("l/layer.tar", b"") + pax + entry("manifest.json", DOCKER_MANIFEST)
                     + END)
    agree(str(path))
    assert _archive.classify(str(path)) == "docker-archive"


def test_a_size_with_non_octal_digits_is_left_to_the_full_scan(tmp_path):
    """"00000000018" is not octal: the lean pass defers (it used to raise ValueError)."""
    path = tmp_path / "bad.tar"
    path.write_bytes(header("a", size=0, raw={"size": b"00000000018\0"}) + END)
    agree(str(path))
