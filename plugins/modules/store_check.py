#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: store_check
short_description: Verify every layer, image, tag and container of a store; repair safely
version_added: 0.1.0
description:
  - Verifies every layer against its C(diff_id) by re-emitting its tar from the header
    record and the storage driver's files (streamed, one layer at a time), and every
    layer's metadata against the headers it was imported with (type, mode including
    setuid and setgid bits, owner, symlink target, device numbers, file capabilities, and
    the set of entries, so a file added to a layer is found), every image
    config against its id, every reference (tags to images, images to layers, layers to
    their parents, containers to images and to their writable layers), and finds orphan
    driver directories, broken overlay links, leftovers of interrupted runs, crash marks
    not yet settled and bad cache entries.
  - Without O(repair), and in check mode, it writes nothing and takes only the shared
    store lock.
  - With O(repair=true) it repairs what is safe to repair, under the exclusive lock
    (opening the store for writing also settles crash marks and sweeps staging debris,
    reported as repairs; a crash mark naming a path outside the store is never acted on but
    set aside as C(incomplete/*.rejected) and reported). It removes only what provably
    nothing references, re-creates
    what is derived from the records, and moves damaged records aside into
    C(<data_root>/quarantine/) instead of deleting them. It never removes an image
    because a layer it needs is gone, nor a container because its image is gone; those
    are reported, with what to do.
  - A quarantined layer is C(quarantine/<chain-hex>-<time>/) holding C(record/) (the layer
    record), C(data/) (the active driver's files, C(data-<driver>/) for a kept previous
    driver's) and C(quarantine.json) (why). Images that used it then report
    C(missing-image-layer); importing the image again (M(strata.layers.layer_import) of
    its archive, or M(strata.layers.image_pull)) restores the layer. Images are
    quarantined as C(image-<id-hex>-<time>/), containers as C(container-<id>-<time>/),
    an unreadable C(tags.json) as C(tags-<time>/). Remove quarantine entries yourself
    once you have looked at them.
  - The finding kinds are stable strings. Each is listed below with what O(repair) does.
  - "C(corrupt-layer): a layer's files no longer re-emit to its C(diff_id) (the detail
    names the file that changed, or says the damage is below the filesystem), or an entry's
    metadata differs from its header, or the layer holds an entry its headers do not name
    (the detail names them); repair moves it to quarantine."
  - "C(bad-layer-record): a layer record that does not parse, names another chain id or has
    lost its header record; repair moves it to quarantine."
  - "C(missing-layer-data): a layer record whose files the active driver does not hold;
    repair moves the record to quarantine."
  - "C(missing-parent): a layer whose parent is not in the store; not repaired (re-import
    an image that contains the parent)."
  - "C(corrupt-config): an image config that does not parse or does not hash to the image
    id; repair moves the image record to quarantine."
  - "C(missing-image-layer): an image that needs a layer the store does not hold; not
    repaired (re-import the image)."
  - "C(corrupt-tags): C(tags.json) does not parse; repair moves it to quarantine."
  - "C(dangling-tag): a tag that points at no image of the store, or is not a valid tag;
    repair removes the tag."
  - "C(bad-container-record): a container record that does not parse; repair moves the
    record and the writable layer to quarantine."
  - "C(missing-container-image): a container whose image is not in the store; not repaired
    (re-import the image, or remove the container)."
  - "C(missing-container-data): a container whose writable layer the driver does not hold;
    not repaired (remove the container and create it again)."
  - "C(orphan-layer-data): a layer directory of a driver (the active one or a kept previous
    one) that no layer record names; repair removes it."
  - "C(orphan-container-data): a container directory of a driver that no container record
    names; repair removes it."
  - "C(dangling-link): an overlay C(l/) entry that points nowhere, at something that is not
    a layer, or at the wrong layer; repair removes or re-points it."
  - "C(missing-link): an overlay C(l/) link, a layer's C(link) or C(lower) file, or the
    driver's C(empty/) directory that is missing or wrong; repair re-creates it from the
    layer records."
  - "C(leftover): debris of an interrupted run (C(.tmp-*) names in the metadata directories
    and driver homes, entries and mounts in C(tmp/)); repair removes it."
  - "C(incomplete): the mark of a mutation a crash interrupted; opening the store for
    writing (repair) rolls it back or finishes it."
  - "C(bad-cache-entry): a C(distribution/) or C(sources/) entry that is not valid; repair
    removes it (only speed is lost)."
  - "C(not-a-subvolume): on the btrfs driver, a layer, init or container root that is a
    plain directory, not a subvolume, as a store copied with C(cp -a) or C(rsync) (a restore
    from a file-level backup) has them. The store works, but each layer or container made
    from it is a copy of its files (reflinked) instead of a snapshot; repair makes each a
    subvolume with the same contents (a clone swapped in with one rename), except a
    container that is running or mounted, which it names. A restore with
    C(btrfs send)/C(btrfs receive) keeps the subvolumes."
  - Verification checks file contents and sizes and every tar header byte. It does not
    compare file metadata on disk (modes, owners, symlink targets) with the headers,
    and for full-copy drivers (vfs) it reads only the files each layer itself added.
author:
  - strata.layers developers (@strata-layers)
options:
  repair:
    description:
      - Repair what can be repaired safely (see the finding kinds above).
      - In check mode nothing is repaired; RV(repaired) lists what would be.
    type: bool
    default: false
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
seealso:
  - module: strata.layers.store_info
  - module: strata.layers.store_prune
"""

EXAMPLES = r"""
- name: Verify the store (writes nothing)
  strata.layers.store_check:
  register: check

- name: Fail when it found anything
  ansible.builtin.assert:
    that: check.ok
    fail_msg: "{{ check.findings | map(attribute='detail') | list }}"

- name: What would a repair do?
  strata.layers.store_check:
    repair: true
  check_mode: true
  register: plan

- name: Repair what is safe to repair
  strata.layers.store_check:
    repair: true
  register: repaired

- name: Show what is left to do by hand (re-import quarantined layers' images)
  ansible.builtin.debug:
    var: repaired.remaining
  when: not repaired.ok
"""

RETURN = r"""
ok:
  description:
    - True when the store is consistent at the end of the run (after repair, when
      O(repair) is set and not in check mode).
  returned: always
  type: bool
findings:
  description: Every problem found when the run began, in a stable order.
  returned: always
  type: list
  elements: dict
  contains:
    kind: {description: One of the finding kinds in the description., type: str}
    object:
      description: What it is about (a chain id, an image id, a tag, a container id, or a
        path relative to O(data_root)).
      type: str
    detail: {description: What is wrong and what to do about it., type: str}
  sample:
    - kind: corrupt-layer
      object: sha256:1f5ba2f2f0e4a8ea12de6a5cf4a7cf6b83c2cce7e2cbd6e1c5b3dbaa2a35b0e1
      detail: "its files re-emit as sha256:... not as its diff_id ...; modified after
        the import: app/hello.sh. Repair moves the layer to quarantine/ ..."
remaining:
  description:
    - The problems still there at the end of the run; the same as RV(findings) unless a
      repair ran.
  returned: always
  type: list
  elements: dict
repaired:
  description:
    - What the repair did, including the crash marks and debris that opening the store
      for writing settled; in check mode what it would do. Empty without O(repair).
  returned: always
  type: list
  elements: dict
  contains:
    kind: {description: The kind of finding repaired., type: str}
    object: {description: What was repaired., type: str}
    action: {description: What was done (for example C(moved to quarantine/...)., type: str}
verified:
  description: How much was checked.
  returned: always
  type: dict
  contains:
    layers: {description: Layers whose content was re-emitted and compared., type: int}
    bytes: {description: Bytes of layer tar re-emitted., type: int}
    images: {description: Image records whose config verified., type: int}
    containers: {description: Container records checked., type: int}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.store_check import store_check


def main() -> None:
    module = AnsibleModule(argument_spec=store_spec(repair={"type": "bool", "default": False}),
                           supports_check_mode=True)
    run(module, store_check)


if __name__ == "__main__":
    main()
