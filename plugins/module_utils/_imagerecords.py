# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Image records and the tag map.

``<data_root>/images/<id-hex>/config.json`` holds the config bytes exactly as
imported (the image id is their digest), ``image.json`` what the store adds (when it
was stored, where from, the parent image of a build step).  ``tags.json`` maps
``NAME:TAG`` to image ids and is replaced atomically as a whole.
On-disk layout: docs/design.md, "Layout of a store".
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, read_json, write_file, write_json)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ImageID, chain_ids, hex_of, is_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidReference, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    ImageConfig, parse_config)
from ansible_collections.strata.layers.plugins.module_utils._imageref import (
    hex_prefix, normalize_tag)


@dataclass
class ImageRecord:
    id: ImageID
    config: ImageConfig
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def chain(self) -> List[str]:
        return list(chain_ids(self.config.diff_ids))

    @property
    def top(self) -> Optional[str]:
        chain = self.chain
        return chain[-1] if chain else None


class ImageDB:
    """Image records and the tag map of one store."""

    def __init__(self, data_root: str) -> None:
        self.dir = os.path.join(data_root, "images")
        self.tags_path = os.path.join(data_root, "tags.json")

    def path(self, image_id: str) -> str:
        return os.path.join(self.dir, hex_of(image_id))

    def exists(self, image_id: str) -> bool:
        return os.path.isfile(os.path.join(self.path(image_id), "config.json"))

    def get(self, image_id: str) -> ImageRecord:
        base = self.path(image_id)
        try:
            with open(os.path.join(base, "config.json"), "rb") as handle:
                raw = handle.read()
        except FileNotFoundError as exc:
            raise NotFound("image %s is not in the store" % image_id) from exc
        config = parse_config(raw, base)
        try:
            meta = read_json(os.path.join(base, "image.json"))
        except (FileNotFoundError, ValueError):
            meta = {}
        return ImageRecord(id=ImageID(image_id), config=config, meta=meta)

    def ids(self) -> List[ImageID]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [ImageID("sha256:" + n) for n in sorted(names)
                if not n.startswith(TEMP_PREFIX) and is_digest("sha256:" + n)]

    def all(self) -> List[ImageRecord]:
        return [self.get(i) for i in self.ids() if self.exists(i)]

    @staticmethod
    def write_staged(staged_dir: str, config: ImageConfig, meta: Dict[str, Any]) -> None:
        write_file(os.path.join(staged_dir, "config.json"), config.raw)
        write_json(os.path.join(staged_dir, "image.json"), meta)

    # ---------------------------------------------------------------- tags
    def tags(self) -> Dict[str, ImageID]:
        try:
            data = read_json(self.tags_path)
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise Corrupt("%s is not valid JSON: run strata.layers.store_check with repair"
                          % self.tags_path) from exc
        return {str(k): ImageID(v) for k, v in data.items() if is_digest(v)}

    def write_tags(self, tags: Dict[str, ImageID]) -> None:
        write_json(self.tags_path, dict(sorted(tags.items())))

    def tags_of(self, image_id: str, tags: Optional[Dict[str, ImageID]] = None) -> List[str]:
        tags = self.tags() if tags is None else tags
        return sorted(t for t, i in tags.items() if i == image_id)

    def resolve(self, ref: str, what: str = "image") -> ImageID:
        """Image id for ``NAME[:TAG]``, a full id, or a unique hex prefix (12+)."""
        if not isinstance(ref, str) or not ref:
            raise InvalidReference("%s reference is empty" % what)
        if is_digest(ref) and self.exists(ref):
            return ImageID(ref)
        try:
            tag: Optional[str] = normalize_tag(ref)
        except InvalidReference:
            tag = None
        if tag is not None:
            found = self.tags().get(tag)
            if found is not None and self.exists(found):
                return found
        prefix = hex_prefix(ref)
        if prefix is not None:
            matches = [i for i in self.ids() if i[7:].startswith(prefix)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise InvalidReference("%s reference %r is ambiguous: it matches %s"
                                       % (what, ref, ", ".join(m[7:19] for m in matches)))
        if tag is None and prefix is None:
            raise InvalidReference("%s reference %r is not NAME[:TAG], an image id or a "
                                   "12+ digit id prefix" % (what, ref))
        raise NotFound("%s %r is not in the store (import, build or pull it first)" % (what, ref))
