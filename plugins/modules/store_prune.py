#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: store_prune
short_description: Remove images and layers nothing references
version_added: 0.1.0
description:
  - Removes untagged images no container uses and that no kept image was built from, then
    every layer no remaining image or container needs (C(docker image prune)).
  - Reports the bytes reclaimed on disk. In check mode, only reports.
  - References fail closed. While any image or container record cannot be read (damaged,
    moved to quarantine by M(strata.layers.store_check), or a container whose image is
    gone), nothing is pruned, because any layer may be that record's. RV(unreadable) names
    the records and the module warns.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
options:
  build_cache:
    description:
      - Also remove the directories of C(RUN --mount=type=cache) that
        M(strata.layers.image_build) keeps across builds (as C(docker builder prune) does);
        the next build using one starts it empty.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: What would a prune free?
  strata.layers.store_prune:
  check_mode: true
  register: prune

- name: Prune
  strata.layers.store_prune:

- name: Prune, and empty the build's cache mounts
  strata.layers.store_prune:
    build_cache: true
"""

RETURN = r"""
removed:
  description: What was removed (would be, in check mode).
  returned: always
  type: dict
  contains:
    images: {description: Image ids., type: list, elements: str}
    layers: {description: Layer chain ids., type: list, elements: str}
    build_cache:
      description: Cache mounts removed (the sha256 of their ids), with O(build_cache) only.
      type: list
      elements: str
reclaimed:
  description: Bytes freed on disk (that would be freed, in check mode).
  returned: always
  type: int
unreadable:
  description: The image and container records that could not be read; while there are
    any, nothing is removed. Repair them (M(strata.layers.store_check) with O(strata.layers.store_check#module:repair=true)),
    re-import the missing images or remove those containers.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.store_prune import store_prune


def main() -> None:
    module = AnsibleModule(argument_spec=store_spec(
        build_cache=dict(type="bool", default=False),
    ), supports_check_mode=True)
    run(module, store_prune)


if __name__ == "__main__":
    main()
