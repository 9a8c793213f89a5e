"""Content never changes meaning: a file whose name is a whiteout name (``.wh.NAME``),
written by a RUN step, copied by COPY or made inside a container, is refused with an
error naming it, never turned into the deletion of NAME: in a build, a commit and a
driver switch alike.  Each case leaves the store as it was and the image intact."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.image_build import image_build
from ansible_collections.strata.layers.plugins.module_utils._ops.container_commit import container_commit
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver


@pytest.fixture(params=["overlay2", "vfs"])
def root(request, store_root, busybox_tar):
    storage_driver({"data_root": store_root, "driver": request.param})
    layer_import({"data_root": store_root, "src": busybox_tar, "tag": ["bb:1"]})
    return store_root


def state(root: str) -> tuple:
    store = Store(root)
    return (sorted(store.layers.chains()), sorted(store.images.ids()), store.images.tags(),
            store.container_ids())


def test_a_run_step_writing_a_whiteout_name_is_refused(root):
    before = state(root)
    spec = "FROM bb:1\nRUN echo x > /etc/.wh.passwd\n"
    with pytest.raises(InvalidInput, match=r"/etc/\.wh\.passwd.*whiteout name.*deleting passwd"):
        image_build({"data_root": root, "spec": spec, "tag": ["t:1"]})
    assert state(root) == before


def test_a_copied_file_with_a_whiteout_name_is_refused(root, tmp_path):
    context = tmp_path / "ctx"
    (context / "etc").mkdir(parents=True)
    (context / "etc" / ".wh.passwd").write_text("x\n")
    (context / "ok.txt").write_text("ok\n")
    before = state(root)
    with pytest.raises(InvalidInput, match=r"/etc/\.wh\.passwd has a whiteout name"):
        image_build({"data_root": root, "context": str(context),
                     "spec": "FROM bb:1\nCOPY etc /etc\n", "tag": ["t:1"]})
    with pytest.raises(InvalidInput, match=r"/\.wh\.x/ok\.txt has a whiteout name \(\.wh\.x\)"):
        image_build({"data_root": root, "context": str(context),
                     "spec": "FROM bb:1\nCOPY ok.txt /.wh.x/\n", "tag": ["t:1"]})
    assert state(root) == before


def make_container(root: str, name: str) -> str:
    made = container_layer({"data_root": root, "name": "c1", "image": "bb:1",
                            "state": "mounted"})
    with open(os.path.join(made["mount_point"], "etc", name), "w") as handle:
        handle.write("not a deletion\n")
    container_layer({"data_root": root, "name": "c1", "state": "unmounted"})
    return root


@pytest.fixture
def container_with_whiteout_name(root):
    return make_container(root, ".wh.passwd")


@pytest.mark.parametrize("name", [".wh.passwd", ".wh..wh..opq", ".wh..opq"])
def test_a_commit_of_a_container_file_with_a_whiteout_name_is_refused(root, name):
    """Never turned into a deletion, an opaque mark, nor silently left out (kernel
    overlay: fuse-overlayfs's marker names are the container's own files there)."""
    make_container(root, name)
    before = state(root)
    with pytest.raises(InvalidInput, match=r"/etc/%s.*whiteout name" % name.replace(".", r"\.")):
        container_commit({"data_root": root, "name": "c1", "tag": ["c:1"]})
    assert state(root) == before


def test_a_driver_switch_refuses_a_container_file_with_a_whiteout_name(
        container_with_whiteout_name):
    root = container_with_whiteout_name
    store = Store(root)
    old = store.driver_name
    target = "vfs" if old == "overlay2" else "overlay2"
    with pytest.raises(InvalidInput, match=r"/etc/\.wh\.passwd.*whiteout name"):
        storage_driver({"data_root": root, "driver": target, "migrate": True})
    assert Store(root).driver_name == old
    made = container_layer({"data_root": root, "name": "c1", "image": "bb:1",
                            "state": "mounted"})
    try:
        assert os.path.isfile(os.path.join(made["mount_point"], "etc", ".wh.passwd"))
        assert os.path.isfile(os.path.join(made["mount_point"], "etc", "passwd"))
    finally:
        container_layer({"data_root": root, "name": "c1", "state": "unmounted"})
