"""Image records and the tag map (``_imagerecords.py``) on a real directory."""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._atomic import TEMP_PREFIX
from ansible_collections.strata.layers.plugins.module_utils._digest import chain_ids
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidReference, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    derive_config, parse_config)
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageDB

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def _put(db, raw, image_id=None, meta=None):
    """An image record as the store leaves it (written in place here: the store stages it
    and renames the directory)."""
    config = parse_config(raw, "test")
    image_id = image_id or config.id
    os.makedirs(db.path(image_id))
    ImageDB.write_staged(db.path(image_id), config, meta or {"source": "test"})
    return image_id


@pytest.fixture
def db(tmp_path):
    return ImageDB(str(tmp_path))


def test_a_record_reads_back_with_its_chain_and_top(db):
    image_id = _put(db, derive_config(parse_config(derive_config(None, D1, "t", "a"), "b"),
                                      D2, "t", "b"))
    record = db.get(image_id)
    assert record.id == image_id and record.meta == {"source": "test"}
    assert record.chain == list(chain_ids([D1, D2]))
    assert record.top == record.chain[-1]
    assert db.exists(image_id) and db.ids() == [image_id] and db.all() == [record]


def test_an_image_without_layers_has_no_top(db):
    record = db.get(_put(db, derive_config(None, None, "t", "ENV A=1")))
    assert record.chain == [] and record.top is None


def test_a_missing_image_is_not_found_with_the_cause_kept(db):
    with pytest.raises(NotFound) as caught:
        db.get("sha256:" + "a" * 64)
    assert isinstance(caught.value.__cause__, FileNotFoundError)


def test_ids_skip_temporaries_and_names_that_are_not_digests(db):
    image_id = _put(db, derive_config(None, D1, "t", "a"))
    os.makedirs(os.path.join(db.dir, TEMP_PREFIX + "x"))
    os.makedirs(os.path.join(db.dir, "not-a-digest"))
    os.makedirs(os.path.join(db.dir, "b" * 64))
    assert db.ids() == sorted([image_id, "sha256:" + "b" * 64])
    assert [r.id for r in db.all()] == [image_id]


def test_the_tag_map_round_trips_and_is_empty_when_absent(db):
    assert db.tags() == {} and db.ids() == []
    image_id = _put(db, derive_config(None, D1, "t", "a"))
    db.write_tags({"b:latest": image_id, "a:1": image_id})
    assert db.tags() == {"a:1": image_id, "b:latest": image_id}
    assert list(json.load(open(db.tags_path))) == ["a:1", "b:latest"]
    assert db.tags_of(image_id) == ["a:1", "b:latest"]
    assert db.tags_of("sha256:" + "c" * 64) == []


def test_a_damaged_tag_map_is_corrupt_and_says_what_to_run(db):
    with open(db.tags_path, "w") as handle:
        handle.write("{")
    with pytest.raises(Corrupt, match="store_check with repair"):
        db.tags()


def test_resolve_by_tag_in_any_form_by_id_and_by_prefix(db):
    image_id = _put(db, derive_config(None, D1, "t", "a"))
    db.write_tags({"busybox:latest": image_id})
    for ref in ("busybox", "docker.io/library/busybox:latest", image_id, image_id[7:19],
                "sha256:" + image_id[7:30]):
        assert db.resolve(ref) == image_id


def test_an_ambiguous_prefix_names_the_candidates(db):
    # two record directories sharing 12 hex digits: made by hand, a real collision is
    # out of reach; resolve looks only at the names
    raw = derive_config(None, D1, "t", "a")
    _put(db, raw, "sha256:" + "ab" * 6 + "0" * 52)
    _put(db, raw, "sha256:" + "ab" * 6 + "1" * 52)
    with pytest.raises(InvalidReference, match="ambiguous: it matches ababababab"):
        db.resolve("abababababab", what="base image")


@pytest.mark.parametrize("ref, error", [
    ("", InvalidReference), (None, InvalidReference), ("Not/Valid@x", InvalidReference),
    ("busybox", NotFound), ("sha256:" + "c" * 64, NotFound), ("cccccccccccc", NotFound),
])
def test_resolve_says_why_a_reference_gives_no_image(db, ref, error):
    with pytest.raises(error):
        db.resolve(ref)
