#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: image
short_description: Tag, untag and remove images of a layer store
version_added: 0.1.0
description:
  - V(present) points O(tag) at the image O(name) resolves to (C(docker tag)).
  - V(absent) removes O(name) (C(docker rmi)). When O(name) is a tag and the image has
    other tags, only that tag goes; otherwise the image goes with all its tags, then every
    layer nothing else needs.
  - An image used by a container is not removed unless O(force=true), which removes those
    containers first and lists them in RV(removed).
  - References fail closed. When a container record cannot be read, removing an image is
    refused (that container may use it); run M(strata.layers.store_check) with repair first.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
options:
  name:
    description: Image reference (C(NAME[:TAG]), id or 12+ digit id prefix).
    type: str
    required: true
  state:
    description: Whether the image (or tag) should be there.
    type: str
    default: present
    choices: [present, absent]
  tag:
    description: With V(present), tags to point at the image.
    type: list
    elements: str
    default: []
  force:
    description: With V(absent), also remove the containers that use the image.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: docker tag acme/app:1.0 acme/app:stable
  strata.layers.image:
    name: acme/app:1.0
    tag: [acme/app:stable]

- name: docker rmi acme/app:1.0
  strata.layers.image:
    name: acme/app:1.0
    state: absent
"""

RETURN = r"""
image_id:
  description: The image O(name) resolved to (null when there was none).
  returned: always
  type: str
tags:
  description: Tags pointing at the image after the run.
  returned: always
  type: list
  elements: str
removed:
  description: What V(absent) removed (or would remove in check mode).
  returned: when state is absent and something was removed
  type: dict
  contains:
    tags: {description: Tags removed., type: list, elements: str}
    images: {description: Image ids removed., type: list, elements: str}
    layers: {description: Chain ids of layers removed., type: list, elements: str}
    containers: {description: Names of containers removed (with O(force))., type: list, elements: str}
    unreadable:
      description: Image or container records that could not be read. While there are any,
        the image's layers are kept (any of them may be such a record's).
      type: list
      elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.image import image


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            name=dict(type="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            tag=dict(type="list", elements="str", default=[]),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    run(module, image)


if __name__ == "__main__":
    main()
