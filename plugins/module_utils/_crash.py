# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Named crash points for the kill -9 tests.

Every step boundary of a mutation calls ``crash_point("<operation>.<step>")``.  In
production this is one dictionary lookup.  Tests set ``STRATA_CRASH_AT`` to a point
name: the process then kills itself with SIGKILL right there (no cleanup handler,
no ``finally``, exactly like a power cut for everything not yet on disk).
``STRATA_CRASH_LOG`` names a file where every point passed is appended, so a test
can list the points an operation goes through and crash at each in turn.
"""
from __future__ import annotations

import os
import signal

_AT = os.environ.get("STRATA_CRASH_AT")
_LOG = os.environ.get("STRATA_CRASH_LOG")
_SKIP = int(os.environ.get("STRATA_CRASH_SKIP", "0") or 0)
_seen = {"count": 0}


def crash_point(name: str) -> None:
    if _LOG:
        with open(_LOG, "a") as handle:
            handle.write(name + "\n")
    if _AT is not None and name == _AT:
        if _seen["count"] >= _SKIP:
            os.kill(os.getpid(), signal.SIGKILL)
        _seen["count"] += 1
