# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""An image's history as ``docker history`` shows it: the config's history entries,
each non-empty one paired with the image's next layer and its size."""
from __future__ import annotations

from typing import Any, Dict, List

from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord


def history_of(image: ImageRecord, layers: Dict[ChainID, LayerRecord]) -> List[Dict[str, Any]]:
    """``docker history`` rows, oldest first: each non-empty entry takes the next layer."""
    chain = [ChainID(c) for c in image.chain]
    rows = []
    index = 0
    for entry in image.config.history:
        empty = bool(entry.get("empty_layer"))
        size = 0
        if not empty and index < len(chain):
            record = layers.get(chain[index])
            size = record.size if record else 0
            index += 1
        rows.append({"created": entry.get("created", ""), "created_by": entry.get("created_by", ""),
                     "comment": entry.get("comment", ""), "empty_layer": empty, "size": size})
    return rows
