#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: container_layer
short_description: Create, mount, unmount and remove the writable layer of a container
version_added: 0.1.0
description:
  - Manages the thin copy-on-write layer of a container on top of an image in the store
    at O(data_root). Many containers on one image share the image's layers; a
    container's writes never reach the image or another container.
  - With overlay drivers the writable layer is an upper directory over the image's layers;
    with vfs a copy of the image's root filesystem; with btrfs a snapshot.
  - Sizes are reported as C(docker ps -s) does.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
options:
  name:
    description: Container name, unique per store.
    type: str
    required: true
  image:
    description:
      - Image reference (C(NAME[:TAG]), id, or 12+ digit id prefix). Required for
        V(present) and V(mounted).
      - An existing container on another image is an error (remove it first).
    type: str
  state:
    description:
      - V(present) the writable layer exists; V(mounted) its merged root filesystem is mounted
        at O(mount_point) (a mount lost at reboot is made again); V(unmounted) it is not
        mounted; V(absent) it is unmounted and all its data removed.
    type: str
    default: present
    choices: [present, mounted, unmounted, absent]
  mount_point:
    description:
      - Where V(mounted) mounts the root filesystem. Defaults to C(<data_root>/mounts/<id>),
        which only root can reach (the data root and C(mounts/) are mode C(0700)).
      - Must not be a file, nor be the store, lie inside it, or be a directory that holds
        the data root (mounting there would hide the store).
      - A mount point outside the store is as reachable as its parent directories make
        it, so it is mounted C(nosuid,nodev) (no local user runs the image's setuid
        programs or opens its device nodes through it).
    type: path
"""

EXAMPLES = r"""
- name: Five containers from one image
  strata.layers.container_layer:
    name: "my_container_{{ item }}"
    image: acme/my-final-image:1.0
    state: mounted
  loop: [1, 2, 3, 4, 5]

- name: Remove one
  strata.layers.container_layer:
    name: my_container_5
    state: absent
"""

RETURN = r"""
id:
  description: Container id (64 hex digits).
  returned: when the container exists
  type: str
name:
  description: Container name.
  returned: when the container exists
  type: str
image_id:
  description: Id of its image.
  returned: when the container exists
  type: str
mount_point:
  description: Where its root filesystem is mounted (null when not mounted).
  returned: when the container exists
  type: str
mounted:
  description: Whether it is mounted now.
  returned: when the container exists
  type: bool
size:
  description: Bytes of the files in the writable layer, as C(docker ps -s) counts them.
  returned: when the container exists
  type: int
virtual_size:
  description: RV(size) plus the size of the image.
  returned: when the container exists
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.container_layer import container_layer


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            name=dict(type="str", required=True),
            image=dict(type="str"),
            state=dict(type="str", default="present",
                       choices=["present", "mounted", "unmounted", "absent"]),
            mount_point=dict(type="path"),
        ),
        required_if=[("state", "present", ("image",)), ("state", "mounted", ("image",))],
        supports_check_mode=True,
    )
    run(module, container_layer)


if __name__ == "__main__":
    main()
