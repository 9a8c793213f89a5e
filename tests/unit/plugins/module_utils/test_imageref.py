"""Image references (``_imageref.py``): NAME[:TAG] checked and normalized, id prefixes."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, InvalidReference)
from ansible_collections.strata.layers.plugins.module_utils._imageref import (
    familiar, hex_prefix, normalize_tag, split_reference, validate_tags)


@pytest.mark.parametrize("ref, expected", [
    ("busybox", ("busybox", "latest")),
    ("busybox:1.36", ("busybox", "1.36")),
    ("acme/app:v1_rc.2-x", ("acme/app", "v1_rc.2-x")),
    ("localhost:5000/app", ("localhost:5000/app", "latest")),
    ("localhost:5000/team/app:7", ("localhost:5000/team/app", "7")),
    ("[::1]:5000/app:edge", ("[::1]:5000/app", "edge")),
    ("a__b/c--d.e_f", ("a__b/c--d.e_f", "latest")),
])
def test_split_reference_gives_the_name_and_tag_latest_when_omitted(ref, expected):
    assert split_reference(ref) == expected


@pytest.mark.parametrize("ref", [
    "", None, 5, "Busybox", "busybox@sha256:" + "a" * 64, "app:", "app:-x", "app:" + "t" * 129,
    "a" * 256, "acme//app", "-app", "app/", "app:v 1",
    # tags are ASCII, as Docker's reference grammar has them ([\w] is [A-Za-z0-9_])
    "app:\u00e91", "app:v\u0661",
])
def test_split_reference_refuses_what_is_not_name_tag(ref):
    with pytest.raises(InvalidReference):
        split_reference(ref)


def test_a_tag_of_128_characters_is_the_longest_accepted():
    assert split_reference("app:" + "t" * 128) == ("app", "t" * 128)


def test_split_reference_names_the_tag_at_fault():
    with pytest.raises(InvalidReference, match=r"tag '-x' of 'app:-x'"):
        split_reference("app:-x")


@pytest.mark.parametrize("name, short", [
    ("docker.io/library/busybox", "busybox"),
    ("index.docker.io/library/busybox", "busybox"),
    ("registry-1.docker.io/acme/app", "acme/app"),
    ("docker.io/acme/app", "acme/app"),
    ("library/busybox", "busybox"),
    ("library/a/b", "library/a/b"),
    ("quay.io/library/busybox", "quay.io/library/busybox"),
    ("localhost:5000/app", "localhost:5000/app"),
])
def test_familiar_is_the_short_form_the_docker_cli_shows(name, short):
    assert familiar(name) == short


def test_normalize_tag_adds_latest_and_shortens_docker_hub_names():
    assert normalize_tag("docker.io/library/busybox") == "busybox:latest"
    assert normalize_tag("docker.io/acme/app:1") == "acme/app:1"
    assert normalize_tag("localhost:5000/app") == "localhost:5000/app:latest"


_COMPONENT = st.from_regex(r"\A[a-z0-9]{1,5}(?:[._-][a-z0-9]{1,5}){0,2}\Z")


@given(host=st.sampled_from(["", "docker.io/", "docker.io/library/", "localhost:5000/", "r.io/"]),
       parts=st.lists(_COMPONENT, min_size=1, max_size=3),
       tag=st.one_of(st.none(), st.from_regex(r"\A\w[\w.-]{0,20}\Z", alphabet=st.characters(
           codec="ascii"))))
def test_normalize_tag_is_idempotent(host, parts, tag):
    ref = host + "/".join(parts) + ("" if tag is None else ":" + tag)
    once = normalize_tag(ref)
    assert normalize_tag(once) == once


@pytest.mark.parametrize("ref, expected", [
    ("0123456789ab", "0123456789ab"),
    ("sha256:0123456789ab", "0123456789ab"),
    ("sha256:" + "f" * 64, "f" * 64),
    ("0123456789a", None),
    ("0123456789AB", None),
    ("f" * 65, None),
    ("busybox", None),
    ("", None),
    (None, None),
])
def test_hex_prefix_is_twelve_to_64_lowercase_hex_digits(ref, expected):
    assert hex_prefix(ref) == expected


def test_validate_tags_normalizes_each_and_refuses_a_non_string():
    assert validate_tags(None) == []
    assert validate_tags(["docker.io/library/a:1", "b"]) == ["a:1", "b:latest"]
    with pytest.raises(InvalidInput, match="tag 7 is not a string"):
        validate_tags(["a", 7])
    with pytest.raises(InvalidReference):
        validate_tags(["a", "B"])
