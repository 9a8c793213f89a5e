from __future__ import annotations

import hashlib

import pytest

from ansible_collections.strata.layers.plugins.module_utils._digest import (
    chain_id, chain_ids, hex_of, short_id, validate_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidReference

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def test_chain_id_follows_the_oci_image_spec():
    expected = "sha256:" + hashlib.sha256(("%s %s" % (D1, D2)).encode()).hexdigest()
    assert chain_id(None, D1) == D1
    assert chain_id(D1, D2) == expected
    assert chain_ids([D1, D2]) == [D1, expected]


@pytest.mark.parametrize("bad", ["", "sha256:abc", "sha512:" + "a" * 64, "sha256:" + "A" * 64,
                                 "sha256:" + "a" * 64 + "\n", "../../etc", None, 5])
def test_invalid_digests_are_refused_before_any_path_is_built(bad):
    with pytest.raises(InvalidReference):
        validate_digest(bad)
    with pytest.raises(InvalidReference):
        hex_of(bad)


def test_short_id():
    assert short_id(D1) == "a" * 12
