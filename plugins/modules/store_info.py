#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: store_info
short_description: Facts about a layer store (images, layers, containers, disk usage)
version_added: 0.1.0
description:
  - Reports what C(docker info), C(docker image ls), C(docker history), C(docker ps -s) and
    C(docker system df -v) would show for the store at O(data_root).
  - Read-only; takes the shared store lock. A store that does not exist reads as empty.
options:
  sizes:
    description:
      - Compute each container's size (C(docker ps -s)) and the bytes allocated on disk.
      - With V(false), as C(docker ps) without C(-s), the containers' C(size) and
        C(virtual_size), C(disk_usage.containers) and C(disk_usage.on_disk) are null. On
        the vfs and btrfs drivers a container's size is a walk of its files, so this
        makes the call much cheaper on a store with many containers.
    type: bool
    default: true
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
"""

EXAMPLES = r"""
- name: What is in the store
  strata.layers.store_info:
  register: store

- name: Show image sizes like docker image ls
  ansible.builtin.debug:
    msg: "{{ item.tags | join(',') }} {{ item.size }} (shared {{ item.shared_size }})"
  loop: "{{ store.images }}"

- name: Containers without their sizes, like docker ps (cheap on vfs and btrfs)
  strata.layers.store_info:
    sizes: false
  register: quick
"""

RETURN = r"""
driver:
  description: Storage driver of the store (null before it is initialised).
  returned: always
  type: str
  sample: overlay2
previous_driver:
  description: The driver used before the last switch, if any.
  returned: always
  type: str
backing_filesystem:
  description: Filesystem type under O(data_root) (C(ext4), C(xfs), C(btrfs), C(tmpfs), ...).
  returned: always
  type: str
supports_d_type:
  description: Whether that filesystem reports file types in directory entries (overlay needs it).
  returned: always
  type: bool
images:
  description: Every image, like C(docker image ls) and C(docker system df -v).
  returned: always
  type: list
  elements: dict
  contains:
    id: {description: Image id (digest of its config)., type: str}
    tags: {description: Tags pointing at it., type: list, elements: str}
    size: {description: Bytes of all its layers., type: int}
    shared_size: {description: Bytes of its layers that another image also uses., type: int}
    unique_size: {description: C(size) minus C(shared_size)., type: int}
    layers: {description: 'Its diff ids, bottom to top.', type: list, elements: str}
    created: {description: Creation time from its config., type: str}
    history:
      description: C(docker history) rows, oldest first (C(created_by), C(size), C(empty_layer), C(comment), C(created)).
      type: list
      elements: dict
layers:
  description: Every layer with the images that use it.
  returned: always
  type: list
  elements: dict
  contains:
    diff_id: {description: Digest of its uncompressed tar., type: str}
    chain_id: {description: Its chain id., type: str}
    size: {description: Bytes of the regular files it adds., type: int}
    referenced_by: {description: Ids of the images using it., type: list, elements: str}
containers:
  description: Every container, like C(docker ps -s).
  returned: always
  type: list
  elements: dict
  contains:
    id: {description: Container id (64 hex digits)., type: str}
    name: {description: Its name., type: str}
    image_id: {description: Its image., type: str}
    status:
      description: V(created), V(running) or V(exited) (as the strata.layers.container module ran it).
      type: str
    size: {description: Bytes of the files in its writable layer (null when O(sizes=false))., type: int}
    virtual_size: {description: C(size) plus the size of its image (null when O(sizes=false))., type: int}
    mounted: {description: Whether its root filesystem is mounted now., type: bool}
disk_usage:
  description: C(docker system df) figures, in bytes.
  returned: always
  type: dict
  contains:
    images: {description: Bytes of the layers images use (each layer once)., type: int}
    containers: {description: Bytes in all writable layers (null when O(sizes=false))., type: int}
    layers: {description: Bytes of all layers., type: int}
    reclaimable: {description: Bytes of layers nothing uses (what store_prune would free)., type: int}
    on_disk: {description: Bytes actually allocated under O(data_root) (null when O(sizes=false))., type: int}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.store_info import store_info


def main() -> None:
    module = AnsibleModule(argument_spec=store_spec(sizes=dict(type="bool", default=True)),
                           supports_check_mode=True)
    run(module, store_info)


if __name__ == "__main__":
    main()
