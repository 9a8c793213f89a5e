"""Where things are, for tests that start subprocesses."""
import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(REPO, ".collections")


def python_env() -> dict:
    """Environment for a child Python that imports ansible_collections.strata.layers."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([COLLECTIONS, REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    return env
