"""A podman of a test's own: a private root and runroot on vfs (nothing mounted), reset
and removed at the end even when the test fails."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from typing import Iterator, List


@contextlib.contextmanager
def private_podman(root: str) -> Iterator[List[str]]:
    """The podman command line (``podman --root ROOT --runroot ... --storage-driver vfs``)
    to which a test appends its arguments."""
    runroot = tempfile.mkdtemp(prefix="strata-prr-")   # podman wants a runroot under 50 chars
    podman = ["podman", "--root", root, "--runroot", runroot, "--storage-driver", "vfs"]
    try:
        yield podman
    finally:
        subprocess.run(podman + ["system", "reset", "--force"], capture_output=True,
                       check=False, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)
