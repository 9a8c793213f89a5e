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
