# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Building images from Dockerfile-like specs, with a build cache (``image_build``'s
entry point is ``_ops/image_build.py``).

Each needed stage is built in dependency order.  RUN, COPY and ADD make a layer on the
previous image's layers (WORKDIR too when its directory is missing, as BuildKit); every
other instruction is a config change with an ``empty_layer`` history entry (as Docker's
classic builder).  Layer steps store their image (untagged, with its parent) so the
build cache has something to hit; a run of config-only steps is applied in memory and
stored once, before the next layer step or at the stage's end, which keeps a build's
cost linear in its steps.

The cache: a step (or a run of config-only steps) is reused when a record
``cache/build/<key>`` names an image that is still in the store, the key hashing the key
or image id before it, the instruction after substitution (its history line, build
args included) and, for COPY/ADD, the content, modes and ownership of what it copies.
Changing one context file therefore rebuilds from the first step that reads it.
``no_cache`` ignores the records (and rewrites them).  A step's error is prefixed with
its line.

A RUN step: a build container (a container record of kind ``build``) on the previous
image, mounted under ``tmp/``, its ``--mount``s prepared by ``_runsetup``, the command
run by ``_sandbox`` (network, identity and environment as Docker gives them), the
container's changes committed as the step's layer, the container removed.  A mark
covers the container from creation: a crash leaves nothing the next open does not
remove.  A failing step leaves no build container, no partial layer and no tag (tags
are set last).

ADD of a URL or a git repository (``_remote``): the step is keyed on what the source is
known as (``--checksum``, the digest a 304 confirms, the commit a ref names), so a
cache hit fetches nothing; a miss fetches into ``tmp/`` and copies it as a local
source.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import secrets
from time import time_ns as now_ns
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    dumps, makedirs, remove_tree, write_file)
from ansible_collections.strata.layers.plugins.module_utils._buildcontext import (
    ContextReader, CopyPlan, ViewReader, read_build_file, workdir_layer)
from ansible_collections.strata.layers.plugins.module_utils._changes import chunk_reader
from ansible_collections.strata.layers.plugins.module_utils._compression import DecodedStream
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID, is_digest
from ansible_collections.strata.layers.plugins.module_utils import _dockerfile as dockerfile
from ansible_collections.strata.layers.plugins.module_utils._dockerfile import (
    Copy, DockerIgnore, Instruction, Run, Spec, Stage, Workdir, apply_config)
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    InvalidInput, NotFound, StoreError, Unsupported)
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import (
    host_platform, parse_config, platform_config)
from ansible_collections.strata.layers.plugins.module_utils._imagerecords import ImageRecord
from ansible_collections.strata.layers.plugins.module_utils._imageview import ImageView
from ansible_collections.strata.layers.plugins.module_utils._layers import LayerRecord, now_iso
from ansible_collections.strata.layers.plugins.module_utils import _passwd as passwd
from ansible_collections.strata.layers.plugins.module_utils._remote import RemoteError, RemoteFetch
from ansible_collections.strata.layers.plugins.module_utils._runmounts import Mount, tree_digest
from ansible_collections.strata.layers.plugins.module_utils._runsetup import (
    MountSources, RunOptions, attach_mounts, context_filter, network_files, run_environment,
    run_log)
from ansible_collections.strata.layers.plugins.module_utils._safepath import resolve_beneath
from ansible_collections.strata.layers.plugins.module_utils._sandbox import Sandbox, StepFailed
from ansible_collections.strata.layers.plugins.module_utils._store import Store

CACHE_VERSION = "strata-build-cache/2"


@dataclass
class Current:
    """Where a stage stands: the image made by its last step (None: FROM scratch, no
    step, or config-only steps not stored yet).  ``ident`` is what the next step's cache
    key builds on: the image id once stored, else the key of the last step (a chain of
    keys from the last stored image).  ``unstored`` are the results of the config-only
    steps since the last stored image, whose ``cached`` is known when it is stored."""

    config: Dict[str, Any]
    image_id: Optional[str]
    chain: List[ChainID]
    pending: bool = False   # check mode: an earlier step would run, so this is unknown
    ident: str = ""
    unstored: List["StepResult"] = field(default_factory=list)
    parent: Optional[str] = None   # the last stored image, while image_id is None

    def __post_init__(self) -> None:
        if not self.ident:
            self.ident = self.image_id or "scratch:" + hashlib.sha256(
                dumps(self.config)).hexdigest()


@dataclass
class StepResult:
    created_by: str
    empty_layer: bool
    cached: bool
    size: int = 0
    image_id: Optional[str] = None


@dataclass
class BuildResult:
    image_id: Optional[str]
    layers: List[str]
    history: List[StepResult] = field(default_factory=list)
    ran: int = 0


def scratch_config() -> Dict[str, Any]:
    return platform_config(host_platform())


class Builder:
    """One build of ``spec`` (see the module docstring)."""

    def __init__(self, store: Store, spec: Spec, context: Optional[str], no_cache: bool,
                 dry: bool, source: str = "Dockerfile",
                 options: Optional[RunOptions] = None) -> None:
        self.store = store
        self.options = options or RunOptions()
        self.spec = spec
        self.context = context
        self.no_cache = no_cache
        self.dry = dry
        self.source = source
        self.reader: Optional[ContextReader] = None
        self.results: Dict[int, Current] = {}

    # ------------------------------------------------------------------ driving
    def build(self) -> BuildResult:
        result = BuildResult(image_id=None, layers=[])
        for stage in self.spec.needed_stages():
            steps: List[StepResult] = []
            current = self._base(stage)
            self._check_depth(stage, current)
            for step in stage.instructions:
                try:
                    current, outcome = self._step(stage, step, current)
                except StoreError as exc:
                    self._at_line(exc, step)
                    raise
                steps.append(outcome)
            current = self._store_unstored(current)
            result.ran += sum(0 if outcome.cached else 1 for outcome in steps)
            self.results[stage.index] = current
            if stage.index == self.spec.target_index:
                result.history = self._history(current, steps)
                result.image_id = None if current.pending else current.image_id
                result.layers = list(current.config["rootfs"]["diff_ids"])
        return result

    def _at_line(self, exc: StoreError, step: Instruction) -> StoreError:
        """The error with the step's line in front, unless it names it already."""
        where = "%s line %d" % (self.source, step.line)
        if where not in exc.msg:
            exc.msg = "%s (%s): %s" % (where, step.keyword, exc.msg)
            exc.args = (exc.msg,)
        exc.details.setdefault("line", step.line)
        return exc

    def _check_depth(self, stage: Stage, current: Current) -> None:
        """Refuse up front a stage whose layers the driver cannot stack, naming the step
        that would go over (not after building the first hundred-odd steps)."""
        limit = self.store.driver.max_depth
        depth = len(current.chain)
        for step in stage.instructions:
            depth += 1 if step.makes_layer else 0
            if limit is not None and depth > limit:
                raise Unsupported("%s line %d (%s): this step would make layer %d of the image; "
                                  "the %s driver stacks at most %d layers: merge RUN steps or "
                                  "squash the base image" % (self.source, step.line, step.keyword,
                                                             depth, self.store.driver.name, limit),
                                  line=step.line)

    def _history(self, current: Current, steps: List[StepResult]) -> List[StepResult]:
        """The target's whole history: its base image's entries, then this build's."""
        inherited = current.config.get("history", [])[:max(0, len(current.config.get(
            "history", [])) - len(steps))]
        rows = [StepResult(h.get("created_by", ""), bool(h.get("empty_layer")), True)
                for h in inherited]
        return rows + steps

    def _base(self, stage: Stage) -> Current:
        if stage.base_stage is not None:
            return self.results[stage.base_stage]
        if stage.base == "scratch":
            return Current(_with_path(scratch_config()), None, [])
        image = self._image(stage.base, "FROM %s (line %d)" % (stage.base, stage.line))
        return Current(_with_path(json.loads(image.config.raw)), image.id,
                       [ChainID(c) for c in image.chain])

    def _image(self, ref: str, what: str) -> ImageRecord:
        try:
            return self.store.images.get(self.store.images.resolve(ref, "base image"))
        except NotFound as exc:
            raise NotFound("%s: image %s is not in the store; import, pull or build it first "
                           "(there is no registry to pull from implicitly)" % (what, ref)) from exc

    # ------------------------------------------------------------------ steps
    def _step(self, stage: Stage, step: Instruction, current: Current
              ) -> Tuple[Current, StepResult]:
        if current.pending or self._reads_pending_stage(step) or self._mounts_pending(step):
            return self._would_run(step, current, step.history("?"))
        if not (step.makes_layer or isinstance(step.args, Workdir)):
            return self._config_step(step, current)
        current = self._store_unstored(current)
        if current.pending:
            return self._would_run(step, current, step.history("?"))
        if isinstance(step.args, Copy) and step.args.remote is not None:
            fetch = RemoteFetch(step.args.remote, os.path.join(self.store.root, "cache",
                                                               "remote"), self.store.staging,
                                self.dry)
            try:
                return self._step_run(step, current, fetch)
            except RemoteError as exc:
                raise InvalidInput("%s line %d (ADD): %s" % (self.source, step.line, exc),
                                   line=step.line) from None
            finally:
                fetch.close()
        return self._step_run(step, current, None)

    def _step_run(self, step: Instruction, current: Current, fetch: Optional[RemoteFetch]
                  ) -> Tuple[Current, StepResult]:
        plan = self._copy_plan(step, current) if isinstance(step.args, Copy) and \
            fetch is None else None
        known = fetch.descriptor() if fetch is not None else ""
        if known is None:   # check mode: only a download could tell
            return self._would_run(step, current, step.history("?"))
        created_by = step.history(plan.digest() if plan is not None else known)
        key = self._key(current, step, created_by)
        hit = None if self.no_cache else self._cached(key)
        if hit is not None:
            # a WORKDIR makes a layer only when its directory was missing
            made = len(hit.chain) > len(current.chain)
            return hit, StepResult(created_by, not made, True,
                                   self._top_size(hit) if made else 0, hit.image_id)
        if self.dry:
            return self._would_run(step, current, created_by)
        if fetch is not None:
            plan = self._remote_plan(step, current, fetch)
            created_by = step.history(str(fetch.descriptor()))   # the content that arrived
            key = self._key(current, step, created_by)
        what = "%s line %d (%s)" % (self.source, step.line, step.keyword)
        if isinstance(step.args, Run):
            if not step.args.argv:
                raise InvalidInput("%s: RUN [] has no command to run (arguments are "
                                   "required)" % what, line=step.line)
            layer: Optional[LayerRecord] = self._run(step, current)
        elif plan is not None:
            layer = self._ingest(plan.tar(), current, what)
        elif isinstance(step.args, Workdir):
            layer = self._workdir(step, current, what)
        else:
            layer = None
        config = self._child(current, step, created_by, layer)
        parsed = parse_config(dumps(config), "build step")
        # the cache record first: a kill after the image is stored must still be a cache
        # hit (the config carries the time, a re-run would store a second image); a
        # record naming an image not stored yet is simply a miss
        self._remember(key, parsed.id)
        image, _added = self.store.put_image(parsed, {
            "parent": current.image_id, "build_step": created_by})
        nxt = Current(config, image.id, [ChainID(c) for c in image.chain])
        if fetch is not None:
            fetch.remember()
        crash_point("build.step")
        return nxt, StepResult(created_by, layer is None, False, layer.size if layer else 0,
                               image.id)

    def _config_step(self, step: Instruction, current: Current) -> Tuple[Current, StepResult]:
        """A step that changes the config only: applied in memory.  Storing an image per
        such step would write the whole history each time (1,200 LABEL lines, 89 MiB);
        the image is stored once, before the next layer step or at the stage's end."""
        created_by = step.history("")
        key = self._key(current, step, created_by)
        outcome = StepResult(created_by, True, False)
        nxt = Current(self._child(current, step, created_by, None), None, current.chain,
                      ident=key, unstored=current.unstored + [outcome],
                      parent=current.image_id or current.parent)
        return nxt, outcome

    def _store_unstored(self, current: Current) -> Current:
        """The image of the config-only steps since the last stored one: from the cache
        (they are all cached then), else stored now (check mode: unknown, pending)."""
        if current.image_id is not None or not current.unstored or current.pending:
            return current
        hit = None if self.no_cache else self._cached(current.ident)
        if hit is not None:
            for outcome in current.unstored:
                outcome.cached = True
            hit.ident = current.ident
            return hit
        if self.dry:
            return Current(current.config, None, current.chain, pending=True,
                           ident=current.ident)
        parsed = parse_config(dumps(current.config), "build step")
        self._remember(current.ident, parsed.id)
        image, _added = self.store.put_image(parsed, {
            "parent": current.parent, "build_step": current.unstored[-1].created_by})
        for outcome in current.unstored:
            outcome.image_id = image.id
        crash_point("build.step")
        return Current(current.config, image.id, current.chain, ident=current.ident)

    @staticmethod
    def _would_run(step: Instruction, current: Current, created_by: str
                   ) -> Tuple[Current, StepResult]:
        """Check mode: this step would run, so nothing after it can be known."""
        return (Current(current.config, None, current.chain, pending=True, ident=current.ident),
                StepResult(created_by, not step.makes_layer, False))

    def _reads_pending_stage(self, step: Instruction) -> bool:
        args = step.args
        if not isinstance(args, Copy) or args.from_stage is None:
            return False
        source = self.results.get(args.from_stage)
        return source is not None and source.pending

    def _mounts_pending(self, step: Instruction) -> bool:
        if not isinstance(step.args, Run):
            return False
        return any(m.from_stage is not None and self.results[m.from_stage].pending
                   for m in step.args.mounts)

    def _top_size(self, current: Current) -> int:
        return self.store.layers.get(current.chain[-1]).size

    def _child(self, current: Current, step: Instruction, created_by: str,
               layer: Optional[LayerRecord]) -> Dict[str, Any]:
        config = apply_config(current.config, step)
        history = list(config.get("history") or [])
        entry: Dict[str, Any] = {"created": now_iso(), "created_by": created_by}
        if layer is None:
            entry["empty_layer"] = True
        else:
            config["rootfs"] = {"type": "layers", "diff_ids": list(
                config["rootfs"].get("diff_ids") or []) + [layer.diff_id]}
        history.append(entry)
        config["history"] = history
        config["created"] = entry["created"]
        for key in ("id", "parent", "container", "container_config"):
            config.pop(key, None)
        return config

    # ------------------------------------------------------------------ cache
    def _key(self, current: Current, step: Instruction, created_by: str) -> str:
        material = [CACHE_VERSION, current.ident, step.keyword, created_by,
                    step.state.run_env() if isinstance(step.args, Run) else None,
                    step.state.workdir, step.state.user]
        if isinstance(step.args, Run) and step.args.mounts:
            # where and what is mounted, never a secret's or a cache's content; the
            # network is not part of the key (as in BuildKit)
            material.append([self._mount_key(m) for m in step.args.mounts])
        text = json.dumps(material, sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def _mount_key(self, mount: Mount) -> Dict[str, Any]:
        key = mount.key()
        if mount.type != "bind":
            return key
        if mount.from_stage is not None:
            key["from"] = self.results[mount.from_stage].ident
        elif mount.from_image:
            key["from"] = self._image(mount.from_image, "RUN --mount from=%s"
                                      % mount.from_image).id
        elif self.context:
            path = os.fsdecode(resolve_beneath(os.fsencode(os.path.realpath(self.context)),
                                               os.fsencode(mount.source.lstrip("/"))))
            keep = context_filter(self.context, self._context_visible(), path)
            key["content"] = None if not os.path.lexists(path) else tree_digest(
                path, keep or (lambda rel: True))
        return key

    def _cache_path(self, key: str) -> str:
        return os.path.join(self.store.root, "cache", "build", key)

    def _cached(self, key: str) -> Optional[Current]:
        try:
            with open(self._cache_path(key)) as handle:
                image_id = handle.read().strip()
        except FileNotFoundError:
            return None
        if not is_digest(image_id) or not self.store.images.exists(image_id):
            return None
        image = self.store.images.get(image_id)
        if not all(self.store.layers.exists(ChainID(c)) for c in image.chain):
            return None
        return Current(json.loads(image.config.raw), image.id, [ChainID(c) for c in image.chain])

    def _remember(self, key: str, image_id: str) -> None:
        makedirs(os.path.dirname(self._cache_path(key)))
        write_file(self._cache_path(key), image_id.encode() + b"\n")

    # ------------------------------------------------------------------ COPY / ADD
    def _context(self) -> ContextReader:
        if self.reader is None:
            if not self.context:
                raise InvalidInput("COPY/ADD from the build context needs the context option")
            ignore_path = os.path.join(self.context, ".dockerignore")
            text = read_build_file(self.context, ".dockerignore", ignore_path) or ""
            self.reader = ContextReader(self.context, DockerIgnore(text, ignore_path))
        return self.reader

    def _copy_plan(self, step: Instruction, current: Current) -> CopyPlan:
        args: Copy = step.args  # type: ignore[assignment]
        what = "%s line %d (%s)" % (self.source, step.line, step.keyword)
        view = ImageView(self.store.driver, current.chain)
        if args.from_stage is not None:
            source = self.results.get(args.from_stage)
            if source is None:
                raise InvalidInput("%s: stage %d was not built" % (what, args.from_stage))
            reader: Any = ViewReader(ImageView(self.store.driver, source.chain),
                                     "stage %d" % args.from_stage)
        elif args.from_image:
            image = self._image(args.from_image, what)
            reader = ViewReader(ImageView(self.store.driver, [ChainID(c) for c in image.chain]),
                                "image %s" % args.from_image)
        elif args.sources:
            reader = self._context()
        else:
            reader = ViewReader(view, "inline")
        owner = view.user_ids(args.chown) if args.chown else (0, 0)
        return CopyPlan(args, view, reader, owner, what)

    def _remote_plan(self, step: Instruction, current: Current, fetch: RemoteFetch) -> CopyPlan:
        """ADD of a URL or git repository: what arrived, copied as a local source (never
        extracted, as Docker does not extract remote archives)."""
        args: Copy = step.args  # type: ignore[assignment]
        directory, name = fetch.fetch()
        local = dataclasses.replace(args, sources=[name], is_add=False, remote=None)
        view = ImageView(self.store.driver, current.chain)
        owner = view.user_ids(args.chown) if args.chown else (0, 0)
        reader = ContextReader(directory, DockerIgnore("", directory))
        return CopyPlan(local, view, reader, owner, "%s line %d (ADD)" % (self.source, step.line))

    def _ingest(self, chunks: Any, current: Current, what: str) -> LayerRecord:
        layer, _imported, _digests = self.store.ingest_layer(
            lambda: DecodedStream(chunk_reader(iter(chunks)), what=what),
            current.chain[-1] if current.chain else None, what)
        return layer

    def _workdir(self, step: Instruction, current: Current, what: str) -> Optional[LayerRecord]:
        view = ImageView(self.store.driver, current.chain)
        owner = view.user_ids(step.state.user) if step.state.user else (0, 0)
        tar = workdir_layer(view, step.args.path, owner,  # type: ignore[union-attr]
                            int(now_ns()), what)
        return None if tar is None else self._ingest(tar, current, what)

    # ------------------------------------------------------------------ RUN
    def _run(self, step: Instruction, current: Current) -> LayerRecord:
        args: Run = step.args  # type: ignore[assignment]
        what = "%s line %d (RUN)" % (self.source, step.line)
        store = self.store
        image, _added = store.put_image(parse_config(dumps(current.config), "build base"),
                                        {"parent": current.image_id, "build_base": True}) \
            if current.image_id is None else (store.images.get(current.image_id), False)
        name = "build-" + secrets.token_hex(8)
        cid = secrets.token_hex(32)
        db = containers.ContainerDB(store.root)
        # marked before the container exists: once create() commits, its own mark says
        # "keep", and a crash before this mark was written would strand the container
        mark = store.marks.begin("build-run").set(
            record=db.path(cid),
            if_present=[(None, db.path(cid)), (store.driver.name, store.driver.container_dir(cid))],
            if_absent=[(store.driver.name, store.driver.container_dir(cid))])
        try:
            record = containers.create(store, name, image, kind="build", cid=cid)
        except BaseException:
            mark.done()
            raise
        crash_point("build.container")
        try:
            self._execute(step, args, record, current, what)
            crash_point("build.ran")
            layer, _imported = containers.commit_changes(store, record, current.chain, what)
        finally:
            containers.remove(store, record)
            mark.done()
        return layer

    def _execute(self, step: Instruction, args: Run, record: Any, current: Current,
                 what: str) -> None:
        store = self.store
        target = store.staging("run")
        store.driver.mount(record.id, current.chain, target)
        try:
            view = ImageView(store.driver, current.chain)
            try:
                who = passwd.resolve(view.read, step.state.user)
            except StoreError as exc:
                raise exc.__class__("%s: USER %s: %s" % (what, step.state.user or "root",
                                                         exc.msg)) from exc
            network = args.network or self.options.network
            hostname = record.id[:12]
            with contextlib.ExitStack() as stack:
                sandbox = stack.enter_context(Sandbox(target, hostname, network,
                                                      self.options.user_namespaces))
                env = run_environment(step.state.run_env(), who.home, hostname)
                env.update(attach_mounts(stack, sandbox, args.mounts, self._sources(), what))
                if network != "none":
                    network_files(sandbox, hostname)
                sandbox.add_files(args.files)
                sandbox.ensure_workdir(step.state.workdir, (who.uid, who.gid))
                log = run_log(record.id)
                try:
                    sandbox.run(args.argv, env, step.state.workdir, (who.uid, who.gid), what,
                                timeout=self.options.step_timeout, groups=who.groups, log=log)
                except StepFailed:
                    raise           # the log stays: the message names it
                except BaseException:
                    os.unlink(log)
                    raise
                os.unlink(log)
        finally:
            store.driver.unmount(target)
            remove_tree(target)

    def _sources(self) -> MountSources:
        return MountSources(self.store.root, self.context, self.store.staging,
                            self._mounted_root, self.options, self._context_visible())

    def _context_visible(self) -> Optional[Callable[[str], bool]]:
        """What ``.dockerignore`` keeps of the context, for bind mounts (None: all)."""
        if not self.context:
            return None
        reader = self._context()
        if not reader.ignore.patterns:
            return None
        return lambda rel: reader.visible(os.fsencode(rel))

    @contextlib.contextmanager
    def _mounted_root(self, mount: Mount):  # type: ignore[no-untyped-def]
        """The root filesystem of ``--mount from=`` (a stage or an image): a throw-away
        container, mounted under tmp/, gone after the step (rw writes with it)."""
        if mount.from_stage is not None:
            chain = self.results[mount.from_stage].chain
        else:
            chain = [ChainID(c) for c in self._image(str(mount.from_image), "RUN --mount "
                                                     "from=%s" % mount.from_image).chain]
        store = self.store
        cid = secrets.token_hex(32)
        mark = store.marks.begin("build-mount").set(
            if_absent=[(store.driver.name, store.driver.container_dir(cid))])
        target = store.staging("mount")
        try:
            store.driver.create_container(cid, chain)
            store.driver.mount(cid, chain, target)
            try:
                yield target
            finally:
                store.driver.unmount(target)
        finally:
            if store.driver.container_exists(cid):
                store.driver.remove_container(cid)
            remove_tree(target)
            mark.done()


def _with_path(image: Dict[str, Any]) -> Dict[str, Any]:
    """BuildKit gives every stage a PATH: the default one goes into the config of a base
    without one (FROM scratch included), so the image keeps it."""
    if not isinstance(image.get("config"), dict):
        image["config"] = {}
    env = list(image["config"].get("Env") or [])
    if not any(str(item).partition("=")[0] == "PATH" for item in env):
        image["config"]["Env"] = env + ["PATH=" + dockerfile.DEFAULT_PATH]
    return image
