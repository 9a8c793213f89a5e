"""image_build on real stores: RUN in namespaces, COPY/ADD, multi-stage, the cache."""
from __future__ import annotations

import gzip
import io
import os
import tarfile

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.image_build import image_build
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._ops.image_export import image_export
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._sandbox import StepFailed
from tests.support.fixtures import busybox_store


@pytest.fixture(params=["overlay2", "vfs"])
def root(request, store_root, busybox_tar):
    return busybox_store(store_root, busybox_tar, request.param)


def build(root, **kw):
    return image_build(dict({"data_root": root}, **kw))


def files_of(root, image, tmp_path):
    """The image's root filesystem as a container sees it: {path: content or None}."""
    c = container_layer({"data_root": root, "name": "probe", "image": image, "state": "mounted"})
    try:
        out = {}
        for base, dirs, files in os.walk(c["mount_point"]):
            for name in files + dirs:
                path = os.path.join(base, name)
                rel = os.path.relpath(path, c["mount_point"])
                out[rel] = open(path, "rb").read() if os.path.isfile(path) and \
                    not os.path.islink(path) else None
        return out
    finally:
        container_layer({"data_root": root, "name": "probe", "state": "absent"})


def last_layer_names(root, image, tmp_path):
    dest = str(tmp_path / "x.tar")
    out = image_export({"data_root": root, "image": image, "dest": dest})
    with tarfile.open(dest) as tar:
        blob = tar.extractfile("blobs/sha256/" + out["layers"][-1][7:]).read()
    with tarfile.open(fileobj=io.BytesIO(blob)) as layer:
        return layer.getnames()


def test_run_creates_modifies_deletes_and_whiteouts_appear(root, tmp_path):
    spec = ("FROM busybox:test\n"
            "RUN echo made > /made.txt && echo more >> /etc/passwd && rm /bin/head\n")
    out = build(root, spec=spec, tag=["t:1"])
    assert out["changed"] and len(out["layers"]) == 2
    names = last_layer_names(root, "t:1", tmp_path)
    assert "made.txt" in names and "etc/passwd" in names and "bin/.wh.head" in names
    view = files_of(root, "t:1", tmp_path)
    assert view["made.txt"] == b"made\n" and view["etc/passwd"].endswith(b"more\n")
    assert "bin/head" not in view
    assert "proc" in view and "dev" in view  # from the image, not added by the step


def test_user_workdir_env_are_seen_by_run(root, tmp_path):
    spec = ("FROM busybox:test\nENV GREETING=hello WHO=world\nWORKDIR /srv/app\n"
            "USER nobody\nRUN echo \"$GREETING $WHO $(id -u):$(id -g) $(pwd)\" > /tmp/out\n")
    out = build(root, spec=spec, tag=["t:2"])
    view = files_of(root, "t:2", tmp_path)
    assert view["tmp/out"] == b"hello world 65534:65534 /srv/app\n"
    assert out["history"][-1]["created_by"].startswith("/bin/sh -c echo")
    # WORKDIR /srv/app makes the missing directory as a layer, as BuildKit does
    assert [h["empty_layer"] for h in out["history"]][1:] == [True, False, True, False]


def test_run_is_isolated(root, tmp_path):
    spec = ("FROM busybox:test\n"
            "RUN echo $$ > /pid && ls /proc | grep -c '^[0-9]' > /procs && "
            "ls /dev > /devs && (cat /proc/net/dev > /net || true)\n")
    build(root, spec=spec, tag=["iso:1"], network="none")
    view = files_of(root, "iso:1", tmp_path)
    assert view["pid"] == b"1\n"
    assert int(view["procs"]) <= 3          # only the step's own processes
    assert b"null" in view["devs"] and b"sda" not in view["devs"]
    assert view["net"].count(b":") <= 1      # lo only: no network


def test_multi_stage_copy_from_and_target(root, tmp_path):
    spec = ("FROM busybox:test AS builder\nRUN mkdir -p /out && echo artefact > /out/bin\n"
            "FROM busybox:test AS other\nRUN false\n"
            "FROM busybox:test\nCOPY --from=builder /out/bin /usr/local/bin/tool\n")
    out = build(root, spec=spec, tag=["ms:1"])   # stage "other" is not needed: never runs
    assert files_of(root, "ms:1", tmp_path)["usr/local/bin/tool"] == b"artefact\n"
    part = build(root, spec=spec, target="builder", tag=["ms:builder"])
    assert files_of(root, "ms:builder", tmp_path)["out/bin"] == b"artefact\n"
    assert part["image_id"] != out["image_id"]


def test_cache_hits_and_invalidates_from_the_first_reader(root, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("a")
    (ctx / "b.txt").write_text("b")
    (ctx / "ignored.log").write_text("secret")
    (ctx / ".dockerignore").write_text("*.log\n")
    (ctx / "Dockerfile").write_text("FROM busybox:test\nCOPY a.txt /a\nRUN echo run1 > /r1\n"
                                    "COPY b.txt /b\nRUN echo run2 > /r2\nCOPY . /all/\n")
    first = build(root, context=str(ctx), tag=["c:1"])
    assert first["changed"] and not any(h["cached"] for h in first["history"][1:])
    again = build(root, context=str(ctx), tag=["c:1"])
    assert not again["changed"] and again["image_id"] == first["image_id"]
    assert all(h["cached"] for h in again["history"])
    os.utime(ctx / "b.txt", (1, 1))   # times are not content: still cached
    assert not build(root, context=str(ctx), tag=["c:1"])["changed"]
    (ctx / "b.txt").write_text("B")
    third = build(root, context=str(ctx), tag=["c:1"])
    assert [h["cached"] for h in third["history"][1:]] == [True, True, False, False, False]
    view = files_of(root, "c:1", tmp_path)
    assert view["b"] == b"B" and "all/ignored.log" not in view and view["all/a.txt"] == b"a"
    nocache = build(root, context=str(ctx), tag=["c:1"], no_cache=True)
    assert nocache["changed"] and not any(h["cached"] for h in nocache["history"][1:])


def test_check_mode_reports_steps_and_builds_nothing(root):
    spec = "FROM busybox:test\nRUN echo x > /x\nCMD [\"/bin/sh\"]\n"
    before = store_info({"data_root": root})
    plan = image_build({"data_root": root, "spec": spec, "tag": ["cm:1"]}, check_mode=True)
    assert plan["changed"] and plan["image_id"] is None
    assert [h["cached"] for h in plan["history"]] == [False, False]
    assert store_info({"data_root": root})["images"] == before["images"]
    build(root, spec=spec, tag=["cm:1"])
    plan = image_build({"data_root": root, "spec": spec, "tag": ["cm:1"]}, check_mode=True)
    assert not plan["changed"] and plan["image_id"]


def test_failing_step_leaves_no_container_layer_or_tag(root):
    before = store_info({"data_root": root})
    with pytest.raises(StepFailed) as info:
        build(root, spec="FROM busybox:test\nRUN echo partial > /p && echo boom && exit 3\n",
              tag=["bad:1"])
    assert "line 2" in str(info.value) and "exit code 3" in str(info.value)
    assert "boom" in str(info.value)
    after = store_info({"data_root": root})
    assert after["containers"] == [] and after["layers"] == before["layers"]
    assert all("bad:1" not in i["tags"] for i in after["images"])
    assert os.listdir(os.path.join(root, "tmp")) == []
    assert os.listdir(os.path.join(root, "incomplete")) == []


def test_spec_errors_name_the_line_and_build_nothing(root):
    before = store_info({"data_root": root})
    with pytest.raises(InvalidInput) as info:
        build(root, spec="FROM busybox:test\nRUN echo ok\nCOPYY /a /b\n")
    assert "line 3" in str(info.value) and "COPYY" in str(info.value)
    with pytest.raises(InvalidInput, match="URL"):
        build(root, spec="FROM busybox:test\nCOPY https://example.invalid/x /x\n")
    with pytest.raises(NotFound, match="nope:1"):
        build(root, spec="FROM nope:1\nRUN true\n")
    assert store_info({"data_root": root})["images"] == before["images"]


def test_add_extracts_local_tars_and_copy_chown(root, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("pkg/lib.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"lib"))
    (ctx / "pkg.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    (ctx / "conf").write_text("c")
    (ctx / "Dockerfile").write_text("FROM busybox:test\nADD pkg.tar.gz /opt/\n"
                                    "COPY --chown=nobody:nogroup conf /etc/app.conf\n")
    build(root, context=str(ctx), tag=["add:1"])
    c = container_layer({"data_root": root, "name": "probe", "image": "add:1",
                         "state": "mounted"})
    try:
        m = c["mount_point"]
        assert open(os.path.join(m, "opt/pkg/lib.txt")).read() == "lib"
        st = os.stat(os.path.join(m, "etc/app.conf"))
        assert (st.st_uid, st.st_gid) == (65534, 65534)
        assert os.stat(os.path.join(m, "etc")).st_uid == 0
    finally:
        container_layer({"data_root": root, "name": "probe", "state": "absent"})


def test_seed_walkthrough_images_share_every_layer(root, tmp_path):
    ctx = tmp_path / "cow-test"
    ctx.mkdir()
    (ctx / "hello.sh").write_text('#!/bin/sh\necho "Hello world"\n')
    os.chmod(ctx / "hello.sh", 0o755)
    (ctx / "Dockerfile.base").write_text("FROM busybox:test\nCOPY . /app\n")
    (ctx / "Dockerfile").write_text("FROM acme/my-base-image:1.0\nCMD /app/hello.sh\n")
    base = build(root, context=str(ctx), dockerfile="Dockerfile.base",
                 tag=["acme/my-base-image:1.0"])
    final = build(root, context=str(ctx), tag=["acme/my-final-image:1.0"])
    assert final["layers"] == base["layers"]
    assert final["history"][-1]["empty_layer"] and final["history"][-1]["size"] == 0
    assert "CMD" in final["history"][-1]["created_by"]
    info = store_info({"data_root": root})
    by_tag = {i["tags"][0]: i for i in info["images"] if i["tags"]}
    assert by_tag["acme/my-final-image:1.0"]["unique_size"] == 0


def test_heredocs_for_run_and_copy(root, tmp_path):
    spec = ("FROM busybox:test\n"
            "RUN <<EOF\n"
            "echo one > /one\n"
            "echo two > /two\n"
            "EOF\n"
            "COPY <<CONF /etc/app.conf\n"
            "key=value\n"
            "CONF\n"
            "RUN <<SCRIPT\n"
            "#!/bin/sh\n"
            "echo \"from a script: $0\" > /three\n"
            "SCRIPT\n")
    build(root, spec=spec, tag=["hd:1"])
    view = files_of(root, "hd:1", tmp_path)
    assert view["one"] == b"one\n" and view["two"] == b"two\n"
    assert view["etc/app.conf"] == b"key=value\n"
    assert view["three"].startswith(b"from a script")
    assert "dev/pipes" not in view


def test_copy_never_reads_outside_the_context_through_symlinks(root, tmp_path):
    """Found by review: a context symlink to /etc let COPY read the host's files."""
    secret = tmp_path / "host-secret"
    secret.write_text("host only")
    ctx = tmp_path / "ctx"
    (ctx / "real").mkdir(parents=True)
    (ctx / "real" / "inside").write_text("in context")
    os.symlink(str(tmp_path), ctx / "out")           # absolute: leaves the context
    os.symlink("../..", ctx / "up")                   # relative: climbs out
    os.symlink("real", ctx / "data")                  # stays inside: fine
    for src in ("out/host-secret", "up/host-secret", "out/*", "up/*secret"):
        with pytest.raises(NotFound):
            build(root, context=str(ctx), spec="FROM busybox:test\nCOPY %s /leak/\n" % src)
    build(root, context=str(ctx), tag=["ok:1"],
          spec="FROM busybox:test\nCOPY data/inside /in\nCOPY . /all/\n")
    view = files_of(root, "ok:1", tmp_path)
    assert view["in"] == b"in context"
    assert all(b"host only" not in (content or b"") for content in view.values())


def test_symlink_loops_in_the_context_or_the_image_are_refused(root, tmp_path):
    """Both resolvers (the build context's and the image view's) share one walk: a
    loop is a clear error, not a hang or a traceback."""
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "f").write_text("f")
    os.symlink("b", ctx / "a")
    os.symlink("a", ctx / "b")
    with pytest.raises(InvalidInput, match="a/x in the build context: .* symlink loop"):
        build(root, context=str(ctx), spec="FROM busybox:test\nCOPY a/x /x\n")
    with pytest.raises(InvalidInput, match="too many symlinks resolving /l1/x in the image"):
        build(root, context=str(ctx), spec="FROM busybox:test\n"
              "RUN ln -s l2 /l1 && ln -s l1 /l2\nCOPY f /l1/x\n")
