#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: image_push
short_description: Push an image of a layer store to an OCI registry, sending only what it lacks
version_added: 0.1.0
description:
  - Pushes an image of the store at O(data_root) to a registry that speaks the OCI
    distribution protocol (the Docker registry API v2), as C(docker push) and
    C(podman push) do.
  - Layers are compressed deterministically (the same layer gives the same bytes every
    time), and the digest and size of each (layer, compression) are recorded in the store,
    so a re-push compresses nothing. When the registry already has the manifest under the
    tag, the push makes one request and reports C(changed=false).
  - Each blob is asked for first (C(HEAD)); a blob the store knows lives in another
    repository of the same registry (pulled from it or pushed to it) is mounted from there
    instead of uploaded. Small layers are uploaded in one request, large ones in chunks; a
    push that was killed continues the upload where the registry stands.
  - A large layer that no push or pull of this store has compressed before is
    compressed to a spool file under O(data_root) first, so that it too is asked for by
    its digest before it is sent.
  - The config, then the manifest under the tag are sent last, so a failed push never
    moves the tag. The store is only read.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
  - strata.layers.registry
attributes:
  check_mode:
    details: Asks the registry which blobs and which manifest it has and lists the blobs it
      would upload or mount; sends nothing. A layer never pushed before is compressed to
      learn its digest (nothing is recorded).
options:
  name:
    description:
      - The image in the store (C(NAME[:TAG]), an image id or a unique prefix of one).
    type: str
    required: true
  dest:
    description:
      - Where to push, as C(REGISTRY/REPOSITORY[:TAG]) (the tag defaults to C(latest)). The
        registry host (with its port when not the default) is required.
    type: str
    required: true
  compression:
    description:
      - How layers are compressed on the way. C(zstd) needs the C(zstd) program on the
        managed host and registries and clients that accept zstd layers.
    type: str
    choices: [gzip, zstd, none]
    default: gzip
  manifest_format:
    description:
      - C(oci) for an OCI image manifest, C(docker) for a Docker v2 schema 2 manifest (which
        has no zstd layer type).
    type: str
    choices: [oci, docker]
    default: oci
seealso:
  - module: strata.layers.image_pull
  - module: strata.layers.image_export
"""

EXAMPLES = r"""
- name: Push an image (a re-run reports changed=false after one request)
  strata.layers.image_push:
    name: acme/app:1.4
    dest: registry.example.com/acme/app:1.4

- name: Push with the credentials podman login wrote, as a Docker schema 2 manifest
  strata.layers.image_push:
    name: acme/app:1.4
    dest: registry.internal:5000/acme/app:1.4
    auth_file: /run/containers/0/auth.json
    ca_path: /etc/pki/internal-ca.pem
    manifest_format: docker

- name: See which blobs a push would send
  strata.layers.image_push:
    name: acme/app:1.5
    dest: registry.example.com/acme/app:1.5
    username: deploy
    password: "{{ registry_password }}"
  check_mode: true
  register: plan
"""

RETURN = r"""
digest:
  description: Digest of the manifest under the tag (what C(docker push) prints).
  returned: always
  type: str
  sample: sha256:3c7eec3f596711069118cd00af77c3ae6e583104ce2d9a08b48c8a9e1bb63994
image_id:
  description: Id of the image pushed.
  returned: always
  type: str
dest:
  description: The repository and tag pushed to.
  returned: always
  type: str
blobs:
  description: Digests of the blobs (layers and config), by what the push did with them
    (would do, in check mode).
  returned: always
  type: dict
  contains:
    uploaded:
      description: Blobs sent to the registry.
      type: list
      elements: str
    skipped:
      description: Blobs the repository already had.
      type: list
      elements: str
    mounted:
      description: Blobs linked from another repository of the same registry.
      type: list
      elements: str
bytes_sent:
  description: Bytes of blobs and manifest sent to the registry (0 in check mode).
  returned: always
  type: int
compression:
  description: The layer compression used.
  returned: always
  type: str
manifest_format:
  description: The manifest format used.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, registry_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.image_push import image_push


def main() -> None:
    module = AnsibleModule(
        argument_spec=registry_spec(
            name=dict(type="str", required=True),
            dest=dict(type="str", required=True),
            compression=dict(type="str", default="gzip", choices=["gzip", "zstd", "none"]),
            manifest_format=dict(type="str", default="oci", choices=["oci", "docker"]),
        ),
        required_together=[("username", "password")],
        supports_check_mode=True,
    )
    run(module, image_push)


if __name__ == "__main__":
    main()
