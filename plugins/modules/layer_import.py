#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: layer_import
short_description: Import image layers and image archives into a layer store, by content
version_added: 0.1.0
description:
  - Imports one layer tarball (plain, gzip or zstd) or every layer and config of an image
    archive (C(docker save) output, an OCI archive or an OCI layout directory) into the
    store at O(data_root).
  - Layers are stored once by content (their C(diff_id)); a layer the store already holds
    is never extracted again, and a re-run reports C(changed=false).
  - Every member of a layer tar is confined to the layer root (no C(..), absolute names,
    symlink or hardlink escapes) and checked before the layer becomes visible; a failed
    import leaves the store exactly as it was.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
attributes:
  check_mode:
    details: Reads O(src) to learn its digests; writes nothing.
options:
  src:
    description:
      - A layer tarball or image archive file, or an OCI layout directory, on the managed host.
    type: path
    required: true
  format:
    description:
      - What O(src) is. V(auto) tells from its content.
      - V(layer) is one layer tar, plain, gzip or zstd (zstd needs the C(zstd) program).
      - V(docker-archive) is what C(docker save) writes; V(oci-archive) a tar of an OCI
        layout; V(oci-layout) an OCI image layout directory. A gzip- or zstd-compressed
        archive is also accepted.
    type: str
    default: auto
    choices: [auto, layer, docker-archive, oci-archive, oci-layout]
  parent:
    description:
      - For O(format=layer), the image reference (C(NAME[:TAG]), id or 12+ digit id prefix)
        or layer C(chain_id) the layer stacks on. Without it the layer is a base layer.
    type: str
  digest:
    description:
      - Expected C(sha256:) digest of O(src) as it is (compressed) or of its uncompressed
        tar (the C(diff_id)). For archives, also the image id or manifest digest of the
        first image. A mismatch fails and stores nothing.
    type: str
  tag:
    description:
      - Tags (C(NAME[:TAG])) to point at the imported image (the first image of an archive).
      - With O(format=layer), an image config one layer taller than O(parent) is made for
        the tags; the config is derived from content only, so a re-run gives the same image id.
    type: list
    elements: str
    default: []
  max_size:
    description:
      - Refuse a layer whose uncompressed stream exceeds this many bytes (a guard against
        compression bombs). The store is left unchanged.
    type: int
  max_metadata_size:
    description:
      - Largest manifest, index or image config of an archive, in bytes (all of them
        together may take four times this). Beyond it the archive is refused.
    type: int
    default: 16777216
  max_entries:
    description:
      - Most images an archive's manifest or index may list, and most layers an image may
        have, before the archive is refused (a guard against fan-out). The storage driver
        may allow fewer layers (overlay2 mounts at most 125).
    type: int
    default: 1000
  src_timeout:
    description:
      - When O(src) is a FIFO or character device (read as a stream, O(format=layer)
        only), the seconds to wait for data before giving up.
    type: int
    default: 300
notes:
  - O(src) is a regular file or a directory. A FIFO or character device is read as a
    stream only with O(format=layer), bounded by O(max_size) (8 GiB when unset) and
    O(src_timeout); sockets, block devices and streams without O(format=layer) are
    refused before anything is read.
seealso:
  - module: strata.layers.store_info
  - module: strata.layers.image_export
"""

EXAMPLES = r"""
- name: Import a base layer and tag it
  strata.layers.layer_import:
    src: /srv/images/busybox-rootfs.tar.gz
    tag: [busybox:1.36]

- name: Stack a layer on an image
  strata.layers.layer_import:
    src: /srv/images/app-layer.tar.zst
    parent: busybox:1.36
    tag: [acme/app:1.0]

- name: Import everything 'docker save' wrote, verifying the image id
  strata.layers.layer_import:
    src: /srv/images/app.tar
    digest: sha256:0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0

- name: Refuse layers that inflate beyond 2 GiB
  strata.layers.layer_import:
    src: /tmp/untrusted.tar.gz
    max_size: 2147483648
"""

RETURN = r"""
image_id:
  description: Id of the imported image (the first of an archive); for O(format=layer) only with O(tag).
  returned: always
  type: str
  sample: sha256:3c7eec3f596711069118cd00af77c3ae6e583104ce2d9a08b48c8a9e1bb63994
image_ids:
  description: Every image of the archive, in its order.
  returned: always
  type: list
  elements: str
layers:
  description: The layers of the (first) image, bottom to top.
  returned: always
  type: list
  elements: dict
  contains:
    diff_id:
      description: Digest of the uncompressed layer tar.
      type: str
    chain_id:
      description: The layer's chain id (the layer with everything below it).
      type: str
    size:
      description: Bytes of the regular files the layer adds (null in check mode for new layers).
      type: int
    imported:
      description: False where the store already held the layer.
      type: bool
tags:
  description: Tags that point at the imported images.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import (
    FORMATS, layer_import)


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            src=dict(type="path", required=True),
            format=dict(type="str", default="auto", choices=list(FORMATS)),
            parent=dict(type="str"),
            digest=dict(type="str"),
            tag=dict(type="list", elements="str", default=[]),
            max_size=dict(type="int"),
            max_metadata_size=dict(type="int", default=16777216),
            max_entries=dict(type="int", default=1000),
            src_timeout=dict(type="int", default=300),
        ),
        supports_check_mode=True,
    )
    run(module, layer_import)


if __name__ == "__main__":
    main()
