"""docs/modules/ is generated from each module's DOCUMENTATION: it must be current."""
from __future__ import annotations

import filecmp
import os
import subprocess

from tests.support.paths import REPO


def test_module_pages_match_their_documentation(tmp_path):
    fresh = tmp_path / "modules"
    subprocess.run([os.path.join(REPO, "scripts", "docs"), str(fresh)], check=True,
                   capture_output=True)
    current = os.path.join(REPO, "docs", "modules")
    compare = filecmp.dircmp(str(fresh), current)
    stale = compare.left_only + compare.right_only + compare.diff_files
    assert not stale, "run ./scripts/docs: docs/modules is stale for %s" % stale
