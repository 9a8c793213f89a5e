"""Docker's graph-driver trees as _docker.graph reads and writes them."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._docker.graph import Overlay
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt


def test_a_parent_without_its_link_file_is_corrupt_with_the_os_error_as_cause(tmp_path):
    graph = Overlay(str(tmp_path))
    graph.init_home()
    graph.create("a" * 64, None)
    link = os.path.join(graph.layer_dir("a" * 64), "link")
    os.unlink(link)
    with pytest.raises(Corrupt) as info:
        graph.create("b" * 64, "a" * 64)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    assert info.value.__cause__.filename == link
    assert link in str(info.value)
