"""``_argspec.run``: what a module reports when its operation fails."""
from __future__ import annotations

import errno
import os

import pytest

from ansible_collections.strata.layers.plugins.module_utils._argspec import run
from ansible_collections.strata.layers.plugins.module_utils._errors import NotFound


class Failed(Exception):
    pass


class FakeModule:
    """Stands in for AnsibleModule: records what fail_json / exit_json were given."""

    params = {"name": "x"}
    check_mode = False

    def __init__(self):
        self.reported = None

    def fail_json(self, **kwargs):
        self.reported = ("fail", kwargs)
        raise Failed()

    def exit_json(self, **kwargs):
        self.reported = ("exit", kwargs)


def test_a_store_error_is_a_message_with_its_category():
    def operation(params, check_mode):
        raise NotFound("no image named x")
    module = FakeModule()
    with pytest.raises(Failed):
        run(module, operation)
    assert module.reported == ("fail", {"msg": "no image named x", "error": "NotFound"})


def test_an_os_error_is_a_message_naming_the_path_not_a_traceback(tmp_path):
    path = str(tmp_path / "bundle")
    with open(path, "w"):
        pass

    def operation(params, check_mode):
        os.mkdir(path)
    module = FakeModule()
    with pytest.raises(Failed):
        run(module, operation)
    kind, reported = module.reported
    assert kind == "fail" and reported["error"] == "FileExistsError"
    assert reported["msg"] == "FileExistsError on %r: File exists" % path
    assert reported["errno"] == errno.EEXIST and "Traceback" in reported["exception"]


def test_a_result_is_reported_as_is():
    module = FakeModule()
    run(module, lambda params, check_mode: {"changed": False, "name": params["name"]})
    assert module.reported == ("exit", {"changed": False, "name": "x"})
