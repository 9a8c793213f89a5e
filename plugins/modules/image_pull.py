#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: image_pull
short_description: Pull an image from an OCI registry into a layer store, layer by layer
version_added: 0.1.0
description:
  - Pulls an image from a registry that speaks the OCI distribution protocol (the Docker
    registry API v2) into the store at O(data_root), as C(docker pull) does.
  - OCI and Docker schema 2 manifests are understood; an index (a multi-platform image) is
    resolved to the image for O(platform). Layers may be plain, gzip or zstd tars.
  - Each layer is stored once by content. A layer the store already holds, from this image or
    any other, is not downloaded; missing layers download in parallel and are applied in order,
    each streamed straight into the store and verified (compressed digest, size and
    C(diff_id)) before it is kept.
  - A second pull of an image whose manifest has not changed costs one manifest request and
    reports C(changed=false). A pull by digest of an image pulled before makes no request.
  - An interrupted or failed pull resumes where it stopped, since the layers it completed (each
    verified) are kept, unlike a failed C(layer_import), which leaves the store as it was;
    C(strata.layers.store_prune) removes them if the image is abandoned. A failed pull
    never leaves a tag pointing at an incomplete image.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
  - strata.layers.registry
attributes:
  check_mode:
    details: Asks the registry for the manifest and the config (no layers) and reports which
      layers would be downloaded; writes nothing.
options:
  name:
    description:
      - The image, as C(REGISTRY/REPOSITORY[:TAG]) or C(REGISTRY/REPOSITORY@sha256:DIGEST).
        The tag defaults to C(latest).
      - The registry host (with its port when not the default) is required; no default
        registry is assumed. C(docker.io/...) names reach Docker Hub.
      - A pull by tag tags the image with O(name) in the store; a pull by digest does not.
    type: str
    required: true
  tag:
    description:
      - More tags (C(NAME[:TAG])) to point at the pulled image.
    type: list
    elements: str
    default: []
  platform:
    description:
      - The platform to pull from a multi-platform image, as C(OS/ARCH[/VARIANT])
        (C(linux/amd64), C(linux/arm64), C(linux/arm/v7)).
      - Defaults to the managed host's platform. When the image is a single-platform image
        and this option is set, the image must be for that platform.
      - Compared as Docker and Podman compare it (containerd's rules), best match first,
        then in the index's order. C(linux/arm) is C(linux/arm/v7), C(armhf) and
        C(armel) are C(arm/v7) and C(arm/v6), and C(linux/arm64/v8) is C(linux/arm64).
        An C(arm/v7) host also takes C(v6) and C(v5) images. An C(arm64) host also takes
        32-bit C(arm) images (C(v8) down to C(v5)). An C(amd64/vN) host also takes lower
        levels, then C(386). A higher level or variant than asked for is never taken
        (the managed host's own platform is plain C(amd64), with no level read from its
        CPU). An index entry that names no platform is taken only when nothing matches.
    type: str
  mirrors:
    description:
      - Mirrors of the registry, as C(HOST[:PORT]), tried in order before the registry
        itself (as C(registries.conf) mirrors are). A mirror that lacks the image, refuses
        access or cannot be reached is passed over; the image is tagged with O(name)
        whichever source served it.
      - A mirror gets credentials only from the auth file, never O(username)/O(password).
    type: list
    elements: str
    default: []
  max_size:
    description:
      - Refuse a layer whose uncompressed stream exceeds this many bytes (a guard against
        compression bombs). Layers already completed are kept; the refused one is not.
    type: int
notes:
  - The C(Authorization) header is never sent to another host than the registry, so a
    registry's credentials do not reach the blob storage it redirects to.
seealso:
  - module: strata.layers.layer_import
  - module: strata.layers.store_info
"""

EXAMPLES = r"""
- name: Pull an image (a re-run reports changed=false after one manifest request)
  strata.layers.image_pull:
    name: registry.example.com/acme/app:1.4

- name: Pull by digest from a registry with a private CA, and tag the result
  strata.layers.image_pull:
    name: registry.internal:5000/base/debian@sha256:3c7eec3f596711069118cd00af77c3ae6e583104ce2d9a08b48c8a9e1bb63994
    ca_path: /etc/pki/internal-ca.pem
    tag: [debian:bookworm]

- name: Pull the arm64 image of a multi-platform image, with credentials
  strata.layers.image_pull:
    name: registry.example.com/acme/agent:2
    platform: linux/arm64
    username: deploy
    password: "{{ registry_password }}"

- name: Through a mirror first, with the credentials docker login wrote, behind a proxy
  strata.layers.image_pull:
    name: registry.example.com/acme/app:1.4
    mirrors: [mirror.internal:5000]
    auth_file: /root/.docker/config.json
  environment:
    https_proxy: http://proxy.internal:3128
    no_proxy: mirror.internal

- name: A registry on a trusted network that speaks plain HTTP
  strata.layers.image_pull:
    name: 10.0.0.5:5000/tools/busybox:1.36
    insecure: true
"""

RETURN = r"""
image_id:
  description: Id of the pulled image (the digest of its config).
  returned: always
  type: str
  sample: sha256:3c7eec3f596711069118cd00af77c3ae6e583104ce2d9a08b48c8a9e1bb63994
image_ids:
  description: The pulled image's id, as a list (as M(strata.layers.layer_import) returns it).
  returned: always
  type: list
  elements: str
layers:
  description: The layers of the image, bottom to top.
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
      description: Bytes of the regular files the layer adds (null in check mode for layers
        not in the store yet).
      type: int
    imported:
      description: True where the layer was downloaded by this run (would be, in check mode);
        false where the store already held it.
      type: bool
tags:
  description: Tags that point at the pulled image.
  returned: always
  type: list
  elements: str
digest:
  description: The digest O(name) resolved to at the registry (of the index, for a
    multi-platform image), as C(docker pull) prints it.
  returned: always
  type: str
manifest_digest:
  description: The digest of the image manifest pulled (the chosen platform's).
  returned: always
  type: str
platform:
  description: The platform the image was chosen for.
  returned: always
  type: str
  sample: linux/amd64
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, registry_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.image_pull import image_pull


def main() -> None:
    module = AnsibleModule(
        argument_spec=registry_spec(
            name=dict(type="str", required=True),
            tag=dict(type="list", elements="str", default=[]),
            platform=dict(type="str"),
            mirrors=dict(type="list", elements="str", default=[]),
            max_size=dict(type="int"),
        ),
        required_together=[("username", "password")],
        supports_check_mode=True,
    )
    run(module, image_pull)


if __name__ == "__main__":
    main()
