"""Shared pytest set-up: the collection on sys.path, real filesystems, test images."""
from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
COLLECTIONS = os.path.join(REPO, ".collections")
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

pytest_plugins = ["tests.support.fixtures"]

# Property tests explore the same examples on every run unless asked to search afresh
# (STRATA_HYPOTHESIS_RANDOM=1): a CI run must not turn red on a new random draw; a
# failure found while exploring becomes a fixed test case.
try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is installed by scripts/setup; tolerate its absence
    _hypothesis_settings = None
if _hypothesis_settings is not None:
    _hypothesis_settings.register_profile("strata", derandomize=True, deadline=None,
                                          database=None)
    _hypothesis_settings.register_profile("explore", deadline=None)
    _hypothesis_settings.load_profile(
        "explore" if os.environ.get("STRATA_HYPOTHESIS_RANDOM") else "strata")
