"""image_build semantics taken from BuildKit, built for real on a busybox store: variable
trimming and replacement, COPY --parents/--exclude, symbolic --chmod, ONBUILD heredocs,
ARG inheritance and precedence, the default PATH, accepted forms (duplicate stage names,
EXPOSE 0 and host:port, an empty --chmod, COPY --from a later stage), RUN [] failing with
its line, and a trailing WORKDIR that leaves its directory."""
from __future__ import annotations

import json
import os
import stat

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.image_build import image_build
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound, Unsupported
from ansible_collections.strata.layers.plugins.module_utils._dockerfile import DEFAULT_PATH
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from tests.support.fixtures import busybox_store


@pytest.fixture(scope="module")
def root(tmp_path_factory, busybox_tar):
    store_root = str(tmp_path_factory.mktemp("semantics") / "store")
    busybox_store(store_root, busybox_tar)
    return store_root


@pytest.fixture
def context(tmp_path):
    tree = {"app/src/main.c": "int main;", "app/src/util.c": "u", "app/README.md": "r",
            "app/notes.txt": "n", "lib/x/y.c": "y", "run.sh": "#!/bin/sh\necho ok\n",
            "home.txt": "h", "homer.c": "c"}
    for rel, text in tree.items():
        path = tmp_path / "ctx" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        os.chmod(path, 0o644)
    return str(tmp_path / "ctx")


def build(root, spec, **kw):
    return image_build(dict({"data_root": root, "spec": spec}, **kw))


def config_of(root, image):
    store = Store(root)
    record = store.images.get(store.images.resolve(image))
    return json.loads(record.config.raw)


def tree_of(root, image):
    """{path: (mode, content or link target or None)} of the image's filesystem."""
    mounted = container_layer({"data_root": root, "name": "probe", "image": image,
                               "state": "mounted"})
    top = mounted["mount_point"]
    try:
        out = {}
        for base, dirs, files in os.walk(top):
            for name in files + dirs:
                path = os.path.join(base, name)
                st = os.lstat(path)
                if stat.S_ISREG(st.st_mode):
                    data = open(path, "rb").read().decode("utf-8", "replace")
                else:
                    data = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
                out[os.path.relpath(path, top)] = (stat.S_IMODE(st.st_mode), data)
        return out
    finally:
        container_layer({"data_root": root, "name": "probe", "state": "absent"})


def test_variable_trimming_and_replacement(root):
    spec = ("FROM busybox:test\nARG F=/usr/local/lib/pkg-1.2.tar.gz\n"
            "ENV BASE=${F##*/} DIR=${F%/*} STEM=${F%%.*} REST=${F#*/} SHORT=${F%.*} "
            "NEW=${F/lib/share} DOTS=${F//./_}\n"
            "RUN echo \"$BASE|$DIR|$STEM|$REST|$SHORT|$NEW|$DOTS\" > /out\n")
    build(root, spec, tag=["sem:vars"])
    assert tree_of(root, "sem:vars")["out"][1] == (
        "pkg-1.2.tar.gz|/usr/local/lib|/usr/local/lib/pkg-1|usr/local/lib/pkg-1.2.tar.gz|"
        "/usr/local/lib/pkg-1.2.tar|/usr/local/share/pkg-1.2.tar.gz|"
        "/usr/local/lib/pkg-1_2_tar_gz\n")


def test_copy_parents_exclude_and_symbolic_chmod(root, context):
    spec = ("FROM busybox:test\n"
            "COPY --parents app/src/*.c lib/./x/y.c /p/\n"
            "COPY --parents --exclude=app/src/util.c --exclude=**/*.md app /q/\n"
            "COPY --exclude=*.md --exclude=src app /e/\n"
            "COPY --exclude=*.txt hom* /h/\n"
            "ADD --exclude=**/*.c --exclude=README.md app /a/\n"
            "COPY --chmod=u+x,go-r run.sh /bin/run\n"
            "ARG NOMODE\nCOPY --chmod=$NOMODE run.sh /bin/plain\n")
    build(root, spec, context=context, tag=["sem:copy"])
    tree = tree_of(root, "sem:copy")
    assert tree["p/app/src/main.c"][1] == "int main;" and "p/app/src/util.c" in tree
    assert "p/x/y.c" in tree and "p/lib" not in tree and "p/app/README.md" not in tree
    assert set(k for k in tree if k.startswith("q/")) == {
        "q/app", "q/app/src", "q/app/src/main.c", "q/app/notes.txt"}
    assert set(k for k in tree if k.startswith("e/")) == {"e/notes.txt"}
    assert set(k for k in tree if k.startswith("h/")) == {"h/homer.c"}
    assert set(k for k in tree if k.startswith("a/")) == {"a/notes.txt", "a/src"}
    assert tree["bin/run"][0] == 0o700 and tree["bin/plain"][0] == 0o644


def test_onbuild_heredoc_is_stored_as_buildkit_stores_it(root):
    build(root, "FROM busybox:test\nONBUILD RUN <<EOF\necho hi\nEOF\n", tag=["sem:onbuild"])
    assert config_of(root, "sem:onbuild")["config"]["OnBuild"] == ["RUN <<EOF\necho hi\nEOF"]


def test_args_are_inherited_and_the_later_of_env_and_arg_wins(root):
    spec = ("FROM busybox:test AS base\nARG VERSION=1.0\nENV MODE=env\nARG MODE=arg\n"
            "FROM base AS child\nRUN echo \"$VERSION $MODE\" > /out\nENV V2=${VERSION}\n")
    build(root, spec, tag=["sem:args"])
    assert tree_of(root, "sem:args")["out"][1] == "1.0 arg\n"
    env = config_of(root, "sem:args")["config"]["Env"]
    assert "MODE=env" in env and "V2=1.0" in env


def test_scratch_keeps_the_default_path(root, context):
    build(root, "FROM scratch\nENV PATH=/opt/bin:$PATH\nCOPY run.sh /\n", context=context,
          tag=["sem:scratch"])
    assert config_of(root, "sem:scratch")["config"]["Env"] == ["PATH=/opt/bin:" + DEFAULT_PATH]


def test_forms_buildkit_accepts(root, context):
    spec = ("FROM busybox:test AS dup\nRUN echo first > /which\n"
            "FROM busybox:test AS dup\nRUN echo second > /which\n"
            "FROM busybox:test AS final\nCOPY --from=dup /which /which\n"
            "COPY --from=later /made /made\nEXPOSE 0 8080:80 127.0.0.1:9000:90/udp\n"
            "FROM busybox:test AS later\nRUN echo later > /made\n")
    build(root, spec, context=context, target="final", tag=["sem:accept"])
    tree = tree_of(root, "sem:accept")
    assert tree["which"][1] == "second\n" and tree["made"][1] == "later\n"
    ports = config_of(root, "sem:accept")["config"]["ExposedPorts"]
    assert set(ports) == {"0/tcp", "80/tcp", "90/udp"}


def test_run_empty_is_read_but_fails_when_built_naming_the_line(root):
    spec = "FROM busybox:test AS unused\nRUN []\nFROM busybox:test\nRUN true\n"
    build(root, spec)  # the stage with RUN [] is not needed: no error, as in BuildKit
    with pytest.raises(InvalidInput) as info:
        build(root, "FROM busybox:test\nRUN []\n")
    assert "line 2" in str(info.value) and info.value.details["line"] == 2


def test_trailing_workdir_creates_its_directory(root):
    out = build(root, "FROM busybox:test\nUSER nobody\nWORKDIR /srv/app/data\n",
                tag=["sem:workdir"])
    tree = tree_of(root, "sem:workdir")
    assert tree["srv/app/data"] == (0o755, None)
    assert not out["history"][-1]["empty_layer"]
    again = build(root, "FROM busybox:test\nWORKDIR /tmp\n", tag=["sem:workdir2"])
    assert again["history"][-1]["empty_layer"]   # the directory exists: config only


def test_a_failing_step_names_its_line(root):
    with pytest.raises(NotFound) as info:
        build(root, "FROM busybox:test\nLABEL a=b\nCOPY --from=busybox:test /nope /x\n")
    assert str(info.value).startswith("spec line 3 (COPY): ")
    assert info.value.details["line"] == 3


# ---------------------------------------------------------------------------------------
# Build inputs: the Dockerfile and .dockerignore are read scoped, bounded, never echoed
# ---------------------------------------------------------------------------------------

SECRET = "TOP-SECRET-LINE-42"


@pytest.fixture
def host_secret(tmp_path):
    path = tmp_path / "host-secret"
    path.write_text(SECRET + "\n")
    return str(path)


@pytest.mark.parametrize("target", ["host", "/dev/zero", "/etc/passwd"])
def test_a_symlinked_dockerfile_is_resolved_inside_the_context(root, tmp_path, host_secret,
                                                               target):
    ctx = tmp_path / "ctx-link"
    ctx.mkdir()
    os.symlink(host_secret if target == "host" else target, ctx / "Dockerfile")
    with pytest.raises(NotFound) as info:
        image_build({"data_root": root, "context": str(ctx)})
    assert SECRET not in str(info.value) and "root:" not in str(info.value)
    assert "no such file in the context" in str(info.value)


def test_a_symlinked_dockerfile_inside_the_context_is_followed(root, tmp_path):
    ctx = tmp_path / "ctx-inner"
    (ctx / "docker").mkdir(parents=True)
    (ctx / "docker" / "real").write_text("FROM busybox:test\nLABEL via=link\n")
    os.symlink("/docker/real", ctx / "Dockerfile")   # absolute: the context's /docker
    out = image_build({"data_root": root, "context": str(ctx), "tag": ["sem:link"]})
    assert config_of(root, "sem:link")["config"]["Labels"] == {"via": "link"} and out["changed"]


def test_special_and_huge_dockerfiles_are_refused(root, tmp_path):
    ctx = tmp_path / "ctx-special"
    ctx.mkdir()
    os.mkfifo(ctx / "Dockerfile")
    with pytest.raises(InvalidInput, match="not a regular file \\(a FIFO\\)"):
        image_build({"data_root": root, "context": str(ctx)})
    with pytest.raises(InvalidInput, match="not a regular file"):
        image_build({"data_root": root, "context": str(ctx), "dockerfile": "/dev/zero"})
    big = ctx / "Big"
    big.write_text("FROM busybox:test\n" + "# pad\n" * ((9 << 20) // 6))
    with pytest.raises(InvalidInput, match="larger than"):
        image_build({"data_root": root, "context": str(ctx), "dockerfile": "Big"})


def test_a_latin1_dockerfile_is_a_clear_error(root, tmp_path):
    ctx = tmp_path / "ctx-latin1"
    ctx.mkdir()
    (ctx / "Dockerfile").write_bytes("FROM busybox:test\nLABEL city=Göteborg\n".encode("latin-1"))
    with pytest.raises(InvalidInput) as info:
        image_build({"data_root": root, "context": str(ctx)})
    assert "not UTF-8" in str(info.value) and "line 2, column 13" in str(info.value)
    assert info.value.details["line"] == 2


def test_a_symlinked_dockerignore_never_reaches_a_message(root, tmp_path, host_secret):
    ctx = tmp_path / "ctx-ignore"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox:test\nCOPY . /x/\n")
    os.symlink(host_secret, ctx / ".dockerignore")
    image_build({"data_root": root, "context": str(ctx), "tag": ["sem:ignore"]})
    assert "x/Dockerfile" in tree_of(root, "sem:ignore")


# ---------------------------------------------------------------------------------------
# Cost linear in the steps
# ---------------------------------------------------------------------------------------

def test_config_only_steps_store_one_image_not_one_each(tmp_path):
    # 600 LABEL lines used to store 600 images, each with the whole history so far
    # (quadratic: 1,200 lines wrote 89 MiB); now one image at the stage's end
    root = str(tmp_path / "store")
    storage_driver({"data_root": root, "driver": "vfs"})
    spec = "FROM scratch\n" + "".join("LABEL l%d=value-%d\n" % (i, i) for i in range(600))
    first = build(root, spec)
    store = Store(root)
    assert len(store.images.ids()) == 1
    written = sum(os.path.getsize(os.path.join(base, name))
                  for base, _dirs, names in os.walk(root) for name in names)
    assert written < 600 * 600 * 4    # far below one history per step (~600 x 60 KiB)
    again = build(root, spec)
    assert not again["changed"] and again["image_id"] == first["image_id"]
    assert all(row["cached"] for row in again["history"])
    changed = build(root, spec.replace("value-599", "other"))
    assert changed["changed"] and changed["image_id"] != first["image_id"]


@pytest.mark.parametrize("spec,message", [
    ("FROM busybox:test AS one\nFROM busybox:test\nARG S=one\nCOPY --from=$S /x /x\n",
     "variables are not expanded in --from"),
    ("FROM --platform=$UNDEFINED busybox:test\nRUN true\n", "empty after substitution"),
])
def test_refused_as_buildkit_refuses(root, spec, message):
    with pytest.raises(InvalidInput, match=message):
        build(root, spec)


def test_a_stage_too_deep_is_refused_before_building_naming_the_line(root):
    # busybox has one layer; overlay2 stacks 125: the 125th RUN would make layer 126
    before = len(Store(root).images.ids())
    spec = "FROM busybox:test\n" + "RUN echo step\n" * 130
    with pytest.raises(Unsupported) as info:
        build(root, spec)
    assert str(info.value).startswith("spec line 126 (RUN): ") and "at most 125" in str(info.value)
    assert info.value.details["line"] == 126
    assert len(Store(root).images.ids()) == before    # nothing was built first
