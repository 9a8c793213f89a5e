# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of image_build: the YAML ``instructions`` are validated against the
collection's JSON schema here, with jsonschema, so managed hosts need nothing but the
Python standard library.  The module re-checks what it relies on when it parses."""
from __future__ import annotations

import json
import os

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "schemas",
                      "image_build.instructions.json")


def _path(error) -> str:
    where = list(error.absolute_path)
    if where and isinstance(where[0], int):
        return "instructions item %d%s" % (where[0] + 1, "".join("[%r]" % p for p in where[1:]))
    return "instructions"


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        instructions = self._task.args.get("instructions")
        if instructions is not None:
            self._validate(instructions)
        result.update(self._execute_module(module_name="strata.layers.image_build",
                                           module_args=self._task.args, task_vars=task_vars))
        return result

    @staticmethod
    def _validate(instructions) -> None:
        try:
            import jsonschema
        except ImportError as exc:
            raise AnsibleActionFail("image_build validates instructions with the jsonschema "
                                    "package on the controller: pip install jsonschema") from exc
        with open(SCHEMA, encoding="utf-8") as handle:
            schema = json.load(handle)
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(instructions), key=lambda e: list(e.absolute_path))
        if errors:
            best = jsonschema.exceptions.best_match(errors)
            raise AnsibleActionFail("image_build: %s does not match the instructions schema: %s"
                                    % (_path(best), best.message))
