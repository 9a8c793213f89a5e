# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Layer records: ``<data_root>/layers/<chain-hex>/{layer.json,tar-split.gz}``.

A record is driver independent: it names the layer (chain id, diff id, parent), its
sizes and its header record.  The files live with the active driver under the same
chain id.  A record only ever appears by the rename of a complete staged directory,
after the driver's data was synced: a visible record means a complete layer.
On-disk layout: docs/design.md, "Layout of a store".
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, read_json, write_json)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, DiffID, hex_of, is_digest, validate_digest)
from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt, NotFound

RECORD = "layer.json"
SPLIT = "tar-split.gz"


@dataclass
class LayerRecord:
    """What the store knows about one layer (its files are the driver's business)."""

    chain_id: ChainID
    diff_id: DiffID
    parent: Optional[ChainID]
    size: int
    tar_size: int
    depth: int
    created: str
    mtime_max: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict, where: str) -> "LayerRecord":
        try:
            record = cls(
                chain_id=ChainID(validate_digest(data["chain_id"], "chain_id")),
                diff_id=DiffID(validate_digest(data["diff_id"], "diff_id")),
                parent=ChainID(validate_digest(data["parent"], "parent")) if data.get("parent")
                else None,
                size=int(data["size"]), tar_size=int(data["tar_size"]), depth=int(data["depth"]),
                created=str(data.get("created", "")), mtime_max=int(data.get("mtime_max", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise Corrupt("layer record %s is damaged (%s): run strata.layers.store_check"
                          % (where, exc)) from exc
        return record


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def iso(ns: int) -> str:
    """A time in nanoseconds since the epoch, as image configs write times."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(ns, 0) // 1_000_000_000))


class LayerDB:
    """The layer records of one store."""

    def __init__(self, data_root: str) -> None:
        self.dir = os.path.join(data_root, "layers")

    def path(self, chain: ChainID) -> str:
        return os.path.join(self.dir, hex_of(chain))

    def split_path(self, chain: ChainID) -> str:
        return os.path.join(self.path(chain), SPLIT)

    def exists(self, chain: ChainID) -> bool:
        return os.path.isfile(os.path.join(self.path(chain), RECORD))

    def get(self, chain: ChainID) -> LayerRecord:
        path = os.path.join(self.path(chain), RECORD)
        try:
            data = read_json(path)
        except FileNotFoundError as exc:
            raise NotFound("layer %s is not in the store" % chain) from exc
        except ValueError as exc:
            raise Corrupt("layer record %s is not valid JSON: run strata.layers.store_check"
                          % path) from exc
        return LayerRecord.from_json(data, path)

    def find(self, chain: ChainID) -> Optional[LayerRecord]:
        return self.get(chain) if self.exists(chain) else None

    def chains(self) -> List[ChainID]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        return [ChainID("sha256:" + n) for n in sorted(names)
                if not n.startswith(TEMP_PREFIX) and is_digest("sha256:" + n)]

    def all(self) -> Iterator[LayerRecord]:
        for chain in self.chains():
            record = self.find(chain)
            if record is not None:
                yield record

    def by_chain(self) -> Dict[ChainID, LayerRecord]:
        return {r.chain_id: r for r in self.all()}

    def stack(self, top: Optional[ChainID]) -> List[LayerRecord]:
        """The records from the bottom layer up to ``top``."""
        out: List[LayerRecord] = []
        while top is not None:
            record = self.get(top)
            out.append(record)
            top = record.parent
        out.reverse()
        return out

    @staticmethod
    def write_staged(staged_dir: str, record: LayerRecord) -> None:
        write_json(os.path.join(staged_dir, RECORD), record.to_json())
