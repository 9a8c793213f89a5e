"""USER resolved against a root filesystem's own passwd and group files (as runc does)."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._passwd import resolve_user


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
