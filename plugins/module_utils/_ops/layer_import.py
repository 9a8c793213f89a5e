# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.layer_import``: import a layer tarball, or every image of an archive.

Every option is checked before the store is opened (``src`` there and readable, a
stream read as a layer only, tags, digest, bounds); ``format: auto`` is a file imported
before as a layer, else what ``_archive.classify`` finds.  The job (``_ingest.LayerJob``
or ``ArchiveJob``) then plans (check mode: the reason, under the shared lock) or runs
(under the exclusive lock).
"""
from __future__ import annotations

import os
from typing import Any, Dict

from ansible_collections.strata.layers.plugins.module_utils._archive import (
    MAX_JSON, Limits, classify)
from ansible_collections.strata.layers.plugins.module_utils._compression import (
    STREAM_WAIT, is_stream, open_regular)
from ansible_collections.strata.layers.plugins.module_utils._digest import validate_digest
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput, NotFound
from ansible_collections.strata.layers.plugins.module_utils._imageref import validate_tags
from ansible_collections.strata.layers.plugins.module_utils._ingest import (
    FORMATS, ArchiveJob, LayerJob, NotAnArchive, stat_key)
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def layer_import(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Entry point of the module: returns the result dict (raises StoreError)."""
    src = params["src"]
    fmt = params.get("format") or "auto"
    if fmt not in FORMATS:
        raise InvalidInput("format %r is not one of %s" % (fmt, ", ".join(FORMATS)))
    if not os.path.exists(src):
        raise NotFound("src %s does not exist on this host" % src)
    streamed = is_stream(src)
    if streamed and fmt not in ("layer", "auto"):
        raise InvalidInput("src %s is a FIFO or character device, not an archive file: only "
                           "format: layer reads from a stream" % src)
    if streamed and fmt != "layer":
        raise InvalidInput("src %s is a FIFO or character device: give format: layer to read a "
                           "layer from it (formats are not detected from a stream, and an "
                           "archive must be a file)" % src)
    if not streamed and not os.path.isdir(src):
        os.close(open_regular(src, "src %s" % src))
    tags = validate_tags(params.get("tag") or [])
    digest = params.get("digest")
    if digest:
        validate_digest(digest, "digest")
    max_size = params.get("max_size")
    if max_size is not None and int(max_size) <= 0:
        raise InvalidInput("max_size must be a positive number of bytes")
    limits = archive_limits(params)
    store = Store.from_params(params)
    detected = fmt == "auto"
    if detected:
        # a file imported before as a layer is one: no need to read its headers again
        known = store.exists() and not os.path.isdir(src) and \
            store.source_digests(stat_key(src)) is not None
        fmt = "layer" if known else classify(src, limits)
    if fmt != "layer" and params.get("parent"):
        raise InvalidInput("parent applies to format: layer only (an archive's config names "
                           "its layers)")
    job = LayerJob(store, src, params.get("parent"), digest, tags, max_size) if fmt == "layer" \
        else ArchiveJob(store, src, fmt, digest, tags, max_size, limits)
    if streamed:
        job.stream(float(params.get("src_timeout") or STREAM_WAIT))
    try:
        return _perform(job, store, src, check_mode)
    except NotAnArchive:
        if not detected:
            raise
    # a compressed tar whose first members looked like an archive's (a blobs/ directory,
    # a repositories file) but that holds no archive metadata after all: a layer
    return _perform(LayerJob(store, src, params.get("parent"), digest, tags, max_size),
                    store, src, check_mode)


def _perform(job: Any, store: Store, src: str, check_mode: bool) -> Dict[str, Any]:
    if check_mode:
        with store.read():
            return job.plan()
    with store.write("layer_import of %s" % src):
        return job.run()


def archive_limits(params: Dict[str, Any]) -> Limits:
    """The bounds of an archive's metadata, from ``max_metadata_size`` and ``max_entries``."""
    size = params.get("max_metadata_size") or MAX_JSON
    entries = params.get("max_entries") or Limits.images
    if int(size) <= 0 or int(entries) <= 0:
        raise InvalidInput("max_metadata_size and max_entries must be positive numbers")
    return Limits(json_size=int(size), json_total=4 * int(size), images=int(entries),
                  layers=int(entries))
