"""The registry client's parsers: references, platforms, index entries, challenges.

(The protocol itself is tested against a real registry in test_pull.py.)
"""
from __future__ import annotations

import email.message

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidReference, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._registry import (
    Registry, _challenges, parse_reference)

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("name, registry, repository, tag, digest, stored", [
    ("127.0.0.1:5000/acme/app:1.0", "127.0.0.1:5000", "acme/app", "1.0", None,
     "127.0.0.1:5000/acme/app:1.0"),
    ("registry.example.com/app", "registry.example.com", "app", "latest", None,
     "registry.example.com/app:latest"),
    ("localhost/app:x", "localhost", "app", "x", None, "localhost/app:x"),
    ("docker.io/busybox:1.36", "docker.io", "library/busybox", "1.36", None, "busybox:1.36"),
    ("reg.io:443/a/b@" + DIGEST, "reg.io:443", "a/b", None, DIGEST, None),
])
def test_references(name, registry, repository, tag, digest, stored):
    ref = parse_reference(name)
    assert (ref.registry, ref.repository) == (registry, repository)
    assert (ref.tag, ref.digest) == (tag, digest)
    assert ref.tag_name() == stored
    assert ref.ref == (digest or tag)


@pytest.mark.parametrize("name, fragment", [
    ("busybox", "no default registry"),
    ("acme/app:1", "no default registry"),
    ("reg.io/App:1", "not valid"),
    ("reg.io/app@sha256:12", "not sha256"),
    ("", "empty"),
])
def test_bad_references(name, fragment):
    with pytest.raises(InvalidReference) as info:
        parse_reference(name)
    assert fragment in str(info.value)


def test_sha512_references_are_unsupported():
    with pytest.raises(Unsupported):
        parse_reference("reg.io/app@sha512:" + "a" * 128)


@given(st.text(max_size=80))
def test_reference_parsing_never_crashes(text):
    try:
        ref = parse_reference(text)
    except (InvalidReference, Unsupported):
        return
    assert str(ref).startswith(ref.registry + "/")


def test_challenges():
    headers = email.message.Message()
    headers["WWW-Authenticate"] = ('Bearer realm="https://auth.example/token",'
                                   'service="registry.example",scope="repository:a/b:pull"')
    headers["WWW-Authenticate"] = 'Basic realm="Registry Realm, with comma"'
    found = _challenges(headers)
    assert found["bearer"] == {"realm": "https://auth.example/token",
                               "service": "registry.example", "scope": "repository:a/b:pull"}
    assert found["basic"] == {"realm": "Registry Realm, with comma"}


@pytest.mark.parametrize("challenge, extra, expected", [
    # the registry may name the actions in either order: one scope, with both actions
    ("repository:team/app:push,pull", [], ["repository:team/app:pull,push"]),
    ("repository:team/app:pull", [], ["repository:team/app:pull,push"]),
    ("", [], ["repository:team/app:pull,push"]),
    # a mount's source repository is asked for separately
    ("repository:team/app:push,pull", ["repository:team/base:pull"],
     ["repository:team/app:pull,push", "repository:team/base:pull"]),
    ("registry:catalog:* repository:team/app:delete", [],
     ["repository:team/app:pull,push,delete", "registry:catalog:*"]),
])
def test_token_scopes_name_each_resource_once(challenge, extra, expected):
    reg = Registry(parse_reference("127.0.0.1:5000/team/app:1"), insecure=True,
                   actions="pull,push")
    reg.extra_scopes = extra
    assert reg.scopes({"scope": challenge}) == expected
