"""USER resolution as runc/libcontainer do it: against a container root's own files (the
container runtime, ``resolve_user``) and against an image's files given by a reader (a
build's RUN steps, ``resolve``)."""
from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound
from ansible_collections.strata.layers.plugins.module_utils._passwd import resolve, resolve_user


# ------------------------------------------------------------ a RUN step (a reader)
FILES = {
    "/etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nbroken line\n"
                   b"app:x:1000:1000::/home/app:/bin/sh\nshort:x:7\nhuge:x:99999999999:0::/:/bin/sh\n",
    "/etc/group": b"root:x:0:\nwheel:x:10:root,app\napp:x:1000:\ndocker:x:999:app\n",
}


def read(path):
    return FILES.get(path)


@pytest.mark.parametrize("spec,uid,gid,groups,home", [
    ("", 0, 0, [0, 10], "/root"),
    ("root", 0, 0, [0, 10], "/root"),
    ("app", 1000, 1000, [1000, 10, 999], "/home/app"),
    ("1000", 1000, 1000, [1000, 10, 999], "/home/app"),
    ("app:wheel", 1000, 10, [10], "/home/app"),
    ("4242", 4242, 0, [0], "/"),
    ("4242:77", 4242, 77, [77], "/"),
])
def test_resolve(spec, uid, gid, groups, home):
    who = resolve(read, spec)
    assert (who.uid, who.gid, who.groups, who.home) == (uid, gid, groups, home)


def test_no_files_means_root_at_root():
    who = resolve(lambda path: None, "")
    assert (who.uid, who.gid, who.groups, who.home) == (0, 0, [0], "/root")


@pytest.mark.parametrize("spec,error,message", [
    ("nobody", NotFound, "not in the image's /etc/passwd"),
    ("app:nogroup", NotFound, "not in the image's /etc/group"),
    ("huge", InvalidInput, "/etc/passwd line 5 of the image: id 99999999999 is out of range"),
    ("4294967295", InvalidInput, "out of range"),
    ("1:4294967295", InvalidInput, "out of range"),
])
def test_errors_are_clear(spec, error, message):
    with pytest.raises(error, match=message):
        resolve(read, spec)


# ------------------------------------------------------------ a container root

@pytest.fixture
def root(tmp_path):
    etc = tmp_path / "rootfs" / "etc"
    etc.mkdir(parents=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n# comment\n"
                                "app:x:1000:1000:app:/home/app:/bin/sh\nbroken:x:zz\n")
    (etc / "group").write_text("root:x:0:\napp:x:1000:\nextra:x:2000:app,other\n"
                               "more:x:3000:other,app\nwheel:x:10:\n")
    return str(tmp_path / "rootfs")


def test_default_is_root_with_its_home(root):
    user = resolve_user(root, "")
    assert (user.uid, user.gid, user.home, user.additional_gids) == (0, 0, "/root", [])


def test_a_name_brings_its_gid_home_and_supplementary_groups(root):
    user = resolve_user(root, "app")
    assert (user.uid, user.gid, user.home) == (1000, 1000, "/home/app")
    assert user.additional_gids == [2000, 3000]


def test_a_known_uid_is_the_same_user(root):
    assert resolve_user(root, "1000").home == "/home/app"


def test_an_unknown_uid_needs_no_entry(root):
    user = resolve_user(root, "4242")
    assert (user.uid, user.gid, user.home, user.additional_gids) == (4242, 0, "/", [])


def test_an_explicit_group_replaces_the_supplementary_ones(root):
    user = resolve_user(root, "app:wheel")
    assert (user.uid, user.gid, user.additional_gids) == (1000, 10, [])
    assert resolve_user(root, "1000:77").gid == 77


def test_unknown_names_fail_naming_the_file(root):
    with pytest.raises(InvalidInput, match="no user named 'ghost' in the container's /etc/passwd"):
        resolve_user(root, "ghost")
    with pytest.raises(InvalidInput, match="no group named 'ghosts' in the container's /etc/group"):
        resolve_user(root, "app:ghosts")
    with pytest.raises(InvalidInput, match="out of range"):
        resolve_user(root, "99999999999")


def test_a_symlinked_etc_stays_inside_the_root(root, tmp_path):
    os.rename(os.path.join(root, "etc"), os.path.join(root, "real-etc"))
    os.symlink("/real-etc", os.path.join(root, "etc"))   # absolute: the root's, not the host's
    assert resolve_user(root, "app").uid == 1000


def test_no_passwd_file_is_root_and_numbers(tmp_path):
    empty = str(tmp_path / "empty")
    os.mkdir(empty)
    assert resolve_user(empty, None).home == "/"
    assert resolve_user(empty, "5:6").gid == 6


def test_a_symlink_out_of_the_root_is_not_followed(root, tmp_path):
    outside = tmp_path / "host-passwd"
    outside.write_text("root:x:0:0:root:/host-root:/bin/sh\n")
    os.unlink(os.path.join(root, "etc", "passwd"))
    os.symlink(str(outside), os.path.join(root, "etc", "passwd"))   # the root's own path
    assert resolve_user(root, "").home == "/"


def test_an_out_of_range_id_in_the_container_names_file_and_line(root):
    with open(os.path.join(root, "etc", "passwd"), "a") as handle:
        handle.write("big:x:1:4294967296::/:/bin/sh\n")
    with pytest.raises(InvalidInput, match="/etc/passwd line 5 of the container: id 4294967296"):
        resolve_user(root, "big")


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.parametrize("kind", ["chr", "fifo"])
def test_a_device_node_or_fifo_as_passwd_is_never_opened(root, kind):
    """An image's etc/passwd that is a device node (here /dev/zero's numbers: reading
    it would never end on its own; a host disk's would leak it) or a FIFO is refused
    before anything opens it on the host."""
    passwd = os.path.join(root, "etc", "passwd")
    os.unlink(passwd)
    if kind == "chr":
        os.mknod(passwd, 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    else:
        os.mkfifo(passwd)   # a blocking open would hang the module
    with pytest.raises(InvalidInput, match="/etc/passwd of the container is not a regular file"):
        resolve_user(root, "app")
    with pytest.raises(InvalidInput, match="not a regular file"):
        resolve_user(root, "0")


def test_a_huge_or_malformed_passwd_is_read_bounded(root):
    with open(os.path.join(root, "etc", "passwd"), "w") as handle:
        handle.write("junk:::\n::::::\n" + "x" * (5 << 20) + "\napp:x:1000:1000::/h:/bin/sh\n")
    assert resolve_user(root, "0").uid == 0      # the first 4 MiB only: app is beyond it
    with pytest.raises(InvalidInput, match="no user named 'app'"):
        resolve_user(root, "app")
