# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image references: ``NAME[:TAG]`` checked and normalized, image id prefixes.

Names and tags follow the distribution reference grammar; Docker Hub names are kept in
the familiar form the Docker CLI shows (``busybox``, ``acme/app``).  Pure functions on
strings: no file, no store.  A reference with a digest (``NAME@sha256:...``) is the
registry's (``_registry.Reference``); the store's tags never carry one.
"""
from __future__ import annotations

import re
from typing import List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, InvalidReference)

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*" \
          r"|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_NAME_RE = re.compile(r"\A(?:%s/)?%s(?:/%s)*\Z" % (_DOMAIN, _COMPONENT, _COMPONENT))
_TAG_RE = re.compile(r"\A[\w][\w.-]{0,127}\Z", re.ASCII)
_HEX_PREFIX_RE = re.compile(r"\A(?:sha256:)?([0-9a-f]{12,64})\Z")


def split_reference(ref: str) -> Tuple[str, str]:
    """``NAME[:TAG]`` -> (name, tag), ``latest`` when omitted; validated."""
    if not isinstance(ref, str) or not ref or "@" in ref:
        raise InvalidReference("image reference %r is not NAME[:TAG]" % (ref,))
    name, tag = ref, "latest"
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:
        name, tag = ref[:colon], ref[colon + 1:]
    if not _NAME_RE.match(name) or len(name) > 255:
        raise InvalidReference("image name %r is not valid: lowercase letters, digits and "
                               "separators (. _ -), optionally a registry host first" % name)
    if not _TAG_RE.match(tag):
        raise InvalidReference("tag %r of %r is not valid (letters, digits, _ . -; at most 128)"
                               % (tag, ref))
    return name, tag


def familiar(name: str) -> str:
    """Docker Hub names in the short form the Docker CLI shows and accepts
    (``docker.io/library/busybox`` is ``busybox``, ``docker.io/acme/app`` is ``acme/app``)."""
    for hub in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if name.startswith(hub):
            name = name[len(hub):]
            break
    if name.startswith("library/") and name.count("/") == 1:
        name = name[len("library/"):]
    return name


def normalize_tag(ref: str) -> str:
    name, tag = split_reference(ref)
    return "%s:%s" % (familiar(name), tag)


def hex_prefix(ref: str) -> Optional[str]:
    match = _HEX_PREFIX_RE.match(ref or "")
    return match.group(1) if match else None


def validate_tags(tags: List[str]) -> List[str]:
    out = []
    for tag in tags or []:
        if not isinstance(tag, str):
            raise InvalidInput("tag %r is not a string" % (tag,))
        out.append(normalize_tag(tag))
    return out
