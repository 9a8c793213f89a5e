#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: image_export
short_description: Write an image of the store as a docker-archive, OCI archive or OCI layout
version_added: 0.1.0
description:
  - Exports one image of the store at O(data_root), like C(docker save) or C(skopeo copy).
  - Layers are re-emitted byte for byte as they were imported, from the store's header
    records and the driver's files; each is verified against its C(diff_id) while written.
  - The output is what C(docker load), C(podman load) and C(skopeo) accept. Archives are
    written beside O(dest) and renamed into place; exporting the same image again is
    C(changed=false) when O(dest) already holds it.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
options:
  image:
    description:
      - Image reference (C(NAME[:TAG]), id or 12+ digit id prefix), or a list of them. Saved
        by tag, the archive carries that tag.
      - With several images, one archive holds them all and each layer they share once, as
        C(docker save a b c) writes it; an image named by two tags is one entry with both.
    type: list
    elements: str
    required: true
  dest:
    description: Absolute path of the archive file, or of the directory for V(oci-layout).
    type: path
    required: true
  omit_layers:
    description:
      - Chain ids of layers the receiving store already holds. The manifests still name
        them, but their blobs are left out, so the output is only what the receiver lacks;
        M(strata.layers.layer_import) of it succeeds only into a store that holds them
        (the C(strata.layers.image_distribute) role does so).
      - Such an output is not a complete image for other tools (C(docker load), C(skopeo)).
    type: list
    elements: str
    default: []
  format:
    description: What to write.
    type: str
    default: docker-archive
    choices: [docker-archive, oci-archive, oci-layout]
"""

EXAMPLES = r"""
- name: docker save acme/app:1.0 > /srv/out/app.tar
  strata.layers.image_export:
    image: acme/app:1.0
    dest: /srv/out/app.tar

- name: An OCI layout that skopeo can push
  strata.layers.image_export:
    image: acme/app:1.0
    dest: /srv/out/app-layout
    format: oci-layout
"""

RETURN = r"""
image_id:
  description: Id of the exported image (the first one, for several).
  returned: always
  type: str
image_ids:
  description: Ids of every exported image, in the order first named.
  returned: always
  type: list
  elements: str
images:
  description: Every exported image with its tags and layers.
  returned: always
  type: list
  elements: dict
dest:
  description: Where it was written.
  returned: always
  type: str
layers:
  description: Diff ids of the (first) image's layers, bottom to top (also their blob digests
    in the output).
  returned: always
  type: list
  elements: str
omitted:
  description: Chain ids of the layers whose blobs were left out (O(omit_layers)).
  returned: always
  type: list
  elements: str
size:
  description: Bytes of the blobs the output holds (layers, configs, manifests).
  returned: always
  type: int
tags:
  description: Tags the output carries.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.image_export import (
    FORMATS, image_export)


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            image=dict(type="list", elements="str", required=True),
            dest=dict(type="path", required=True),
            format=dict(type="str", default="docker-archive", choices=list(FORMATS)),
            omit_layers=dict(type="list", elements="str", default=[]),
        ),
        supports_check_mode=True,
    )
    run(module, image_export)


if __name__ == "__main__":
    main()
