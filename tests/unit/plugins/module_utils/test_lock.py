"""The store lock's own errors (waiting and who holds it are in test_store/test_concurrency)."""
from __future__ import annotations

import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._errors import Locked
from ansible_collections.strata.layers.plugins.module_utils._lock import StoreLock


def test_a_timeout_is_locked_with_the_refused_flock_as_its_cause(tmp_path):
    path = os.path.join(str(tmp_path), "lock")
    with StoreLock(path, exclusive=True, timeout=0):
        # another open file description of the same file: flock(2) refuses it too
        with pytest.raises(Locked) as info:
            StoreLock(path, exclusive=False, timeout=0).acquire()
    assert isinstance(info.value.__cause__, BlockingIOError)
    assert path in str(info.value)
