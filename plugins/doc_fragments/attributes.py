# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """The attributes every strata.layers module shares, with their support.

    A module lists strata.layers.attributes (and strata.layers.attributes.action_plugin
    when an action plugin runs part of it on the controller) and writes under its own
    attributes: only what differs: a details line, or another support. Ansible
    merges each attribute key by key and the module's own keys win.
    """

    DOCUMENTATION = r"""
attributes:
  action_group:
    description: The module is in the action group C(strata.layers.layers), so one
      C(module_defaults) entry (for example O(data_root)) sets it for every module here.
    support: full
    membership: [strata.layers.layers]
  check_mode:
    description: Runs in check mode and reports whether it would change anything, and
      what, without writing to the store or the host.
    support: full
  diff_mode:
    description: Returns a C(diff) of what it changed (or would change in check mode)
      when run with C(--diff).
    support: none
  platform:
    description: The kinds of managed host it runs on.
    support: full
    platforms: posix
"""

    ACTION_PLUGIN = r"""
attributes:
  action:
    description: An action plugin of the same name runs part of the work on the
      controller before the module runs on the managed host.
    support: full
  async:
    description: Can run with the C(async) keyword.
    support: none
  bypass_host_loop:
    description: Runs once for all hosts instead of once per host.
    support: none
"""
