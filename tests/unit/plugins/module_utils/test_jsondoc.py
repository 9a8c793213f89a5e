"""The bounded JSON reader: size, depth and fan-out refused before decoding, linear scan."""
from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt, InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._jsondoc import (
    Bounds, load_object, loads)


def test_real_documents_decode():
    doc = {"schemaVersion": 2, "layers": [{"digest": "sha256:" + "a" * 64, "size": 1}] * 125,
           "annotations": {"a": "[[[{{{\"\\"}}
    assert loads(json.dumps(doc).encode(), "manifest") == doc


@pytest.mark.parametrize("raw, fragment", [
    (b"[" * 100_000 + b"]" * 100_000, "more than 64 deep"),
    (b'{"a":' * 65 + b"1" + b"}" * 65, "more than 64 deep"),
    (b"[" + b"[]," * 100_001 + b"[]]", "more than 100000 arrays and objects"),
])
def test_bombs_are_refused_with_the_document_named(raw, fragment):
    with pytest.raises(InvalidInput) as info:
        loads(raw, "index.json in /srv/x.tar")
    assert fragment in str(info.value) and "index.json in /srv/x.tar" in str(info.value)


def test_size_bound_and_a_raised_bound():
    raw = json.dumps({"k": "v" * 1000}).encode()
    with pytest.raises(InvalidInput) as info:
        loads(raw, "config", Bounds(size=100))
    assert "more than the 100" in str(info.value)
    assert loads(raw, "config", Bounds(size=2000))["k"] == "v" * 1000
    assert loads(b"[" * 80 + b"]" * 80, "doc", Bounds(depth=100))


def test_brackets_inside_strings_do_not_count():
    raw = json.dumps({"s": "[" * 10_000, "t": "\\\"{" * 1000}).encode()
    assert loads(raw, "doc")["s"] == "[" * 10_000


@pytest.mark.parametrize("raw", [b"{", b'{"a": "unterminated', b"\xff", b"[1,]", b'"\\"' * 1000])
def test_garbage_is_corrupt_never_a_traceback(raw):
    with pytest.raises(Corrupt):
        loads(raw, "doc")


def test_load_object_wants_an_object():
    with pytest.raises(Corrupt):
        load_object(b"[]", "manifest")


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
                    max_leaves=30))
def test_round_trip_of_any_shallow_document(value):
    raw = json.dumps(value).encode()
    assert loads(raw, "doc") == value
