"""A commit's change stream reads each changed file from a reflink clone (``Shadow``)
that the new layer then takes instead of writing the data again.  The layer must be the
very one the plain stream path makes: same diff_id, same files, types, modes, owners,
xattrs, times and whiteouts, whatever the container holds (sockets, names that look like
whiteouts, overlay's marker files and attributes, hardlinks, changes a walk-and-compare
cannot see), and it re-emits its tar byte for byte.  Real loop filesystems: xfs with
reflink and btrfs (clones), ext4 (no clones: the plain path)."""
from __future__ import annotations

import os
import random
import socket
import stat
import struct
import subprocess

import pytest

from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check
from ansible_collections.strata.layers.plugins.module_utils._ops.container_commit import container_commit
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer
from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import layer_import
from ansible_collections.strata.layers.plugins.module_utils._store import Store
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import storage_driver
from tests.support.tars import LayerTar, write

BIG = 24 << 20
MTIME = 1_700_000_000_123_456_789
# system.posix_acl_default: user::rwx, user:1000:rwx, group::r-x, mask::rwx, other::r-x
DEFAULT_ACL = struct.pack("<I" + "HHI" * 5, 2, 0x01, 7, 0xFFFFFFFF, 0x02, 7, 1000,
                          0x04, 5, 0xFFFFFFFF, 0x10, 7, 0xFFFFFFFF, 0x20, 5, 0xFFFFFFFF)
CASES = [("xfs", "overlay2"), ("btrfs", "overlay2"), ("ext4", "overlay2"), ("btrfs", "btrfs"),
         ("btrfs", "vfs"), ("xfs", "vfs")]


def base_tar(tmp_path) -> str:
    tar = (LayerTar().dir("etc").file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
           .file("etc/hosts", b"127.0.0.1 localhost\n").dir("gone").file("gone/a", b"a")
           .dir("opaque").file("opaque/old", b"old").dir("bin")
           .file("bin/tool", b"#!/bin/sh\n", mode=0o755).file("etc/motd", b"hello\n"))
    return write(tmp_path / "base.tar", tar.bytes())


def change(mount: str) -> None:
    """Every kind of change a container makes: copy-up, whiteout, opaque directory,
    new files, hardlink, symlink, setuid, xattr, a big file."""
    with open(os.path.join(mount, "etc/hosts"), "a") as handle:
        handle.write("10.0.0.1 db\n")
    os.remove(os.path.join(mount, "gone/a"))
    subprocess.run(["rm", "-rf", os.path.join(mount, "opaque")], check=True)
    os.makedirs(os.path.join(mount, "opaque"))
    with open(os.path.join(mount, "opaque/new"), "w") as handle:
        handle.write("new")
    os.makedirs(os.path.join(mount, "srv/data"))
    big = os.path.join(mount, "srv/data/big")
    with open(big, "wb") as handle:
        handle.write(random.Random(7).randbytes(BIG))
    os.link(big, os.path.join(mount, "srv/data/big.link"))
    os.symlink("../etc/passwd", os.path.join(mount, "srv/pw"))
    os.chmod(os.path.join(mount, "bin/tool"), 0o4755)
    os.chown(os.path.join(mount, "srv/data"), 1000, 1000)
    os.setxattr(os.path.join(mount, "srv/data/big"), "user.origin", b"test")
    # what a review found a clone of the container would carry but the stream does not
    server = socket.socket(socket.AF_UNIX)
    here = os.getcwd()
    os.chdir(os.path.join(mount, "srv"))    # a socket (a FIFO in the tar); the path is long
    try:
        server.bind("app.sock")
    finally:
        os.chdir(here)
        server.close()
    # (files with whiteout names are refused by a commit: test_whiteout_names)
    os.setxattr(os.path.join(mount, "opaque"), "user.overlay.opaque", b"y")
    os.link(os.path.join(mount, "etc/passwd"), os.path.join(mount, "etc/passwd2"))
    motd = os.path.join(mount, "etc/motd")             # same size, time put back
    before = os.stat(motd)
    with open(motd, "r+b") as handle:
        handle.write(b"HELLO\n")
    os.setxattr(motd, "user.tag", b"unseen by a walk-and-compare")
    os.utime(motd, ns=(before.st_atime_ns, before.st_mtime_ns))
    # a default ACL set after its file was made: applying the stream creates the file
    # under it, which gives it an access ACL (a linked clone would not have one)
    os.makedirs(os.path.join(mount, "srv/acl"))
    with open(os.path.join(mount, "srv/acl/f"), "w") as handle:
        handle.write("made before the ACL")
    os.setxattr(os.path.join(mount, "srv/acl"), "system.posix_acl_default", DEFAULT_ACL)
    # carried by the stream, skipped when applied (as tar skips security labels)
    os.setxattr(os.path.join(mount, "etc/hosts"), "security.strata-test", b"label")
    # the same times in every run, so two containers changed alike give one diff_id
    for rel in ("opaque/new", "opaque", "srv/data/big", "srv/pw", "srv/data", "srv/app.sock",
                "srv/acl/f", "srv/acl",
                "srv",
                "etc/hosts", "etc", "gone", "bin/tool", "bin"):
        os.utime(os.path.join(mount, rel), ns=(MTIME, MTIME), follow_symlinks=False)


def committed(root: str, tmp_path, name: str) -> dict:
    layer_import({"data_root": root, "src": base_tar(tmp_path), "tag": ["base:1"]})
    c = container_layer({"data_root": root, "name": name, "image": "base:1",
                         "state": "mounted"})
    change(c["mount_point"])
    container_layer({"data_root": root, "name": name, "state": "unmounted"})
    out = container_commit({"data_root": root, "name": name, "tag": ["base:%s" % name]})
    layer = [entry for entry in store_info({"data_root": root})["layers"]
             if entry["diff_id"] == out["layers"][-1]][0]
    files = Store(root).driver.layer_files(layer["chain_id"])
    return {"out": out, "layer": layer, "files": files}


def snapshot_tree(top: str) -> dict:
    """Everything a layer's files say but inode numbers and the times noted below."""
    seen = {}
    for here, dirs, names in os.walk(top):
        for name in dirs + names:
            path = os.path.join(here, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, top)
            xattrs = {}
            for key in os.listxattr(path, follow_symlinks=False):
                xattrs[key] = os.getxattr(path, key, follow_symlinks=False)
            data = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    data = handle.read()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(path)
            # a whiteout's time is when it was made
            timeless = stat.S_ISCHR(st.st_mode) and not st.st_rdev
            seen[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid,
                         st.st_gid, st.st_rdev, st.st_nlink,
                         None if timeless else st.st_mtime_ns, xattrs, data)
    return seen


@pytest.mark.parametrize("fs,driver", CASES, ids=["%s-on-%s" % (d, f) for f, d in CASES])
def test_a_cloned_commit_is_the_layer_the_stream_would_make(make_fs, tmp_path, monkeypatch,
                                                            fs, driver):
    mount = make_fs(fs, 600).mountpoint
    cloned_root = os.path.join(mount, "cloned")
    streamed_root = os.path.join(mount, "streamed")
    for root in (cloned_root, streamed_root):
        storage_driver({"data_root": root, "driver": driver})
    cloned = committed(cloned_root, tmp_path, "c1")
    with monkeypatch.context() as patch:
        patch.setattr(Shadow, "open", lambda self, directory: None)   # never clones
        streamed = committed(streamed_root, tmp_path, "c1")
    one, other = snapshot_tree(cloned["files"]), snapshot_tree(streamed["files"])
    differ = {rel: (one.get(rel), other.get(rel)) for rel in set(one) | set(other)
              if one.get(rel) != other.get(rel)}
    assert "security.strata-test" not in os.listxattr(os.path.join(cloned["files"],
                                                                   "etc/hosts"))
    assert not differ, "\n".join("%s: %r" % (rel, pair[0][:8] if pair[0] else None) + " / " +
                                 repr(pair[1][:8] if pair[1] else None)
                                 for rel, pair in sorted(differ.items()))
    assert cloned["layer"]["diff_id"] == streamed["layer"]["diff_id"]
    assert cloned["out"]["image_id"] == streamed["out"]["image_id"]
    assert cloned["layer"]["size"] == streamed["layer"]["size"] >= BIG
    for root in (cloned_root, streamed_root):
        assert store_check({"data_root": root})["ok"]


@pytest.mark.parametrize("fs,driver", [("xfs", "overlay2"), ("btrfs", "btrfs"),
                                       ("btrfs", "vfs")])
def test_a_commit_does_not_write_the_data_again(make_fs, tmp_path, fs, driver):
    """The big file the container wrote is shared by the new layer, not copied: the
    filesystem's used space grows by far less than its size."""
    mount, root, c = one_container(make_fs(fs, 600).mountpoint, tmp_path, driver)
    with open(os.path.join(c["mount_point"], "big"), "wb") as handle:
        handle.write(os.urandom(BIG))
    container_layer({"data_root": root, "name": "c", "state": "unmounted"})
    os.sync()
    used = used_bytes(mount, fs)
    container_commit({"data_root": root, "name": "c", "tag": ["base:big"]})
    os.sync()
    grown = used_bytes(mount, fs) - used
    assert grown < BIG // 4, "the commit wrote %d bytes for a %d-byte file" % (grown, BIG)


def one_container(mount: str, tmp_path, driver: str):
    """A store of ``driver`` on ``mount`` with the base image and container "c" mounted."""
    root = os.path.join(mount, "store")
    storage_driver({"data_root": root, "driver": driver})
    layer_import({"data_root": root, "src": base_tar(tmp_path), "tag": ["base:1"]})
    return mount, root, container_layer({"data_root": root, "name": "c", "image": "base:1",
                                         "state": "mounted"})


def used_bytes(mount: str, fs: str) -> int:
    if fs == "btrfs":
        subprocess.run(["btrfs", "filesystem", "sync", mount], check=True,
                       capture_output=True)
        out = subprocess.run(["btrfs", "filesystem", "usage", "-b", mount], check=True,
                             capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.strip().startswith("Used:"):
                return int(line.split()[1])
        raise AssertionError(out)
    st = os.statvfs(mount)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.mark.parametrize("fs,driver", [("xfs", "overlay2"), ("btrfs", "btrfs")])
def test_a_cloned_commit_refuses_what_the_applier_refuses(make_fs, tmp_path, fs, driver):
    """A container's trusted.* attribute would steer a driver: the commit is refused
    with the file named, as a streamed one is, and leaves no layer behind."""
    _mount, root, c = one_container(make_fs(fs, 300).mountpoint, tmp_path, driver)
    path = os.path.join(c["mount_point"], "steer")
    with open(path, "w") as handle:
        handle.write("x")
    os.setxattr(path, "trusted.strata-test", b"1")
    layers = len(store_info({"data_root": root})["layers"])
    with pytest.raises(InvalidInput, match="trusted.strata-test.*steer"):
        container_commit({"data_root": root, "name": "c", "tag": ["base:bad"]})
    assert len(store_info({"data_root": root})["layers"]) == layers
    assert store_check({"data_root": root})["ok"]
    container_layer({"data_root": root, "name": "c", "state": "absent"})
