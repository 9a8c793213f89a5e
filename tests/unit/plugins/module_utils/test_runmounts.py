"""RUN --mount parsing as BuildKit reads it."""
from __future__ import annotations

import pytest

from ansible_collections.strata.layers.plugins.module_utils._runmounts import (
    MountError, parse_mounts, secret_sources)


def one(text):
    return parse_mounts([text])[0]


def test_defaults_per_type():
    bind = one("target=/src")
    assert (bind.type, bind.source, bind.readonly) == ("bind", "/", True)
    assert one("type=bind,target=/src,rw").readonly is False
    cache = one("type=cache,target=/root/.cache")
    assert (cache.id, cache.sharing, cache.mode, cache.readonly) == (
        "/root/.cache", "shared", 0o755, False)
    secret = one("type=secret,id=tok")
    assert (secret.target, secret.mode) == ("/run/secrets/tok", 0o400)
    assert one("type=secret,id=tok,env=TOKEN").target == ""
    assert one("type=secret,target=/etc/key").id == "key"
    ssh = parse_mounts(["type=ssh", "type=ssh,id=other"])
    assert [m.target for m in ssh] == ["/run/buildkit/ssh_agent.0", "/run/buildkit/ssh_agent.1"]
    assert one("type=tmpfs,dst=/t,size=1048576").size == 1048576


def test_quoted_fields_and_aliases():
    mount = one('type=cache,"target=/a b",ID=x,Sharing=locked,uid=5,gid=6,mode=0700')
    assert (mount.target, mount.id, mount.sharing, mount.uid, mount.gid, mount.mode) == (
        "/a b", "x", "locked", 5, 6, 0o700)


@pytest.mark.parametrize("texts,message", [
    (["type=volume,target=/x"], "not a mount type"),
    (["type=tmpfs,target=/x,uid=1"], "does not take 'uid'"),
    (["type=cache,target=/x,from=stage"], "not supported"),
    (["type=bind"], "needs target"),
    (["type=cache,target=/x,target=/y"], "gives target twice"),
    (["type=cache,target=/x,mode=999"], "not a number"),
    (["type=cache,target=/x,ro,rw"], "both readonly and rw"),
    (["type=cache,target=/x,ro=maybe"], "expecting true or false"),
    (["type=cache,target=/x", "type=tmpfs,target=/x"], "two mounts on /x"),
    (["type=tmpfs,target=/"], "hide the root"),
    (["type=secret"], "needs id"),
])
def test_refused(texts, message):
    with pytest.raises(MountError, match=message):
        parse_mounts(texts)


def test_secret_sources():
    assert secret_sources({"a": {"src": "/p"}, "b": {"env": "X"}}) == {
        "a": ("src", "/p"), "b": ("env", "X")}
    for bad in ({"a": {}}, {"a": {"src": "/p", "env": "X"}}, {"a": "/p"}, {"a": {"file": "x"}}):
        with pytest.raises(MountError, match="must be"):
            secret_sources(bad)
