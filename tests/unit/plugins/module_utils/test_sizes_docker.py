"""Sizes as Docker counts them, checked against a real dockerd 20.10 (overlay2, its
default driver): a layer's, an image's and a container's size count a symlink as the
length of its target (moby's directory walk uses lstat), file data once per inode.

Docker's naive-diff drivers (vfs, btrfs) sum tar header sizes instead and so leave
symlinks out; we count one figure on every driver, the overlay2 one users see, so a
layer keeps its size through a driver migration."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from tests.support import dockerd as daemon

pytestmark = pytest.mark.skipif(daemon.available() is not None,
                                reason=str(daemon.available()))


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    """A private dockerd (overlay2): own data and exec roots, socket and pidfile, no
    networking; the client's command line against it, without BuildKit."""
    top = tmp_path_factory.mktemp("dockerd")
    try:
        with daemon.running(str(top / "data"), str(top)) as started:
            yield ["env", "DOCKER_BUILDKIT=0"] + started.cmd()
    finally:
        shutil.rmtree(top, ignore_errors=True)


def docker(cli, *args, **kw):
    return subprocess.run(list(cli) + list(args), check=True, capture_output=True, text=True,
                          **kw).stdout.strip()


def test_layer_image_and_container_sizes_equal_dockers(dockerd, tmp_path, busybox_tar):
    # Docker's figures: the image from the same tar, a container that adds a file and
    # two symlinks and deletes one (docker ps --size's SizeRw)
    image_id = docker(dockerd, "import", busybox_tar, "sizes:busybox")
    docker_image = int(docker(dockerd, "image", "inspect", "-f", "{{.Size}}", image_id))
    script = "echo hello > /made && ln -s /usr/share/doc /link && ln -s made /l2 && rm /bin/ls"
    docker(dockerd, "run", "--name", "sized", "--network", "none", "sizes:busybox",
           "sh", "-c", script)
    docker_rw = int(docker(dockerd, "inspect", "--size", "-f", "{{.SizeRw}}", "sized"))

    for driver in ("overlay2", "vfs"):
        root = str(tmp_path / driver)
        storage_driver({"data_root": root, "driver": driver})
        layer_import({"data_root": root, "src": busybox_tar, "tag": ["busybox:sizes"]})
        info = store_info({"data_root": root})
        assert [image["size"] for image in info["images"]] == [docker_image], driver
        assert [layer["size"] for layer in info["layers"]] == [docker_image], driver
        mounted = container_layer({"data_root": root, "name": "sized", "image": "busybox:sizes",
                                   "state": "mounted"})
        try:
            top = mounted["mount_point"]
            with open(os.path.join(top, "made"), "w") as handle:
                handle.write("hello\n")
            os.symlink("/usr/share/doc", os.path.join(top, "link"))
            os.symlink("made", os.path.join(top, "l2"))
            os.unlink(os.path.join(top, "bin/ls"))
        finally:
            container_layer({"data_root": root, "name": "sized", "state": "unmounted"})
        rows = {c["name"]: c for c in store_info({"data_root": root})["containers"]}
        assert rows["sized"]["size"] == docker_rw, driver
        assert rows["sized"]["virtual_size"] == docker_rw + docker_image, driver
        container_layer({"data_root": root, "name": "sized", "state": "absent"})
