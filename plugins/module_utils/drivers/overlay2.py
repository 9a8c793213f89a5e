# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""overlay2: layers as overlayfs lower directories, containers as upper + work.

The home is laid out as Docker's overlay2, with layers and containers kept apart.
On-disk layout: docs/design.md, "Layout of a store" ("Each driver's home").

Mounts are made from the home directory with relative ``l/`` names so that a deep
chain fits the one-page limit on mount options (4096 bytes: about 125 layers, the
depth limit enforced at import); ``index=off`` because layers are shared read-only
between many mounts, and ``redirect_dir``/``metacopy`` off where the kernel knows
them, so that an upper directory is always a plain native diff that commit and
migration can read.
"""
from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass
from typing import Collection, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    TEMP_PREFIX, makedirs, remove_tree, temp_name, write_file)
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID, hex_of
from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError, Unsupported
from ansible_collections.strata.layers.plugins.module_utils._fsinfo import mount, umount
from ansible_collections.strata.layers.plugins.module_utils.drivers._base import (
    Candidate, Driver, HostFacts, InitFiller, Staged)

MAX_DEPTH = 125
PARAMS = "/sys/module/overlay/parameters"
_NO_OVERLAY_ON = ("overlay", "nfs", "fuse", "0x65735546", "ecryptfs", "aufs", "zfs_unsafe")


def link_name(chain: ChainID) -> str:
    digest = hashlib.sha256(b"strata-overlay2-link:" + hex_of(chain).encode()).digest()
    return base64.b32encode(digest[:16]).decode("ascii").rstrip("=")


@dataclass
class LayoutIssue:
    """One piece of the derived layout that does not match the layer records.

    ``action`` is how ``repair_layout`` puts it right: ``link`` (re-make the ``l/``
    link of ``chain``), ``write`` (write ``content`` to ``path``), ``remove``, ``mkdir``.
    """

    kind: str
    path: str
    detail: str
    action: str
    chain: Optional[ChainID] = None
    content: Optional[str] = None


def kernel_has_overlay() -> bool:
    try:
        with open("/proc/filesystems") as handle:
            return any(line.split()[-1] == "overlay" for line in handle if line.strip())
    except OSError:
        return False


def native_diff_options() -> List[str]:
    """Options that keep upper directories plain diffs, for the kernel's known options."""
    opts = ["index=off"] if os.path.exists(os.path.join(PARAMS, "index")) else []
    for name in ("redirect_dir", "metacopy"):
        if os.path.exists(os.path.join(PARAMS, name)):
            opts.append("%s=off" % name)
    return opts


class Overlay2(Driver):
    """Kernel overlayfs (layout: docs/design.md, "Each driver's home")."""

    name = "overlay2"
    whiteouts = "device"
    max_depth = MAX_DEPTH

    def init(self) -> None:
        super().init()
        makedirs(os.path.join(self.home, "l"))
        makedirs(os.path.join(self.home, "empty"), 0o755)

    # ---------------------------------------------------------------- probe
    @classmethod
    def probe(cls, facts: HostFacts) -> Candidate:
        reason = cls._static_refusal(facts)
        if reason:
            return Candidate(cls.name, False, reason)
        try:
            probe_overlay_mount(facts.probe_dir, cls._mount_probe)
        except (OSError, StoreError) as exc:
            return Candidate(cls.name, False, "a test overlay mount with two lower layers failed "
                             "on %s: %s" % (facts.backing_filesystem, exc))
        return Candidate(cls.name, True, "kernel overlayfs works on %s with d_type; native "
                         "diffs (%s)" % (facts.backing_filesystem,
                                         ", ".join(native_diff_options()) or "defaults"))

    @classmethod
    def _static_refusal(cls, facts: HostFacts) -> Optional[str]:
        if not kernel_has_overlay():
            return "the kernel has no overlay filesystem (modprobe overlay, or use fuse-overlayfs)"
        if facts.backing_filesystem in _NO_OVERLAY_ON:
            return "the data root is on %s, which overlayfs cannot use as upper layer" \
                % facts.backing_filesystem
        if not facts.supports_d_type:
            return no_d_type_reason(facts.backing_filesystem)
        return None

    @staticmethod
    def _mount_probe(lowers: List[str], upper: str, work: str, target: str) -> None:
        opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (":".join(lowers), upper, work)
        extra = native_diff_options()
        mount("overlay", target, "overlay", 0, opts + ("," + ",".join(extra) if extra else ""))

    # ---------------------------------------------------------------- layers
    def layer_files(self, chain: ChainID) -> str:
        return os.path.join(self.layer_dir(chain), "diff")

    def stage_layer(self, key: str, parent: Optional[ChainID], depth: int) -> Staged:
        if depth > MAX_DEPTH:
            raise Unsupported("the layer would be number %d of its image; overlay2 mounts at most "
                              "%d layers (the mount option page limit): squash the image"
                              % (depth, MAX_DEPTH))
        top = self.staging_dir(key)
        os.mkdir(top, 0o700)
        diff = os.path.join(top, "diff")
        os.mkdir(diff, 0o755)
        if parent is not None:
            copy_root_attrs(self.layer_files(parent), diff)
            os.mkdir(os.path.join(top, "work"), 0o700)
            write_file(os.path.join(top, "lower"), self._lower_of(parent).encode())
        return Staged(key=key, top=top, path=diff)

    def _lower_of(self, parent: ChainID) -> str:
        """The ``lower`` list of a layer whose parent is ``parent``."""
        parent_lower = os.path.join(self.layer_dir(parent), "lower")
        own = "l/" + link_name(parent)
        try:
            with open(parent_lower) as handle:
                rest = handle.read().strip()
        except FileNotFoundError:
            rest = ""
        return own + (":" + rest if rest else "")

    def commit_layer(self, staged: Staged, chain: ChainID) -> None:
        link = link_name(chain)
        write_file(os.path.join(staged.top, "link"), link.encode())
        super().commit_layer(staged, chain)
        self._ensure_link(chain, link)

    def _ensure_link(self, chain: ChainID, link: str) -> None:
        path = os.path.join(self.home, "l", link)
        target = os.path.join("..", self.layers_dir, hex_of(chain), "diff")
        try:
            if os.readlink(path) == target:
                return
            os.unlink(path)
        except FileNotFoundError:
            pass
        tmp = os.path.join(self.home, "l", temp_name(link))
        os.symlink(target, tmp)
        os.rename(tmp, path)

    def remove_layer(self, chain: ChainID) -> None:
        try:
            os.unlink(os.path.join(self.home, "l", link_name(chain)))
        except FileNotFoundError:
            pass
        super().remove_layer(chain)

    def sweep(self) -> List[str]:
        removed = super().sweep()
        links = os.path.join(self.home, "l")
        if os.path.isdir(links):
            for name in os.listdir(links):
                path = os.path.join(links, name)
                if not os.path.exists(path):  # dangling: its layer never got committed
                    os.unlink(path)
                    removed.append(path)
        return removed

    def lowerdirs(self, chain: Sequence[ChainID]) -> str:
        if not chain:
            return "empty"
        for layer in chain:
            self._ensure_link(layer, link_name(layer))
        return ":".join("l/" + link_name(layer) for layer in reversed(chain))

    # ---------------------------------------------------------------- check
    def check_layout(self, parents: Mapping[ChainID, Optional[ChainID]],
                     undecided: Collection[ChainID] = ()) -> List[LayoutIssue]:
        """What of the derived layout (``l/`` links, ``link`` and ``lower`` files,
        ``empty/``) does not match ``parents``: chain -> parent of every layer whose data
        this driver holds.  All of it can be derived again from the layer records.
        The links of ``undecided`` layers (damaged records) are left alone."""
        issues = self._check_links(parents, {link_name(c) for c in undecided})
        for chain in sorted(parents):
            issues += self._check_layer_files(chain, parents)
        empty = os.path.join(self.home, "empty")
        if not os.path.isdir(empty):
            issues.append(LayoutIssue("missing-link", empty, "the lower directory of containers "
                                      "on an image without layers is missing", "mkdir"))
        return issues

    def _check_links(self, parents: Mapping[ChainID, Optional[ChainID]],
                     skip: Collection[str]) -> List[LayoutIssue]:
        links = os.path.join(self.home, "l")
        owners = {link_name(chain): chain for chain in parents}
        try:
            names = sorted(n for n in os.listdir(links) if n not in skip)
        except FileNotFoundError:
            names = []
        issues = [i for i in (self._check_link(links, n, owners.get(n)) for n in names) if i]
        present = set(names)
        for name, chain in sorted(owners.items()):
            if name not in present:
                issues.append(LayoutIssue("missing-link", os.path.join(links, name),
                                          "the short link of layer %s is missing" % chain,
                                          "link", chain=chain))
        return issues

    def _check_link(self, links: str, name: str, chain: Optional[ChainID]
                    ) -> Optional[LayoutIssue]:
        path = os.path.join(links, name)
        if name.startswith(TEMP_PREFIX):
            return LayoutIssue("leftover", path, "a link being made when a run was interrupted",
                               "remove")
        try:
            target = os.readlink(path)
        except OSError:
            return LayoutIssue("dangling-link", path, "not a symbolic link",
                               "link" if chain else "remove", chain=chain)
        if chain is not None:
            if target == self._link_target(chain):
                return None
            return LayoutIssue("dangling-link", path, "points to %s instead of layer %s"
                               % (target, chain), "link", chain=chain)
        state = "which is not a layer of the store" if os.path.exists(path) \
            else "which does not exist"
        return LayoutIssue("dangling-link", path, "points to %s, %s" % (target, state), "remove")

    def _check_layer_files(self, chain: ChainID, parents: Mapping[ChainID, Optional[ChainID]]
                           ) -> List[LayoutIssue]:
        issues = []
        link_file = os.path.join(self.layer_dir(chain), "link")
        if _read_text(link_file) != link_name(chain):
            issues.append(LayoutIssue("missing-link", link_file, "the link file of layer %s is "
                                      "missing or wrong" % chain, "write", chain=chain,
                                      content=link_name(chain)))
        known, lower = _expected_lower(chain, parents)
        lower_file = os.path.join(self.layer_dir(chain), "lower")
        if known and _read_text(lower_file) != lower:
            issues.append(LayoutIssue(
                "missing-link", lower_file, "the lower file of layer %s is missing or does not "
                "list its parents (layers stacked on it later would mount wrong)" % chain,
                "write" if lower else "remove", chain=chain, content=lower))
        return issues

    def _link_target(self, chain: ChainID) -> str:
        return os.path.join("..", self.layers_dir, hex_of(chain), "diff")

    def repair_layout(self, issue: LayoutIssue) -> Optional[str]:
        """Put one issue right; returns what was done (None: its layer is gone)."""
        if issue.action == "remove":
            remove_tree(issue.path)
            return "removed"
        if issue.action == "mkdir":
            makedirs(issue.path, 0o755)
            return "created"
        if issue.chain is None or not os.path.isdir(self.layer_files(issue.chain)):
            return None
        if issue.action == "write":
            write_file(issue.path, (issue.content or "").encode())
            return "rewritten"
        if os.path.lexists(issue.path) and not os.path.islink(issue.path):
            remove_tree(issue.path)
        self._ensure_link(issue.chain, link_name(issue.chain))
        return "linked to %s" % self._link_target(issue.chain)

    # ---------------------------------------------------------------- containers
    def create_container(self, cid: str, chain: Sequence[ChainID],
                         init: Optional[InitFiller] = None) -> None:
        top = self.container_dir(cid)
        os.mkdir(top, 0o700)
        os.mkdir(os.path.join(top, "diff"), 0o755)
        os.mkdir(os.path.join(top, "work"), 0o700)
        if chain:
            copy_root_attrs(self.layer_files(chain[-1]), os.path.join(top, "diff"))
        if init is not None:
            self._create_init(cid, chain, init)

    def init_dir(self, cid: str) -> str:
        return os.path.join(self.container_dir(cid), "init")

    def _create_init(self, cid: str, chain: Sequence[ChainID], init: InitFiller) -> None:
        """The init layer is filled as Docker fills ``<id>-init``: mounted as the upper
        directory over the image, so a parent it needs (``etc/``) is copied up with the
        image's owner and mode; it then becomes the top lower of the container's mounts."""
        top = self.container_dir(cid)
        os.mkdir(self.init_dir(cid), 0o755)
        if chain:
            copy_root_attrs(self.layer_files(chain[-1]), self.init_dir(cid))
        work, view = os.path.join(top, "init-work"), os.path.join(top, "init-view")
        os.mkdir(work, 0o700)
        os.mkdir(view, 0o700)
        rel = os.path.join(self.containers_dir, cid)
        self._mount_from_home(view, self._overlay_options(
            self.lowerdirs(chain), rel + "/init", rel + "/init-work"))
        try:
            init(view)
        finally:
            self.unmount(view)
        remove_tree(work)
        os.rmdir(view)

    def container_root(self, cid: str) -> str:
        return os.path.join(self.container_dir(cid), "diff")

    def _overlay_options(self, lower: str, upper: str, work: str) -> str:
        return ",".join(["lowerdir=" + lower, "upperdir=" + upper, "workdir=" + work]
                        + native_diff_options())

    def mount(self, cid: str, chain: Sequence[ChainID], target: str) -> None:
        rel = os.path.join(self.containers_dir, cid)
        lower = self.lowerdirs(chain)
        if self.has_init(cid):
            lower = rel + "/init:" + lower
        self._mount_from_home(target, self._overlay_options(lower, rel + "/diff", rel + "/work"))

    def _mount_from_home(self, target: str, options: str) -> None:
        if len(options) >= 4096:
            raise Unsupported("the overlay mount options for %s exceed one page (%d bytes); the "
                              "image is too deep for overlay2" % (target, len(options)))
        target = os.path.abspath(target)
        cwd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # relative l/ names resolve against the caller's cwd: mount from the home
            os.chdir(self.home)
            mount("overlay", target, "overlay", 0, options)
        finally:
            os.fchdir(cwd)
            os.close(cwd)


def _read_text(path: str) -> Optional[str]:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _expected_lower(chain: ChainID, parents: Mapping[ChainID, Optional[ChainID]]
                    ) -> Tuple[bool, Optional[str]]:
    """(known, the ``lower`` file a layer needs: its ancestors' links, nearest first).

    Unknown when an ancestor's data is missing: there is nothing right to write then."""
    names = []
    parent = parents.get(chain)
    while parent is not None:
        if parent not in parents or len(names) > MAX_DEPTH:
            return False, None
        names.append("l/" + link_name(parent))
        parent = parents[parent]
    return True, ":".join(names) or None


def copy_root_attrs(src: str, dst: str) -> None:
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, st.st_mode & 0o7777)


def no_d_type_reason(fs: str) -> str:
    if fs == "xfs":
        return "xfs without ftype=1: no d_type, overlay would corrupt (mkfs.xfs -n ftype=1)"
    if fs == "ext4":
        return "ext4 without the filetype feature: no d_type, overlay would corrupt " \
               "(tune2fs -O filetype)"
    return "%s does not report d_type, overlay would corrupt" % fs


def probe_overlay_mount(probe_dir: str, do_mount, unmount=umount) -> None:
    """Mount two lowers with a whiteout and an opaque dir, check what the merge shows."""
    base = os.path.join(probe_dir, temp_name("overlay-probe"))
    os.makedirs(base)
    try:
        paths = {n: os.path.join(base, n) for n in ("l1", "l2", "upper", "work", "merged")}
        for path in paths.values():
            os.mkdir(path)
        for name in ("kept", "gone"):
            with open(os.path.join(paths["l1"], name), "w") as handle:
                handle.write(name)
        os.mkdir(os.path.join(paths["l1"], "opaque"))
        with open(os.path.join(paths["l1"], "opaque", "hidden"), "w"):
            pass
        os.mknod(os.path.join(paths["l2"], "gone"), 0o020000, os.makedev(0, 0))
        os.mkdir(os.path.join(paths["l2"], "opaque"))
        os.setxattr(os.path.join(paths["l2"], "opaque"), "trusted.overlay.opaque", b"y")
        do_mount([paths["l2"], paths["l1"]], paths["upper"], paths["work"], paths["merged"])
        try:
            seen = sorted(os.listdir(paths["merged"]))
            hidden = os.listdir(os.path.join(paths["merged"], "opaque"))
            with open(os.path.join(paths["merged"], "kept"), "a") as handle:
                handle.write("+")
        finally:
            unmount(paths["merged"])
        if seen != ["kept", "opaque"] or hidden:
            raise StoreError("whiteouts or opaque directories are not honoured (saw %s)" % seen)
        if not os.path.exists(os.path.join(paths["upper"], "kept")):
            raise StoreError("copy-up did not reach the upper directory")
    finally:
        remove_tree(base)
