#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: storage_driver
short_description: Choose, initialise and switch the storage driver of a layer store or of dockerd
version_added: 0.1.0
description:
  - Probes the host for real (backing filesystem and d_type of O(data_root), a test
    overlay mount with two lower layers, the programs each driver needs) and reports why
    each driver is or is not usable in RV(candidates).
  - Initialises a new store with the chosen driver. A store that already holds content
    is switched only with O(migrate=true).
  - "Priority for O(driver=auto): C(btrfs) when O(data_root) is on btrfs, then
    C(overlay2), C(fuse-overlayfs), C(vfs). A store with content keeps its usable driver
    under O(driver=auto) unless O(migrate=true)."
  - "With O(engine=docker) it manages dockerd's own storage instead: the current driver
    comes from the running daemon (C(GET /info) on its socket), else O(daemon_config),
    else the driver tree holding content under O(data_root); selecting writes
    C(storage-driver) into O(daemon_config) keeping every other key, its mode and owner."
  - "With O(engine=docker) and O(migrate=true), dockerd must be stopped (the module checks
    and never starts or stops it): every layer and container is converted offline in
    Docker's own layout between C(overlay2), C(vfs), C(btrfs) and C(fuse-overlayfs),
    keeping image ids, chain ids, tags, container ids and names; each layer's diff_id is
    recomputed from the new driver's files and each container's changes are compared
    before daemon.json is switched. A killed run leaves dockerd startable on the old
    driver (pinned in daemon.json) and a re-run resumes."
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
attributes:
  check_mode:
    details: Probes (a transient test mount) and reports what would change and move.
  diff_mode:
    support: full
    details: With O(engine=docker), the daemon.json change.
options:
  engine:
    description:
      - Whose storage. V(strata) is this collection's store, V(docker) dockerd's data root.
    type: str
    default: strata
    choices: [strata, docker]
  data_root:
    description:
      - The store (O(engine=strata), default C(/var/lib/strata)) or Docker's data root
        (O(engine=docker), default the C(data-root) of O(daemon_config), else
        C(/var/lib/docker)).
    type: path
    default: null
  daemon_config:
    description:
      - With O(engine=docker), the daemon.json where the driver is configured.
    type: path
    default: /etc/docker/daemon.json
  stop_containers:
    description:
      - With O(engine=docker) and O(migrate=true), containers still running without dockerd
        (live-restore) are stopped (SIGTERM, then SIGKILL after 10 s) and listed in
        RV(stopped_containers) instead of refusing the migration.
    type: bool
    default: false
  driver:
    description:
      - The driver to use. V(auto) picks the best usable one.
    type: str
    default: auto
    choices: [auto, overlay2, btrfs, fuse-overlayfs, vfs, zfs, devicemapper, aufs]
  migrate:
    description:
      - The store holds content under another driver. V(false) fails, naming both drivers.
        V(true) re-materialises every layer and container under the new driver, verifies
        it, then switches.
    type: bool
    default: false
  keep_previous:
    description:
      - V(true) keeps the previous driver's data after a migration, so that switching back
        is instant (only containers are carried back).
      - V(false) removes it; on a run without a migration, that drops data an earlier
        migration kept (once the switch has been verified, say).
      - Removed data leaves its place at once (it is moved into the store's C(tmp/)) and its
        files are deleted by a detached process to which the task hands the store's lock,
        so the task does not wait for them; the next task on the store waits for that
        process (if it was killed, the next change to the store deletes what is left).
      - Unset, a migration removes it, and a run without a migration leaves data an
        earlier migration kept where it is.
    type: bool
"""

EXAMPLES = r"""
- name: Initialise the store with the best driver for this host
  strata.layers.storage_driver:
  register: sd

- name: Explain the choice
  ansible.builtin.debug:
    msg: "{{ item.name }}: {{ 'usable' if item.usable else 'refused' }} ({{ item.reason }})"
  loop: "{{ sd.candidates }}"

- name: Switch a stopped dockerd to vfs, keeping every image and container
  strata.layers.storage_driver:
    engine: docker
    driver: vfs
    migrate: true
    keep_previous: true

- name: Move a store with content to vfs, keeping overlay2 data for a rollback
  strata.layers.storage_driver:
    driver: vfs
    migrate: true
    keep_previous: true
"""

RETURN = r"""
engine:
  description: The engine whose storage was managed.
  returned: always
  type: str
  sample: docker
data_root:
  description: Docker's data root (O(engine=docker)).
  returned: when engine is docker
  type: str
daemon_config:
  description: The daemon.json consulted (O(engine=docker)).
  returned: when engine is docker
  type: str
stopped_containers:
  description: Names of containers stopped because of O(stop_containers).
  returned: when engine is docker
  type: list
  elements: str
driver:
  description: The driver in use after the run.
  returned: always
  type: str
  sample: overlay2
previous_driver:
  description: The driver before the last switch, or null.
  returned: always
  type: str
backing_filesystem:
  description: Filesystem type under O(data_root).
  returned: always
  type: str
  sample: xfs
supports_d_type:
  description: Whether the filesystem reports d_type (overlay needs it).
  returned: always
  type: bool
candidates:
  description: Every driver in priority order, with why it is or is not usable here.
  returned: always
  type: list
  elements: dict
  contains:
    name: {description: Driver name., type: str}
    usable: {description: Whether it can run for this store., type: bool}
    reason: {description: Why (or why not)., type: str}
migrated:
  description: What a migration moved (what it would move, in check mode); null when none ran.
  returned: always
  type: dict
  contains:
    layers: {description: Layers re-materialised., type: int}
    containers: {description: Container layers carried over., type: int}
    bytes: {description: Bytes of layer data moved., type: int}
    images: {description: Images carried over (O(engine=docker))., type: int}
    seconds: {description: Time the migration took., type: float}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.storage_driver import (
    storage_driver)


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            engine=dict(type="str", default="strata", choices=["strata", "docker"]),
            data_root=dict(type="path"),
            daemon_config=dict(type="path", default="/etc/docker/daemon.json"),
            stop_containers=dict(type="bool", default=False),
            driver=dict(type="str", default="auto",
                        choices=["auto", "overlay2", "btrfs", "fuse-overlayfs", "vfs", "zfs",
                                 "devicemapper", "aufs"]),
            migrate=dict(type="bool", default=False),
            keep_previous=dict(type="bool"),
        ),
        supports_check_mode=True,
    )
    run(module, storage_driver)


if __name__ == "__main__":
    main()
