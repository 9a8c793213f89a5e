"""Container records: the one reader of ``container.json`` (``_containers.read_record``),
which the store's references, store_check and the modules share."""
from __future__ import annotations

import json
import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._containers import (
    ContainerRecord, read_record)
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt, NotFound

CID = "c" * 64


def write(tmp_path, data) -> str:
    path = str(tmp_path / CID)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "container.json"), "w") as handle:
        handle.write(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_record_reads_back(tmp_path):
    record = ContainerRecord(id=CID, name="web", image_id="sha256:" + "a" * 64,
                             created="2026-01-01T00:00:00Z")
    assert read_record(write(tmp_path, record.to_json()), CID) == record


def test_no_record_is_not_found_with_the_problem(tmp_path):
    with pytest.raises(NotFound) as caught:
        read_record(str(tmp_path), CID)
    assert caught.value.details["problem"].startswith("container.json cannot be read")
    assert isinstance(caught.value.__cause__, FileNotFoundError)


@pytest.mark.parametrize("data, problem", [
    ("{not json", "container.json cannot be read"),
    ({"id": "d" * 64, "name": "web", "image_id": "sha256:x", "created": ""},
     "does not name this container"),
    ({"id": CID, "name": 7, "image_id": "sha256:x", "created": ""},
     "does not name this container"),
    ({"id": CID, "name": "web", "image_id": "sha256:x"}, "lacks a field"),
])
def test_a_damaged_record_is_corrupt_saying_why(tmp_path, data, problem):
    with pytest.raises(Corrupt) as caught:
        read_record(write(tmp_path, data), CID)
    assert problem in caught.value.details["problem"]
    assert "store_check" in str(caught.value)
