# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations


class ModuleDocFragment:
    """The registry settings image_pull and image_push share."""

    DOCUMENTATION = r"""
options:
  insecure:
    description:
      - Talk plain HTTP to the registry (and its mirrors) instead of HTTPS. Only for
        registries on trusted networks; content is still verified against its digests.
      - Credentials travel over plain HTTP only to a registry marked this way.
    type: bool
    default: false
  ca_path:
    description:
      - A PEM file (or a directory of hashed certificates) with the CA certificates that sign
        the registry's TLS certificate, when it is not signed by a CA the host trusts.
    type: path
  username:
    description:
      - User name for the registry (bearer-token or basic authentication, as the registry
        asks). Requires O(password). Takes precedence over O(auth_file); never sent to a
        mirror.
    type: str
  password:
    description:
      - Password (or access token) for O(username). Never returned, logged or shown in
        an error.
    type: str
  auth_file:
    description:
      - A Docker C(config.json) or a containers C(auth.json) (both keep credentials
        under C(auths), as C(docker login) and C(podman login) write them). The entry
        for the registry host (or, in C(auth.json), the longest C(host/repository)
        prefix) is used. Credential helpers (C(credsStore)) are not run.
      - When unset, the first file that exists of C($REGISTRY_AUTH_FILE),
        C(/run/containers/<uid>/auth.json) and C(~/.docker/config.json) on the managed
        host.
    type: path
  timeout:
    description:
      - Seconds to wait for data from the registry (each read) before giving up.
    type: int
    default: 60
  connect_timeout:
    description:
      - Seconds to wait for a connection (and TLS handshake) to the registry.
    type: int
    default: 30
  blob_timeout:
    description:
      - Overall deadline in seconds for each request, a layer upload or download included,
        however steadily the registry sends data. Raise it for very large layers over slow
        links.
    type: int
    default: 3600
notes:
  - Proxies come from C(https_proxy), C(http_proxy) and C(no_proxy) (either case) in
    the module's environment (the play's C(environment) keyword). HTTPS goes through a
    C(CONNECT) tunnel, so the proxy never sees credentials or content.
  - Credentials go only to the registry host, and to its bearer-token realm over HTTPS
    or on the same host; a redirect from HTTPS to plain HTTP is refused, and the
    C(Authorization) header is never sent to another host (such as blob storage).
"""
