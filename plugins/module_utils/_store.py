# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The layer store of one host.

``Store`` opens a ``data_root`` (makes it on first use, under ``_trust``'s ownership
rules), takes the lock (exclusive for mutations, shared for reads) and, opened for
writing, settles the incomplete marks and sweeps staging debris before anything else.
It owns the records at the top of the store (layers, images, tags, containers, the
distribution and source caches), the active driver and the mutations that tie records
to driver data: importing a layer (``ingest_layer``), adding and removing images,
removing layers, recovery.

On-disk layout: docs/design.md, "Layout of a store".  The import's steps and what a
crash after each leaves, and every other mutation's order: docs/design.md,
"Crash-safety rules".  The ``crash_point`` names in the code mark those steps
(tests/unit/plugins/module_utils/test_crash_points.py kills a run at each).
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from typing import (
    TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple)

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, makedirs, read_json, remove_tree, rename_durable, syncfs, temp_name,
    wrap_os_error, write_file, write_json)
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._digest import (
    ChainID, DiffID, Digest, ImageID, chain_id, chain_ids, hex_of, is_digest, sha256_bytes)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, DigestMismatch, InvalidInput, NotFound, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import (
    allocated_bytes, mounts_below, umount)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import ImageConfig
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import (
    ImageDB, ImageRecord)
from ansible_collections.strata.layers.plugins.module_utils._layers import (
    LayerDB, LayerRecord, now_iso)
from ansible_collections.strata.layers.plugins.module_utils._lock import (
    DEFAULT_TIMEOUT, StoreLock, read_only_error)
from ansible_collections.strata.layers.plugins.module_utils._probe import (
    DRIVERS, driver_class, select)
from ansible_collections.strata.layers.plugins.module_utils._recovery import Marks
from ansible_collections.strata.layers.plugins.module_utils._trust import (
    INIT_MODES, inside, refuse_foreign, refuse_untrusted)
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import Driver

FORMAT = 1
DEFAULT_ROOT = "/var/lib/strata"
if TYPE_CHECKING:  # the ingest machinery is imported on first ingest (module start-up time)
    from ansible_collections.strata.layers.plugins.module_utils._compression import (
        DecodedStream)
    from ansible_collections.strata.layers.plugins.module_utils._containers import ContainerDB
    from ansible_collections.strata.layers.plugins.module_utils._copytree import Shadow

StreamOpener = Callable[[], "DecodedStream"]


@dataclass
class References:
    """Who needs each layer: image ids and ``container:<id>``.

    References fail closed: ``unreadable`` lists the image and container records that
    could not be read (damaged, quarantined by store_check, or naming an image the
    store no longer has).  Such a record may need any layer, so while one is listed
    no layer is unused, and the callers report why."""

    users: Dict[ChainID, Set[str]] = field(default_factory=dict)
    unreadable: List[str] = field(default_factory=list)
    unreadable_containers: List[str] = field(default_factory=list)
    container_images: Dict[str, str] = field(default_factory=dict)


class Store:
    """One store under ``data_root`` (layout and steps: docs/design.md)."""

    def __init__(self, data_root: str = DEFAULT_ROOT, lock_timeout: float = DEFAULT_TIMEOUT,
                 init: str = "new") -> None:
        if not data_root or not os.path.isabs(data_root):
            raise InvalidInput("data_root %r must be an absolute path" % (data_root,))
        if init not in INIT_MODES:
            raise InvalidInput("init %r is not one of %s" % (init, ", ".join(INIT_MODES)))
        self.root = os.path.normpath(data_root)
        self.lock_timeout = lock_timeout
        self.init_mode = init
        self.layers = LayerDB(self.root)
        self.images = ImageDB(self.root)
        self.marks = Marks(self.root)
        self.tmp = os.path.join(self.root, "tmp")
        self._driver: Optional[Driver] = None
        self.recovered: List[str] = []
        self.writable = False
        self.held_lock: Optional[StoreLock] = None   # the exclusive lock while write() runs

    @classmethod
    def from_params(cls, params: Dict[str, Any]) -> "Store":
        """The store a module's parameters name (``data_root``, ``lock_timeout``, ``init``)."""
        timeout = params.get("lock_timeout")
        return cls(params["data_root"], DEFAULT_TIMEOUT if timeout is None else float(timeout),
                   params.get("init") or "new")

    # ------------------------------------------------------------------ opening
    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.root, "store.json"))

    @contextlib.contextmanager
    def write(self, operation: str, init: bool = True) -> Iterator["Store"]:
        """Exclusive access; crash debris settled; a driver chosen if ``init``.

        A directory that is not a store yet becomes one only when it holds nothing of
        anyone else's, or with ``init: adopt`` (``_trust``); a first run that fails
        leaves no store behind (an empty initialised store is not left)."""
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise InvalidInput("data_root %s exists and is not a directory" % self.root)
        refuse_untrusted(self.root)
        if not self.exists() and self.init_mode != "adopt":
            refuse_foreign(self.root, DRIVERS)
        made_root = not os.path.lexists(self.root)
        had = set() if made_root else set(os.listdir(self.root))
        lock = self._lock_exclusive(operation)
        self.held_lock = lock
        try:
            fresh = not self.exists()
            self.writable = True
            try:
                self._recover()
                if init and not self.exists():
                    self.initialize(select(self.root, "auto", self._probe_dir())[0])
                yield self
            except BaseException:
                if fresh:
                    self._unmake(made_root, had)
                raise
            finally:
                self.writable = False
        finally:
            self.held_lock = None
            lock.release()

    def _lock_exclusive(self, operation: str) -> StoreLock:
        """The exclusive lock on a data root that is safe to use (made 0700 if new).

        A first run that failed removes its lock file with the rest (``_unmake``): a
        waiter that got the lock of that unlinked file starts again."""
        while True:
            try:
                makedirs(self.root, 0o700)
            except OSError as exc:
                raise read_only_error(exc, self.root, operation) from exc
            refuse_untrusted(self.root)     # made by someone else since the check?
            self._restrict()
            lock = StoreLock(os.path.join(self.root, "lock"), True, self.lock_timeout, operation)
            lock.acquire()
            if lock.current():
                return lock
            lock.release()

    def _restrict(self) -> None:
        """The data root and the directories holding mounts are root's alone (as Docker's
        ``/var/lib/docker`` is): no other user reaches a container's files through them."""
        for path in (self.root, os.path.join(self.root, "mounts"), self.tmp):
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
                try:
                    os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)
                except OSError as exc:
                    if exc.errno != errno.EROFS:   # a read-only store: the write fails later
                        raise wrap_os_error(exc, "restricting %s to root" % path) from exc

    def _unmake(self, made_root: bool, had: Set[str]) -> None:
        """Undo the initialisation of a store whose first run failed and left nothing in
        it: exactly the entries this run made go (``had``: what was there before)."""
        try:
            if self.has_content() or self.images.ids():
                return
            for entry in sorted(mounts_below(self.root), key=lambda m: len(m.mount_point),
                                reverse=True):
                umount(entry.mount_point)
            for name in os.listdir(self.root):
                if name not in had and name != "lock":
                    remove_tree(os.path.join(self.root, name))
            if "lock" not in had:
                os.unlink(os.path.join(self.root, "lock"))
            if made_root:
                os.rmdir(self.root)
        except (OSError, StoreError):
            pass  # best effort: the run's own error is what the user needs to see

    @contextlib.contextmanager
    def read(self) -> Iterator["Store"]:
        """Shared access (a store that does not exist yet reads as empty)."""
        if os.path.isdir(self.root):
            refuse_untrusted(self.root)
        while True:
            if not os.path.isfile(os.path.join(self.root, "lock")):
                yield self
                return
            lock = StoreLock(os.path.join(self.root, "lock"), False, self.lock_timeout)
            try:
                lock.acquire()
            except FileNotFoundError:
                continue
            if lock.current():
                break
            lock.release()
        try:
            yield self
        finally:
            lock.release()

    def _probe_dir(self) -> str:
        makedirs(self.tmp)
        return self.tmp

    # ------------------------------------------------------------------ driver
    def state(self) -> Dict[str, object]:
        try:
            return read_json(os.path.join(self.root, "store.json"))
        except FileNotFoundError:
            return {}

    @property
    def driver_name(self) -> Optional[str]:
        value = self.state().get("driver")
        return str(value) if value else None

    @property
    def driver(self) -> Driver:
        if self._driver is None:
            name = self.driver_name
            if name is None:
                raise NotFound("the store %s has no storage driver yet (run "
                               "strata.layers.storage_driver, or import something)" % self.root)
            self._driver = driver_class(name)(self.root)
        return self._driver

    def driver_named(self, name: str) -> Driver:
        return driver_class(name)(self.root)

    def initialize(self, driver: str, previous: Optional[str] = None,
                   keep_previous: bool = False) -> None:
        """Record ``driver`` as the active one (the store.json rewrite is atomic)."""
        impl = driver_class(driver)(self.root)
        impl.init()
        for sub in ("layers", "images", "containers", "distribution", "sources", "tmp"):
            makedirs(os.path.join(self.root, sub))
        write_json(os.path.join(self.root, "store.json"),
                   {"format": FORMAT, "driver": driver, "previous_driver": previous,
                    "keep_previous": bool(keep_previous and previous)})
        self._driver = impl

    def driver_homes(self) -> List[Driver]:
        """Every driver with a home under the store (the active one and kept ones)."""
        return [self.driver_named(name) for name in DRIVERS
                if os.path.isdir(os.path.join(self.root, name))]

    def has_content(self) -> bool:
        return bool(self.layers.chains()) or bool(self.container_ids())

    @property
    def containers(self) -> "ContainerDB":
        """The container records (``_containers``, imported on first use: it brings the
        change and runtime machinery, which most modules never need)."""
        from ansible_collections.strata.layers.plugins.module_utils._containers import (
            ContainerDB)
        return ContainerDB(self.root)

    def container_ids(self) -> List[str]:
        return self.containers.ids()

    # ------------------------------------------------------------------ recovery
    def remove_path(self, driver: Optional[str], path: str) -> None:
        """Remove one path a mark names, unmounting what is mounted below it first.

        Only ever inside the store: a path outside it (a planted or damaged mark) is
        refused, whoever names it."""
        if not inside(self.root, path):
            raise Corrupt("refusing to remove %s: it is not inside the store %s (a damaged "
                          "record or mark names it); nothing was removed" % (path, self.root))
        for entry in sorted(mounts_below(path), key=lambda m: len(m.mount_point), reverse=True):
            umount(entry.mount_point)
        if driver is None and os.path.dirname(path) == self.images.dir:
            self._drop_tags(os.path.basename(path))     # a removal finished: no tag dangles
        if driver:
            self.driver_named(driver).remove_path(path)
        else:
            remove_tree(path)

    def _recover(self) -> None:
        self.recovered = []
        # build containers and probes are mounted under tmp/: unmount before the marks
        # remove what those mounts stand on
        for entry in sorted(mounts_below(self.tmp), key=lambda m: len(m.mount_point),
                            reverse=True):
            umount(entry.mount_point)
            self.recovered.append("unmounted %s" % entry.mount_point)
        self.recovered += self.marks.settle(self.remove_path, DRIVERS)
        # only the names the store gives its staging: anything else in tmp/ (a store
        # someone nested there, say) is not the store's to remove
        if os.path.isdir(self.tmp):
            for name in os.listdir(self.tmp):
                if name.startswith(TEMP_PREFIX):
                    remove_tree(os.path.join(self.tmp, name))
                    self.recovered.append("removed tmp/%s" % name)
        for sub in ("", "layers", "images", "containers", "distribution", "sources",
                    "incomplete", "pulls", os.path.join("cache", "build"),
                    os.path.join("cache", "remote"),
                    os.path.join("registry", "compressed"), os.path.join("registry", "origins"),
                    os.path.join("registry", "uploads")):
            self._sweep_temp_files(os.path.join(self.root, sub))
        for home in self.driver_homes():
            self.recovered += ["removed %s" % p for p in home.sweep()]

    def _sweep_temp_files(self, directory: str) -> None:
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(TEMP_PREFIX):
                remove_tree(os.path.join(directory, name))
                self.recovered.append("removed %s" % os.path.join(directory, name))

    def _require_writable(self) -> None:
        if not self.writable:
            raise StoreError("internal error: a mutation ran without the exclusive store lock")

    def staging(self, what: str) -> str:
        makedirs(self.tmp)
        path = os.path.join(self.tmp, temp_name(what))
        os.mkdir(path, 0o700)
        return path

    # ------------------------------------------------------------------ layers
    def known_diff_id(self, digest: str) -> Optional[DiffID]:
        """The diff_id for a compressed blob digest seen before, if any."""
        if not is_digest(digest):
            return None
        try:
            with open(os.path.join(self.root, "distribution", hex_of(digest))) as handle:
                value = handle.read().strip()
        except FileNotFoundError:
            return None
        return DiffID(value) if is_digest(value) else None

    def remember_blob(self, digest: Digest, diff_id: DiffID) -> None:
        if digest != diff_id:
            makedirs(os.path.join(self.root, "distribution"))
            write_file(os.path.join(self.root, "distribution", hex_of(digest)),
                       diff_id.encode() + b"\n")

    def forget_blob(self, digest: str) -> None:
        if is_digest(digest):
            try:
                os.unlink(os.path.join(self.root, "distribution", hex_of(digest)))
            except FileNotFoundError:
                pass

    def source_digests(self, key: str) -> Optional[Dict[str, str]]:
        try:
            data = read_json(os.path.join(self.root, "sources", hex_of(sha256_bytes(key.encode()))))
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("key") == key else None

    def remember_source(self, key: str, digests: Dict[str, str]) -> None:
        makedirs(os.path.join(self.root, "sources"))
        write_json(os.path.join(self.root, "sources", hex_of(sha256_bytes(key.encode()))),
                   dict(digests, key=key))

    def parent_depth(self, parent: Optional[ChainID]) -> int:
        if parent is None:
            return 0
        record = self.layers.find(parent)
        if record is None:
            raise NotFound("parent layer %s is not in the store: import it first" % parent)
        return record.depth

    def check_depth(self, layers: int, what: str) -> None:
        """Refuse, before anything is stored, an image deeper than the driver can mount
        (so a failing import or pull leaves no layers behind it)."""
        limit = self.driver.max_depth
        if limit is not None and layers > limit:
            raise Unsupported("%s has %d layers; the %s driver mounts at most %d (the mount "
                              "option page limit): squash the image; nothing was imported"
                              % (what, layers, self.driver.name, limit))

    def ingest_layer(self, open_stream: StreamOpener, parent: Optional[ChainID],
                     what: str, expect: Optional[str] = None, expect_diff: Optional[DiffID] = None,
                     max_size: Optional[int] = None, shadow: Optional[Shadow] = None,
                     expect_blob: Optional[str] = None
                     ) -> Tuple[LayerRecord, bool, Dict[str, str]]:
        """Store one layer stream on ``parent``; returns (record, imported, digests).

        ``expect`` is a digest the stream must have compressed or uncompressed;
        ``expect_blob`` the digest its own bytes must have (a registry blob's);
        ``expect_diff`` the diff_id it must have (all checked before anything is kept).
        ``shadow`` (a commit's) is opened in the record directory before the stream is
        opened: the stream clones its files there and the applier takes the clones.
        """
        from ansible_collections.strata.layers.plugins.module_utils._apply import Applier
        from ansible_collections.strata.layers.plugins.module_utils._tarformat import ChunkReader
        from ansible_collections.strata.layers.plugins.module_utils._tarsplit import (
            TarSplitWriter)
        self._require_writable()
        if expect_diff is not None:
            found = self.layers.find(chain_id(parent, expect_diff))
            if found is not None:
                return found, False, {"diff_id": expect_diff}
        depth = self.parent_depth(parent) + 1
        driver = self.driver
        key = driver.staging_key()
        record_dir = os.path.join(self.tmp, key)
        mark = self.marks.begin("import-layer").set(
            if_absent=[(driver.name, driver.staging_dir(key)), (None, record_dir)])
        crash_point("import.marked")
        try:
            makedirs(self.tmp)
            os.mkdir(record_dir, 0o700)
            try:
                staged = driver.stage_layer(key, parent, depth)
            except OSError as exc:
                raise wrap_os_error(exc, "staging the layer of %s" % what) from exc
            crash_point("import.staged")
            if shadow is not None:
                shadow.open(os.path.join(record_dir, "shadow"))
            try:
                stream = open_stream()
                try:
                    split = TarSplitWriter(os.path.join(record_dir, "tar-split.gz"))
                    try:
                        reader = ChunkReader(stream.chunk, limit=max_size, what=what)
                        applier = Applier(staged.path, driver.whiteouts, split, what, shadow)
                        result = applier.apply(reader)
                        stream.drain_raw()
                        split.close()
                    finally:
                        split.abort()
                finally:
                    stream.close()
            finally:
                if shadow is not None:
                    shadow.close()
            crash_point("import.applied")
            digests = {"diff_id": result.diff_id,
                       "digest": stream.compressed_digest() or result.diff_id}
            self._verify(what, digests, expect, expect_diff, expect_blob)
            chain = chain_id(parent, DiffID(result.diff_id))
            present = self.layers.find(chain)
            if present is not None:
                self.remove_path(driver.name, staged.top)
                remove_tree(record_dir)
                mark.done()
                return present, False, digests
            mark.set(record=self.layers.path(chain), if_absent=[
                (driver.name, driver.staging_dir(key)), (driver.name, driver.layer_dir(chain)),
                (None, record_dir)])
            crash_point("import.remarked")
            driver.commit_layer(staged, chain)
            crash_point("import.committed")
            syncfs(driver.home)
            record = LayerRecord(chain_id=chain, diff_id=DiffID(result.diff_id), parent=parent,
                                 size=result.size, tar_size=result.tar_size, depth=depth,
                                 created=now_iso(), mtime_max=applier.mtime_max)
            LayerDB.write_staged(record_dir, record)
            crash_point("import.record-staged")
            rename_durable(record_dir, self.layers.path(chain))
            crash_point("import.recorded")
        except BaseException:
            self._rollback(mark)
            raise
        self.remember_blob(Digest(digests["digest"]), DiffID(result.diff_id))
        mark.done()
        crash_point("import.done")
        return record, True, digests

    def _rollback(self, mark) -> None:
        """Undo a failed mutation now, as recovery would after a crash."""
        try:
            data = mark.data
            record = data.get("record")
            if record and os.path.exists(os.path.join(self.root, record)):
                mark.done()
                return
            for drv, rel in data.get("if_absent") or []:
                target = os.path.join(self.root, rel)
                if os.path.lexists(target):
                    self.remove_path(drv, target)
            mark.done()
        except Exception:  # leave the mark: the next open settles it
            pass

    @staticmethod
    def _verify(what: str, digests: Dict[str, str], expect: Optional[str],
                expect_diff: Optional[str], expect_blob: Optional[str] = None) -> None:
        if expect_diff is not None and digests["diff_id"] != expect_diff:
            raise DigestMismatch("%s: its uncompressed content has digest %s, but %s was "
                                 "expected; nothing was kept" % (what, digests["diff_id"],
                                                                 expect_diff),
                                 expected=expect_diff, actual=digests["diff_id"])
        if expect is not None and expect not in (digests["diff_id"], digests["digest"]):
            raise DigestMismatch("%s: digest mismatch: expected %s, the file has %s (compressed)"
                                 " and %s (uncompressed); nothing was kept"
                                 % (what, expect, digests["digest"], digests["diff_id"]),
                                 expected=expect, actual=digests["digest"])
        if expect_blob is not None and digests["digest"] != expect_blob:
            raise DigestMismatch("%s failed verification: its bytes hash to %s, not %s (a blob "
                                 "is named by the digest of its own bytes, not of its "
                                 "uncompressed content); nothing was kept"
                                 % (what, digests["digest"], expect_blob),
                                 expected=expect_blob, actual=digests["digest"])

    def references(self) -> "References":
        """Which images and containers need each layer (directly or as an ancestor),
        and every record that could not be read (see ``References``)."""
        refs = References()
        for image_id in self.images.ids():
            try:
                image = self.images.get(image_id)
            except StoreError as exc:
                refs.unreadable.append("image %s cannot be read (%s)" % (image_id, exc))
                continue
            for chain in image.chain:
                refs.users.setdefault(ChainID(chain), set()).add(image.id)
        for cid in self.container_ids():
            self._container_references(cid, refs)
        return refs

    def _container_references(self, cid: str, refs: "References") -> None:
        try:
            image_id = self.containers.get(cid).image_id
            refs.container_images[cid] = image_id
        except StoreError as exc:
            path = os.path.join(self.root, "containers", cid, "container.json")
            refs.unreadable.append("container record %s cannot be read (%s)"
                                   % (path, exc.details.get("problem", exc)))
            refs.unreadable_containers.append(cid)
            return
        try:
            chain = self.images.get(image_id).chain
        except StoreError as exc:
            refs.unreadable.append("container %s uses image %s, whose record cannot be read "
                                   "(%s)" % (cid[:12], image_id, exc))
            return
        for link in chain:
            refs.users.setdefault(ChainID(link), set()).add("container:" + cid)

    def remove_layer(self, chain: ChainID) -> int:
        """Remove one layer (record first: the commit point), return the bytes freed."""
        self._require_writable()
        driver = self.driver
        freed = allocated_bytes(driver.layer_dir(chain))
        mark = self.marks.begin("remove-layer").set(
            record=self.layers.path(chain), if_absent=[(driver.name, driver.layer_dir(chain))])
        crash_point("layer-remove.marked")
        makedirs(self.tmp)
        parked = os.path.join(self.tmp, temp_name("removed-layer"))
        rename_durable(self.layers.path(chain), parked)
        crash_point("layer-remove.unrecorded")
        for home in self.driver_homes():
            if home.has_layer(chain):
                home.remove_layer(chain)
        mark.done()
        remove_tree(parked)
        return freed

    def remove_image(self, image_id: ImageID, layers: Sequence[ChainID] = ()) -> int:
        """Remove an image record and every tag pointing at it, then ``layers`` (the
        ones it alone needed, children first); returns the layers' bytes freed.

        A mark naming all of it is written first, so a run killed at any step is
        finished by the next open, not left as an untagged image or orphan layers:
        while the record is there the mark removes it (its tags first, see
        ``remove_path``) and the layers; once it is gone, the layers left."""
        self._require_writable()
        record = self.images.path(image_id)
        layer_paths: List[Tuple[Optional[str], str]] = []
        for chain in layers:
            layer_paths.append((None, self.layers.path(chain)))
            layer_paths += [(home.name, home.layer_dir(chain)) for home in self.driver_homes()
                            if home.has_layer(chain)]
        mark = self.marks.begin("remove-image").set(
            record=record, if_present=[(None, record)] + layer_paths, if_absent=layer_paths)
        crash_point("image-remove.marked")
        self._drop_tags(image_id)
        crash_point("image-remove.untagged")
        makedirs(self.tmp)
        parked = os.path.join(self.tmp, temp_name("removed-image"))
        rename_durable(record, parked)
        crash_point("image-remove.unrecorded")
        freed = sum(self.remove_layer(chain) for chain in layers)
        mark.done()
        remove_tree(parked)
        return freed

    def _drop_tags(self, image_id: str) -> None:
        """Untag ``image_id`` (also given as the bare hex of its record's name)."""
        full = image_id if image_id.startswith("sha256:") else "sha256:" + image_id
        tags = self.images.tags()
        kept = {t: i for t, i in tags.items() if i != full}
        if kept != tags:
            self.images.write_tags(kept)

    def unused_layers(self, without: Optional[Set[str]] = None) -> List[ChainID]:
        """Layers nothing needs once the images and containers ``without`` names
        (ids; containers as ``container:<id>``) are gone; children before parents.

        The one removal plan: store_prune, image removal and store_info's reclaimable
        figure all ask it, in check mode and for real.  While any image or container
        record cannot be read, nothing is unused (``References``)."""
        gone = without or set()
        refs = self.references()
        if refs.unreadable:
            return []   # fail closed: an unreadable record may need any layer
        users = refs.users
        unused = [r for r in self.layers.all() if not users.get(r.chain_id, set()) - gone]
        return [r.chain_id for r in sorted(unused, key=lambda r: r.depth, reverse=True)]

    # ------------------------------------------------------------------ images
    def put_image(self, config: ImageConfig, meta: Dict[str, object]) -> Tuple[ImageRecord, bool]:
        """Store an image config whose layers are all present; returns (record, added)."""
        self._require_writable()
        image_id = config.id
        if self.images.exists(image_id):
            return self.images.get(image_id), False
        for chain in self._chain_of(config):
            if not self.layers.exists(chain):
                raise NotFound("image %s needs layer %s, which is not in the store"
                               % (image_id, chain))
        staged = self.staging("image")
        ImageDB.write_staged(staged, config, dict(meta, id=image_id, added=now_iso()))
        crash_point("image.staged")
        makedirs(self.images.dir)
        rename_durable(staged, self.images.path(image_id))
        crash_point("image.recorded")
        return self.images.get(image_id), True

    @staticmethod
    def _chain_of(config: ImageConfig) -> List[ChainID]:
        return chain_ids(config.diff_ids)

    def tag(self, image_id: ImageID, tags: List[str]) -> List[str]:
        """Point ``tags`` at ``image_id``; returns the tags that changed."""
        if tags and not self.images.exists(image_id):
            raise NotFound("image %s is not in the store (it was removed meanwhile?); nothing "
                           "was tagged" % image_id)
        current = self.images.tags()
        moved = [t for t in tags if current.get(t) != image_id]
        if moved:
            for tag in moved:
                current[tag] = image_id
            self.images.write_tags(current)
        return moved

    def resolve_parent(self, ref: str) -> Tuple[Optional[ImageRecord], ChainID]:
        """``parent`` of a layer import: an image reference or a layer chain id."""
        try:
            image = self.images.get(self.images.resolve(ref, "parent"))
        except (NotFound, StoreError) as exc:
            if is_digest(ref) and self.layers.exists(ChainID(ref)):
                return None, ChainID(ref)
            if isinstance(exc, NotFound):
                raise NotFound("parent %r is neither an image nor a layer chain id in the store"
                               % ref) from exc
            raise
        if image.top is None:
            raise InvalidInput("parent image %s has no layers to stack on" % ref)
        return image, ChainID(image.top)
