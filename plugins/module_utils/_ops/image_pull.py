# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.image_pull``: pull an image from a registry into the store.

The reference, platform, tags and ``max_size`` are checked and the registry settings
read before anything is asked of a registry; then one ``_pull.PullJob`` runs, whose
reason idiom asks the cheapest question first (see ``_pull``).
"""
from __future__ import annotations

from typing import Any, Dict, List

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import parse_platform
from ansible_collections.strata.layers.plugins.module_utils._imageref import validate_tags
from ansible_collections.strata.layers.plugins.module_utils._pull import PullJob, Sources
from ansible_collections.strata.layers.plugins.module_utils._registry import parse_reference
from ansible_collections.strata.layers.plugins.module_utils._regsettings import RegistrySettings
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def image_pull(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Entry point of the module: returns the result dict (raises StoreError)."""
    reference = parse_reference(params["name"])
    wanted = parse_platform(params.get("platform"))
    tags: List[str] = []
    for tag in ([reference.tag_name()] if reference.tag_name() else []) + \
            validate_tags(params.get("tag") or []):
        if tag not in tags:
            tags.append(tag)
    max_size = params.get("max_size")
    if max_size is not None and int(max_size) <= 0:
        raise InvalidInput("max_size must be a positive number of bytes")
    settings = RegistrySettings.from_params(params, mirrors=True)
    store = Store.from_params(params)
    registry = Sources(reference, settings)
    job = PullJob(store, registry, wanted, bool(params.get("platform")), tags, max_size)
    return job.run(check_mode)
