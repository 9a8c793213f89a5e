#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: container_commit
short_description: Turn a container's writable layer into a new image
version_added: 0.1.0
description:
  - Makes a new image from a container of the store at O(data_root), like C(docker commit).
    The new image has its image's layers plus one layer holding the container's changes
    (added and modified files, deletions as whiteouts), a new config and a history entry.
  - The new config is derived from content only, so committing an unchanged container
    again gives the same image id and C(changed=false).
  - Where the filesystem can clone files (btrfs, xfs with reflink), the changed files'
    data is cloned into the new layer instead of written a second time; the layer's
    digest is computed from the clones.
  - Like C(docker commit --pause=false), processes writing into the container while it
    is committed may leave their changes half in; the layer always matches its digest.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.attributes.action_plugin
  - strata.layers.store
attributes:
  check_mode:
    details: Reads the container's changes to learn the layer's digest; writes nothing.
options:
  name:
    description: The container to commit.
    type: str
    required: true
  tag:
    description: Tags (C(NAME[:TAG])) for the new image.
    type: list
    elements: str
    default: []
  comment:
    description:
      - The commit message, recorded as the comment of the new history entry
        (C(docker commit -m)).
      - Write it as C(message) in tasks, as C(docker commit -m) users expect; Ansible reserves
        C(message) as a module argument name, so this collection's action plugin hands it to
        the module as O(comment).
    type: str
  changes:
    description:
      - Config changes for the new image, merged into its C(config) (e.g. C(Cmd), C(Env),
        C(WorkingDir), C(Labels)), as C(docker commit --change) does.
    type: dict
"""

EXAMPLES = r"""
- name: Commit my_container_1 as a new image
  strata.layers.container_commit:
    name: my_container_1
    tag: [acme/snapshot:1]
    message: state after the migration script
"""

RETURN = r"""
image_id:
  description: Id of the new image (null in check mode when it does not exist yet).
  returned: always
  type: str
layers:
  description: Diff ids of the new image, bottom to top (the last one holds the container's changes).
  returned: always
  type: list
  elements: str
tags:
  description: Tags that point at the new image.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.container_commit import container_commit


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            name=dict(type="str", required=True),
            tag=dict(type="list", elements="str", default=[]),
            comment=dict(type="str"),
            changes=dict(type="dict"),
        ),
        supports_check_mode=True,
    )
    run(module, container_commit)


if __name__ == "__main__":
    main()
