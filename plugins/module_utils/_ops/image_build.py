# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.image_build``: build an image from a Dockerfile, a YAML spec or a list
of instructions (the build itself: ``_builder``).

Every spec error and every RUN option is checked before the store is opened.  Check
mode walks the steps against the build cache without running any (``changed`` when a
step would run or a tag move); an empty store in check mode lists the steps only.  The
result's ``history`` is ``docker history`` of the image built, each row saying whether
this build reused it from the cache.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _dockerfile as dockerfile
from ansible_collections.strata.layers.plugins.module_utils._buildcontext import read_build_file
from ansible_collections.strata.layers.plugins.module_utils._builder import (
    BuildResult, Builder)
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._dockerfile import Spec
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._history import history_of
from ansible_collections.strata.layers.plugins.module_utils._imageref import validate_tags
from ansible_collections.strata.layers.plugins.module_utils._runmounts import (
    MountError, network_mode, secret_sources)
from ansible_collections.strata.layers.plugins.module_utils._runsetup import RunOptions
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def image_build(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Entry point of the module (see the module docstring)."""
    tags = validate_tags(params.get("tag") or [])
    context = params.get("context")
    if context and not os.path.isdir(context):
        raise NotFound("context %s is not a directory on this host" % context)
    _spec(params)   # every spec error, before the store is even opened
    options = run_options(params)
    store = Store.from_params(params)
    opener = store.read() if check_mode else store.write("image_build")
    with opener:
        spec, source = _spec(params, _base_config(store) if store.exists() else None)
        if check_mode and not store.exists():
            return {"changed": True, "image_id": None, "tags": tags, "layers": [],
                    "history": [{"created_by": i.history("?"), "size": 0,
                                 "empty_layer": not i.makes_layer, "cached": False}
                                for s in spec.needed_stages() for i in s.instructions]}
        result = Builder(store, spec, context, bool(params.get("no_cache")), check_mode,
                         source, options).build()
        moved: List[str] = []
        if result.image_id and not check_mode:
            moved = store.tag(result.image_id, tags)
        elif result.image_id:
            current = store.images.tags()
            moved = [t for t in tags if current.get(t) != result.image_id]
        return {"changed": result.ran > 0 or bool(moved) or result.image_id is None,
                "image_id": result.image_id, "tags": tags, "layers": result.layers,
                "history": _history_rows(store, result)}


def _history_rows(store: Store, result: BuildResult) -> List[Dict[str, Any]]:
    """``docker history`` rows of the result (sizes of inherited layers included), with
    ``cached`` telling which steps of this build were reused."""
    rows = describe(result)
    if result.image_id is None:
        return rows
    image = store.images.get(result.image_id)
    layers = {ChainID(c): store.layers.get(ChainID(c)) for c in image.chain}
    full = history_of(image, layers)
    for row, mine in zip(full, rows):
        row["cached"] = mine["cached"]
    return [{k: row[k] for k in ("created_by", "size", "empty_layer", "cached")} for row in full]


def describe(result: BuildResult) -> List[Dict[str, Any]]:
    return [{"created_by": s.created_by, "size": s.size, "empty_layer": s.empty_layer,
             "cached": s.cached} for s in result.history]


def _spec(params: Dict[str, Any], base_config: Any = None) -> Tuple[Spec, str]:
    build_args = {str(k): "" if v is None else str(v)
                  for k, v in (params.get("build_args") or {}).items()}
    target = params.get("target")
    if params.get("instructions") is not None:
        return dockerfile.from_instructions(params["instructions"], build_args, target,
                                            base_config), "instructions"
    if params.get("spec") is not None:
        return dockerfile.parse(params["spec"], build_args, target, "spec",
                                base_config), "spec"
    context = params.get("context")
    if not context:
        raise InvalidInput("give context (with a Dockerfile in it), spec or instructions")
    relative = params.get("dockerfile") or "Dockerfile"
    path = os.path.join(context, relative)
    text = read_build_file(context, relative, "the Dockerfile %s" % path)
    if text is None:
        raise NotFound("cannot read the Dockerfile %s: no such file in the context (a "
                       "symlink is resolved inside the context, as every context path)" % path)
    name = os.path.basename(path)
    return dockerfile.parse(text, build_args, target, name, base_config), name


def _base_config(store: Store) -> Any:
    def lookup(ref: str) -> Optional[Dict[str, Any]]:
        try:
            image = store.images.get(store.images.resolve(ref))
        except StoreError:
            return None
        return json.loads(image.config.raw).get("config") or {}
    return lookup


def run_options(params: Dict[str, Any]) -> RunOptions:
    """The options RUN steps read, checked before anything is built."""
    try:
        network = network_mode(params.get("network") or "default")
        found = secret_sources(params.get("secrets"))
    except MountError as exc:
        raise InvalidInput(str(exc).replace("--network", "network")) from None
    timeout = params.get("step_timeout")
    if timeout is not None and float(timeout) <= 0:
        raise InvalidInput("step_timeout must be a positive number of seconds, not %s" % timeout)
    return RunOptions(network=network, secrets=found, ssh=params.get("ssh") or None,
                      step_timeout=None if timeout is None else float(timeout),
                      user_namespaces=bool(params.get("allow_user_namespaces")))
