"""USER resolution as libcontainer does it (the image's files given by a reader)."""
from __future__ import annotations

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound
from ansible_collections.strata.layers.plugins.module_utils._passwd import resolve

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
