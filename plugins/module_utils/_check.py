# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Verifying a whole store, and repairing what can be repaired safely (``store_check``'s
entry point is ``_ops/store_check.py``).

The check is a driver (``Check.run``) over one small function per kind of finding.
It reads every record once, one at a time, and verifies every layer's content by
re-emitting its tar from the header record and the driver's files (streamed) and
comparing it with the layer's diff_id and tar size, and every layer's metadata (type,
mode, owner, link target, device, file capabilities, the set of entries) with the
headers of that stream (``_verify``).

Runs, and the locks they take:

1. the check runs under the shared lock (readers go on; writers wait), and writes
   nothing: this is all that happens without ``repair`` and in check mode;
2. with ``repair`` and something to repair, the store is opened for writing (the
   exclusive lock; opening settles the incomplete marks and sweeps staging debris,
   reported as repairs), checked again (only the layers found corrupt are
   re-verified), and each finding with a safe repair is repaired; a repair can
   reveal the next one (a quarantined image leaves its tags dangling), so this goes
   round until nothing more is repairable (three rounds at most);
3. a last check says what is still wrong.

Repairs never make things worse: they remove only what provably has no valid
referrer (driver directories without a record, links no layer owns, leftovers,
dangling tags, bad cache entries), re-create what is derived (overlay ``l/`` links,
``link`` and ``lower`` files), and move damaged records aside into
``<data_root>/quarantine/`` instead of deleting them: a layer's record and every
driver's copy of its files (data before record, so a crash between leaves a record
with missing data, which the next repair moves aside too), an image record, a
container record with its writable layer, a tags.json that does not parse.  An image
that lost a layer and a container that lost its image are reported, never removed.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, makedirs, read_json, rename_durable, write_json)
from ansible_collections.strata.layers.plugins.module_utils._containers import (
    ContainerDB, ContainerRecord, is_mounted, read_record, status)
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, ImageID, chain_id, chain_ids, hex_of, is_digest, sha256_bytes)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Busy, Corrupt, InvalidInput, InvalidReference, NotFound, StoreError)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mounts_below
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import parse_config
from ansible_collections.strata.layers.plugins.module_utils._imageref import normalize_tag
from ansible_collections.strata.layers.plugins.module_utils._layers import RECORD, LayerRecord
from ansible_collections.strata.layers.plugins.module_utils._safepath import Beneath, NotBeneath
from ansible_collections.strata.layers.plugins.module_utils._store import References, Store
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import file_entries
from ansible_collections.strata.layers.plugins.module_utils._verify import summary
from ansible_collections.strata.layers.plugins.module_utils._verify import (
    verify_layer as verify_files)
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Driver

QUARANTINE = "quarantine"
REPAIR_ROUNDS = 3
_HINTS = 5

# The stable finding kinds (documented in the module): what each means.
KINDS: Dict[str, str] = {
    "corrupt-layer": "a layer's files no longer re-emit to its diff_id, or differ from its "
                     "headers (mode, owner, link target, device, capabilities, entries)",
    "bad-layer-record": "a layer record that does not parse, or names another chain id",
    "missing-layer-data": "a layer record whose files the active driver does not hold",
    "missing-parent": "a layer whose parent layer is not in the store",
    "corrupt-config": "an image config that does not parse or hash to its id",
    "missing-image-layer": "an image that needs a layer the store does not hold",
    "corrupt-tags": "tags.json does not parse",
    "dangling-tag": "a tag that points at no image (or is not a valid tag)",
    "bad-container-record": "a container record that does not parse",
    "missing-container-image": "a container whose image is not in the store",
    "missing-container-data": "a container whose writable layer the driver does not hold",
    "orphan-layer-data": "a driver's layer directory without a layer record",
    "orphan-container-data": "a driver's container directory without a container record",
    "dangling-link": "an overlay l/ entry that points nowhere or at the wrong layer",
    "missing-link": "an overlay l/ link, link file, lower file or empty/ that is missing or wrong",
    "leftover": "staging debris of an interrupted run (.tmp-* names, tmp/ entries, mounts)",
    "incomplete": "a mark of a mutation a crash interrupted",
    "bad-cache-entry": "a distribution/ or sources/ entry that is not valid",
    "not-a-subvolume": "a btrfs layer, init or container root that is a plain directory "
                       "(the store was copied without its subvolumes)",
}

# The order repairs run in: moving things aside first, derived things re-made last.
_FIX_ORDER = ("quarantine-layer", "quarantine-image", "quarantine-container",
              "quarantine-tags", "untag", "remove", "relayout", "subvolume")
PLANS = {
    "quarantine-layer": "would move the record and the driver data to quarantine/",
    "quarantine-image": "would move the image record to quarantine/",
    "quarantine-container": "would move the record and the writable layer to quarantine/",
    "quarantine-tags": "would move tags.json to quarantine/",
    "untag": "would remove the tag",
    "remove": "would remove it",
    "relayout": "would re-create or remove it (derived from the layer records)",
    "subvolume": "would make it a subvolume with the same contents",
    "settle": "would be settled (rolled back or finished) on opening the store for writing",
}


@dataclass
class Finding:
    """One problem: ``fix`` names its repair (None: repair leaves it, the detail says
    what to do), ``target`` is what the repair acts on."""

    kind: str
    object: str
    detail: str
    fix: Optional[str] = None
    target: Any = None

    def as_dict(self) -> Dict[str, str]:
        return {"kind": self.kind, "object": self.object, "detail": self.detail}

    @property
    def key(self) -> Tuple[str, str]:
        return self.kind, self.object


@dataclass
class Survey:
    """What one check pass learned so far (one record in memory at a time, plus
    each layer's parent and each image's chain)."""

    store: Store
    driver: Driver
    verify: Optional[Set[ChainID]]
    layers: Dict[ChainID, LayerRecord] = field(default_factory=dict)
    with_data: Set[ChainID] = field(default_factory=set)
    damaged: Set[ChainID] = field(default_factory=set)
    unsound: Set[ChainID] = field(default_factory=set)
    images: Dict[ImageID, List[ChainID]] = field(default_factory=dict)
    containers: Set[str] = field(default_factory=set)
    verified: Dict[str, int] = field(default_factory=lambda: {"layers": 0, "bytes": 0})

    def rel(self, path: str) -> str:
        return os.path.relpath(path, self.store.root)

    def listdir(self, *parts: str) -> List[str]:
        try:
            return sorted(os.listdir(os.path.join(self.store.root, *parts)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def quarantined(self, name: str) -> Optional[str]:
        found = [n for n in self.listdir(QUARANTINE) if n.startswith(name + "-")]
        return os.path.join(QUARANTINE, found[-1]) if found else None


# ---------------------------------------------------------------------- the check

def check(store: Store, verify: Optional[Set[ChainID]] = None
          ) -> Tuple[Survey, List[Finding]]:
    """Every finding, in a stable order; ``verify`` limits content verification to
    those layers (None: every layer)."""
    survey = Survey(store=store, driver=store.driver, verify=verify)
    findings: List[Finding] = []
    for step in STEPS:
        findings.extend(step(survey))
    return survey, findings


def check_marks(s: Survey) -> Iterator[Finding]:
    for name in s.store.marks.pending():
        path = os.path.join(s.store.marks.dir, name)
        try:
            data = read_json(path)
            what = "%s (committed when %s exists)" % (data.get("op"), data.get("record")) \
                if isinstance(data, dict) else "an unknown operation"
        except (OSError, ValueError):
            what = "an operation whose mark was torn by the crash itself"
        yield Finding("incomplete", s.rel(path), "%s was interrupted; the next run that opens "
                      "the store for writing (any change, or store_check with repair) rolls it "
                      "back or finishes it" % what, "settle")


def check_layer_records(s: Survey) -> Iterator[Finding]:
    for name in s.listdir("layers"):
        if not name.startswith(TEMP_PREFIX):
            finding = _layer_record(s, name)
            if finding is not None:
                yield finding


def _layer_record(s: Survey, name: str) -> Optional[Finding]:
    path = os.path.join(s.store.layers.dir, name)
    problem, record = _read_layer_record(path, name)
    if record is None:
        if is_digest("sha256:" + name):
            s.damaged.add(ChainID("sha256:" + name))
        return Finding("bad-layer-record", _layer_object(name), "%s: %s; repair moves it to "
                       "quarantine/, then re-import the images that need it" % (s.rel(path),
                                                                                problem),
                       "quarantine-layer", name)
    chain = record.chain_id
    s.layers[chain] = record
    if not os.path.isdir(s.driver.layer_files(chain)):
        return Finding("missing-layer-data", chain, "the %s driver holds no files for this layer "
                       "(%s is missing); repair moves its record to quarantine/, then re-import "
                       "the images that need it" % (s.driver.name, s.rel(s.driver.layer_files(
                           chain))), "quarantine-layer", name)
    s.with_data.add(chain)
    return None


def _layer_object(name: str) -> str:
    return "sha256:" + name if is_digest("sha256:" + name) else os.path.join("layers", name)


def _read_layer_record(path: str, name: str) -> Tuple[str, Optional[LayerRecord]]:
    """(what is wrong, None) or ("", the record)."""
    if not is_digest("sha256:" + name):
        return "the name is not a chain id", None
    try:
        data = read_json(os.path.join(path, RECORD))
        record = LayerRecord.from_json(data, path) if isinstance(data, dict) else None
    except FileNotFoundError:
        return "%s is missing" % RECORD, None
    except (OSError, ValueError, StoreError) as exc:
        return "%s cannot be read (%s)" % (RECORD, exc), None
    if record is None:
        return "%s is not a JSON object" % RECORD, None
    expected = chain_id(record.parent, record.diff_id)
    if record.chain_id != "sha256:" + name or expected != record.chain_id:
        return "it names chain id %s, but its parent and diff_id give %s" % (
            record.chain_id, expected), None
    if not os.path.isfile(os.path.join(path, "tar-split.gz")):
        return "its header record tar-split.gz is missing (it cannot be verified or " \
               "exported)", None
    return "", record


def check_parents(s: Survey) -> Iterator[Finding]:
    for chain, record in sorted(s.layers.items()):
        if record.parent is not None and record.parent not in s.layers:
            yield Finding("missing-parent", chain, "its parent layer %s is not in the store (or "
                          "its record is damaged): re-import an image that contains it"
                          % record.parent)


def verify_layers(s: Survey) -> Iterator[Finding]:
    # parents first: a full-copy layer is compared with its parent only if that is sound
    found = []
    for chain in sorted(s.with_data, key=lambda c: (s.layers[c].depth, c)):
        if s.verify is None or chain in s.verify:
            finding = verify_layer(s, s.layers[chain])
            if finding is not None:
                s.unsound.add(chain)
                found.append(finding)
    yield from sorted(found, key=lambda f: f.object)


def verify_layer(s: Survey, record: LayerRecord) -> Optional[Finding]:
    """Re-emit the layer's tar (streamed, nothing kept) and compare it with its record:
    the content with the diff_id, and every entry on disk with its header (``_verify``)."""
    chain = record.chain_id
    files = s.driver.layer_files(chain)
    parent = s.driver.layer_files(record.parent) if record.parent else None
    sound = record.parent is None or (record.parent in s.with_data and
                                      record.parent not in s.unsound)
    try:
        digest, size, problems = verify_files(s.store.layers.split_path(chain), files,
                                              s.driver.whiteouts, parent, sound)
    except (Corrupt, InvalidInput) as exc:
        if exc.details.get("member") is None:
            return Finding("bad-layer-record", chain, "%s; repair moves it to quarantine/, then "
                           "re-import the images that need it" % exc, "quarantine-layer",
                           hex_of(chain))
        return _corrupt(chain, str(exc))
    except OSError as exc:
        return _corrupt(chain, "its files cannot be read (%s)" % exc)
    s.verified["layers"] += 1
    s.verified["bytes"] += size
    if digest != record.diff_id or size != record.tar_size:
        return _corrupt(chain, "its files re-emit as %s (%d bytes), not as its diff_id %s (%d "
                        "bytes); %s" % (digest, size, record.diff_id, record.tar_size,
                                        _changed_files(files, s.store.layers.split_path(chain),
                                                       record.mtime_max)))
    if problems:
        return _corrupt(chain, "its files differ from the headers it was imported with: %s"
                        % summary(problems))
    return None


def _corrupt(chain: ChainID, why: str) -> Finding:
    return Finding("corrupt-layer", chain, "%s. Repair moves the layer to quarantine/ (never "
                   "deletes it); then re-import the images that use it (layer_import of their "
                   "archive, or image_pull) to restore it" % why.rstrip("."),
                   "quarantine-layer", hex_of(chain))


def _changed_files(root: str, split_path: str, mtime_max: int) -> str:
    """Which files were modified after the import (the applier set every mtime from the
    tar, so a later write shows as a newer one); damage below the filesystem shows none."""
    if not mtime_max:
        return "the record does not say when its files were written"
    changed = []
    with Beneath(root) as tree:
        for name, _size in file_entries(split_path):
            try:
                fd = tree.open_file(name)
            except (OSError, NotBeneath):
                continue
            try:
                if os.fstat(fd).st_mtime_ns > mtime_max:
                    changed.append(name.decode("utf-8", "backslashreplace"))
            finally:
                os.close(fd)
    if not changed:
        return "no file was modified after the import: the damage is below the filesystem " \
               "(disk or memory errors)"
    more = " and %d more" % (len(changed) - _HINTS) if len(changed) > _HINTS else ""
    return "modified after the import: %s%s" % (", ".join(changed[:_HINTS]), more)


def check_images(s: Survey) -> Iterator[Finding]:
    for name in s.listdir("images"):
        if not name.startswith(TEMP_PREFIX):
            yield from _check_image(s, name)


def _check_image(s: Survey, name: str) -> Iterator[Finding]:
    path = os.path.join(s.store.images.dir, name)
    problem, chain = _read_image(path, name)
    obj = "sha256:" + name if is_digest("sha256:" + name) else s.rel(path)
    if chain is None:
        yield Finding("corrupt-config", obj, "%s; repair moves the image record to quarantine/ "
                      "(re-import the image to restore it)" % problem, "quarantine-image", name)
        return
    s.images[ImageID(obj)] = chain
    missing = [c for c in chain if c not in s.layers]
    if missing:
        yield Finding("missing-image-layer", obj, "it needs layer %s%s, %s: re-import the image "
                      "(layer_import of its archive, or image_pull) to restore it"
                      % (missing[0], " and %d more" % (len(missing) - 1)
                         if len(missing) > 1 else "", _missing_note(s, missing[0])))


def _missing_note(s: Survey, chain: ChainID) -> str:
    if chain in s.damaged:
        return "whose record is damaged (see bad-layer-record)"
    where = s.quarantined(hex_of(chain))
    return "which the store does not hold%s" % (" (it was moved to %s)" % where if where else "")


def _read_image(path: str, name: str) -> Tuple[str, Optional[List[ChainID]]]:
    if not is_digest("sha256:" + name):
        return "the name is not an image id", None
    try:
        with open(os.path.join(path, "config.json"), "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        return "config.json cannot be read (%s)" % exc.strerror, None
    if sha256_bytes(raw) != "sha256:" + name:
        return "config.json hashes to %s, not to the image id" % sha256_bytes(raw), None
    try:
        return "", chain_ids(parse_config(raw, path).diff_ids)
    except StoreError as exc:
        return str(exc), None


def check_tags(s: Survey) -> Iterator[Finding]:
    path = s.store.images.tags_path
    try:
        tags = read_json(path)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as exc:
        tags = exc
    if not isinstance(tags, dict):
        yield Finding("corrupt-tags", "tags.json", "tags.json is not a JSON object of tags (%s); "
                      "repair moves it to quarantine/ (every tag is lost: re-tag the images "
                      "with strata.layers.image)" % str(tags)[:200], "quarantine-tags")
        return
    for tag, value in sorted(tags.items()):
        problem = _tag_problem(s, tag, value)
        if problem:
            yield Finding("dangling-tag", tag, problem + "; repair removes the tag", "untag", tag)


def _tag_problem(s: Survey, tag: str, value: object) -> Optional[str]:
    try:
        if normalize_tag(tag) != tag:
            return "the tag is not in its normal form (%s)" % normalize_tag(tag)
    except InvalidReference as exc:
        return str(exc)
    if not is_digest(value):
        return "it points at %r, which is not an image id" % (value,)
    if not os.path.isdir(s.store.images.path(str(value))):
        return "it points at image %s, which is not in the store" % value
    return None


def check_containers(s: Survey) -> Iterator[Finding]:
    for name in s.listdir("containers"):
        if not name.startswith(TEMP_PREFIX):
            s.containers.add(name)
            yield from _check_container(s, name)


def _check_container(s: Survey, cid: str) -> Iterator[Finding]:
    path = os.path.join(s.store.root, "containers", cid)
    problem, data = _read_container(path, cid)
    if data is None:
        yield Finding("bad-container-record", s.rel(path), "%s; repair moves the record and the "
                      "container's writable layer to quarantine/" % problem,
                      "quarantine-container", cid)
        return
    shown = "container %r" % data.name
    if data.image_id not in s.images:
        yield Finding("missing-container-image", cid, "%s uses image %s, which is not in the "
                      "store (or is damaged): re-import the image, or remove the container "
                      "(container_layer state=absent)" % (shown, data.image_id))
    upper = s.driver.container_root(cid)
    if not os.path.isdir(upper):
        yield Finding("missing-container-data", cid, "the %s driver holds no writable layer for "
                      "%s (%s is missing): remove the container (container_layer "
                      "state=absent) and create it again" % (s.driver.name, shown, s.rel(upper)))


def _read_container(path: str, cid: str) -> Tuple[str, Optional[ContainerRecord]]:
    if len(cid) != 64 or any(c not in "0123456789abcdef" for c in cid):
        return "the name is not a container id", None
    try:
        return "", read_record(path, cid)
    except (NotFound, Corrupt) as exc:
        return str(exc.details.get("problem", exc)), None


def check_driver_dirs(s: Survey) -> Iterator[Finding]:
    """Every driver's directories (the active one's and kept ones') need a record."""
    refs = s.store.references()
    for driver in s.store.driver_homes():
        for name in driver.layer_hexes():
            if not os.path.lexists(os.path.join(s.store.layers.dir, name)):
                path = os.path.join(driver.home, driver.layers_dir, name)
                yield _orphan_layer(s, refs, ChainID("sha256:" + name), driver, path)
        for cid in driver.container_ids():
            if cid not in s.containers:
                path = driver.container_dir(cid)
                yield Finding("orphan-container-data", s.rel(path), "no container record names "
                              "it; repair removes it", "remove", (driver.name, path))


def _orphan_layer(s: Survey, refs: References, chain: ChainID, driver: Driver,
                  path: str) -> Finding:
    """Driver data without a layer record is removed only if nothing may need it:
    references fail closed (a live container's lower layer whose record was lost, or
    any record that cannot be read, keeps it)."""
    users = sorted(refs.users.get(chain, set()))
    if not users and not refs.unreadable:
        return Finding("orphan-layer-data", s.rel(path), "no layer record names it (an "
                       "import that never committed); repair removes it", "remove",
                       (driver.name, path))
    why = ("%s need%s it" % (", ".join(u[:22] for u in users[:3]), "s" if len(users) == 1
                             else "")) if users else \
        "some image or container records cannot be read, and may need it"
    return Finding("orphan-layer-data", s.rel(path), "no layer record names it, but %s: it is "
                   "kept (re-import the image that contains it to restore its record)" % why)


def check_layout(s: Survey) -> Iterator[Finding]:
    # Only drivers that derive extra metadata from the records (the overlay family:
    # short l/ links, link and lower files) have anything to check here.
    layout = getattr(s.driver, "check_layout", None)
    if layout is None:
        return
    parents = {c: s.layers[c].parent for c in s.with_data}
    for issue in layout(parents, s.damaged):
        what = "repair re-creates it from the layer records" if issue.action != "remove" \
            else "repair removes it"
        yield Finding(issue.kind, s.rel(issue.path), "%s; %s" % (issue.detail, what),
                      "relayout", issue)


def check_subvolumes(s: Survey) -> Iterator[Finding]:
    """btrfs: roots that are plain directories where the driver keeps subvolumes (a store
    copied with ``cp -a`` or rsync, as a restore from a file-level backup leaves it)."""
    plain = getattr(s.driver, "plain_directories", None)
    for path in plain() if plain is not None else []:
        yield Finding("not-a-subvolume", s.rel(path), "a plain directory where the btrfs driver "
                      "keeps a subvolume (the store was copied without its subvolumes, as cp -a "
                      "or rsync do): it works, but each layer or container made from it is a "
                      "copy of its files instead of a snapshot; repair makes it a subvolume "
                      "with the same contents", "subvolume", path)


def check_leftovers(s: Survey) -> Iterator[Finding]:
    for sub in ("", "layers", "images", "containers", "distribution", "sources", "incomplete"):
        for name in s.listdir(sub):
            if name.startswith(TEMP_PREFIX) and not _in_use(s, sub, name):
                yield _leftover(s, os.path.join(s.store.root, sub, name), None)
    for entry in mounts_below(s.store.tmp):
        yield Finding("leftover", s.rel(entry.mount_point), "a mount left below tmp/ by an interrupted "
                      "run; opening the store for writing unmounts it", "settle")
    for name in s.listdir("tmp"):
        # removals rename records into tmp/ as their commit point and leave them for the
        # next open to sweep: by design, not debris; names without the staging prefix
        # are not the store's (a store nested there) and are never swept
        if name.startswith(TEMP_PREFIX) and not name.startswith(TEMP_PREFIX + "removed"):
            yield _leftover(s, os.path.join(s.store.tmp, name), None, "settle")
    for driver in s.store.driver_homes():
        for path in driver.leftovers():
            yield _leftover(s, path, driver.name)


def _in_use(s: Survey, sub: str, name: str) -> bool:
    # storage_driver in check mode probes in a .tmp-probe-* directory of the data root
    # under the shared lock: under that lock it may be someone's live work.
    return not s.store.writable and sub == "" and name.startswith(TEMP_PREFIX + "probe-")


def _leftover(s: Survey, path: str, driver: Optional[str], fix: str = "remove") -> Finding:
    return Finding("leftover", s.rel(path), "staging debris of an interrupted run; repair "
                   "removes it", fix, (driver, path))


def check_caches(s: Survey) -> Iterator[Finding]:
    for sub, valid in (("distribution", _valid_distribution), ("sources", _valid_source)):
        for name in s.listdir(sub):
            path = os.path.join(s.store.root, sub, name)
            if not name.startswith(TEMP_PREFIX) and not valid(path, name):
                yield Finding("bad-cache-entry", s.rel(path), "not a valid cache entry (only "
                              "speed is lost without it); repair removes it", "remove",
                              (None, path))


def _valid_distribution(path: str, name: str) -> bool:
    if not is_digest("sha256:" + name):
        return False
    try:
        with open(path) as handle:
            return is_digest(handle.read().strip())
    except (OSError, UnicodeDecodeError):
        return False


def _valid_source(path: str, name: str) -> bool:
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and isinstance(data.get("key"), str) and \
        sha256_bytes(data["key"].encode()) == "sha256:" + name


STEPS: List[Callable[[Survey], Iterator[Finding]]] = [
    check_marks, check_layer_records, check_parents, verify_layers, check_images, check_tags,
    check_containers, check_driver_dirs, check_layout, check_subvolumes, check_leftovers,
    check_caches]


# ---------------------------------------------------------------------- repair

def recovered_items(root: str, recovered: List[str]) -> List[Dict[str, str]]:
    """What opening the store for writing did, as repairs.

    ``Store.recovered`` lists the settling of every mark first (its removals, then
    "rolled back OP" or "finished OP"; or "rejected mark NAME: why"), then the sweep of
    staging debris."""
    items = [{"kind": "incomplete", "object": line.split(" ", 2)[2].split(":", 1)[0],
              "action": "rejected (%s)" % line.split(": ", 1)[-1]}
             for line in recovered if line.startswith("rejected mark ")]
    recovered = [line for line in recovered if not line.startswith("rejected mark ")]
    settled = max((i + 1 for i, line in enumerate(recovered)
                   if line.startswith(("rolled back ", "finished "))), default=0)
    removed: List[str] = []
    for line in recovered[:settled]:
        if line.startswith("removed "):
            removed.append(line[len("removed "):])
            continue
        verb, op = line.rsplit(" ", 1)
        items.append({"kind": "incomplete", "object": op, "action": verb + (
            " (removed %s)" % ", ".join(removed) if removed else "")})
        removed = []
    for line in recovered[settled:]:
        verb, path = line.split(" ", 1)
        if os.path.isabs(path):
            path = os.path.relpath(path, root)
        items.append({"kind": "leftover", "object": path, "action": verb})
    return items


def repair_rounds(store: Store, flagged: Set[ChainID], failures: Dict[Tuple[str, str], str]
                  ) -> List[Dict[str, str]]:
    """Repair until nothing more is repairable; each finding is tried once."""
    done: List[Dict[str, str]] = []
    tried: Set[Tuple[str, str]] = set()
    for number in range(REPAIR_ROUNDS):
        findings = check(store, verify=flagged if number == 0 else set())[1]
        todo = [f for f in findings if f.fix in _FIX_ORDER and f.key not in tried]
        if not todo:
            break
        for finding in sorted(todo, key=lambda f: _FIX_ORDER.index(f.fix or "")):
            tried.add(finding.key)
            try:
                action = FIXES[finding.fix or ""](store, finding)
            except (StoreError, OSError) as exc:
                failures[finding.key] = str(exc)
                continue
            if action:
                done.append({"kind": finding.kind, "object": finding.object, "action": action})
    return done


def quarantine_dir(store: Store, name: str, finding: Finding, **extra: Any) -> str:
    """A new directory under quarantine/ with a note of why things were moved there."""
    base = os.path.join(store.root, QUARANTINE)
    makedirs(base)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = os.path.join(base, "%s-%s" % (name, stamp))
    number = 1
    while os.path.lexists(path):
        number += 1
        path = os.path.join(base, "%s-%s.%d" % (name, stamp, number))
    os.mkdir(path, 0o700)
    write_json(os.path.join(path, "quarantine.json"),
               dict(finding.as_dict(), moved=stamp, **extra))
    return path


def quarantine_layer(store: Store, finding: Finding) -> str:
    name = str(finding.target)
    dest = quarantine_dir(store, name, finding, driver=store.driver_name)
    # data before record: a crash between leaves a record without data, which the next
    # repair moves aside too; the other order would leave data that looks orphaned
    for driver in store.driver_homes():
        data = os.path.join(driver.home, driver.layers_dir, name)
        if os.path.lexists(data):
            suffix = "" if driver.name == store.driver_name else "-" + driver.name
            rename_durable(data, os.path.join(dest, "data" + suffix))
    record = os.path.join(store.layers.dir, name)
    if os.path.lexists(record):
        rename_durable(record, os.path.join(dest, "record"))
    return "moved to %s" % os.path.relpath(dest, store.root)


def quarantine_image(store: Store, finding: Finding) -> str:
    name = str(finding.target)
    tags = _raw_tags(store)
    pointing = sorted(t for t, v in tags.items() if v == "sha256:" + name)
    dest = quarantine_dir(store, "image-" + name, finding, tags=pointing)
    rename_durable(os.path.join(store.images.dir, name), os.path.join(dest, "record"))
    return "moved to %s" % os.path.relpath(dest, store.root)


def quarantine_container(store: Store, finding: Finding) -> str:
    cid = str(finding.target)
    dest = quarantine_dir(store, "container-" + cid, finding)
    for driver in store.driver_homes():
        data = os.path.join(driver.home, driver.containers_dir, cid)
        if os.path.lexists(data):
            suffix = "" if driver.name == store.driver_name else "-" + driver.name
            rename_durable(data, os.path.join(dest, "data" + suffix))
    rename_durable(os.path.join(store.root, "containers", cid), os.path.join(dest, "record"))
    return "moved to %s" % os.path.relpath(dest, store.root)


def quarantine_tags(store: Store, finding: Finding) -> str:
    dest = quarantine_dir(store, "tags", finding)
    rename_durable(store.images.tags_path, os.path.join(dest, "tags.json"))
    return "moved to %s" % os.path.relpath(dest, store.root)


def untag(store: Store, finding: Finding) -> str:
    tags = _raw_tags(store)
    tags.pop(str(finding.target), None)
    write_json(store.images.tags_path, dict(sorted(tags.items())))
    return "removed the tag"


def _raw_tags(store: Store) -> Dict[str, Any]:
    try:
        data = read_json(store.images.tags_path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remove(store: Store, finding: Finding) -> str:
    driver, path = finding.target
    store.remove_path(driver, path)
    return "removed"


def relayout(store: Store, finding: Finding) -> Optional[str]:
    return store.driver.repair_layout(finding.target)  # type: ignore[attr-defined]


def make_subvolume(store: Store, finding: Finding) -> Optional[str]:
    """A plain root made a subvolume in place; a container's only while nothing uses it
    (its bind mount or its running processes would keep the plain directory).  Nothing
    when the root is gone: an earlier fix of the same repair removed or quarantined it."""
    path = finding.target
    if not os.path.isdir(path):
        return None
    if os.path.dirname(path) == os.path.join(store.driver.home, store.driver.containers_dir):
        cid = os.path.basename(path)
        record = read_record(ContainerDB(store.root).path(cid), cid)
        if status(store, record) == "running" or is_mounted(record):
            raise Busy("container %r is running or mounted: stop and unmount it "
                       "(container state=stopped, container_layer state=unmounted), "
                       "then repair again" % record.name)
    store.driver.make_subvolume(path)  # type: ignore[attr-defined]
    return "made a subvolume"


FIXES: Dict[str, Callable[[Store, Finding], Optional[str]]] = {
    "quarantine-layer": quarantine_layer, "quarantine-image": quarantine_image,
    "quarantine-container": quarantine_container, "quarantine-tags": quarantine_tags,
    "untag": untag, "remove": remove, "relayout": relayout, "subvolume": make_subvolume,
}
