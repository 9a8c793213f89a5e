# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Controller side of container_commit: the task's ``message`` reaches the module as ``comment``.

Ansible reserves ``message`` as a module argument name (ansible-test refuses it in an
argument_spec), but ``message`` is what ``docker commit -m`` users write and what the
collection's interface promises; this plugin renames it before the module runs.
"""
from __future__ import annotations

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase


class ActionModule(ActionBase):
    TRANSFERS_FILES = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        args = dict(self._task.args)
        if "message" in args:
            if args.get("comment") is not None:
                raise AnsibleActionFail("container_commit: give message or comment, not both")
            args["comment"] = args.pop("message")
        result.update(self._execute_module(module_name="strata.layers.container_commit",
                                           module_args=args, task_vars=task_vars))
        return result
