"""The safe applier: every member type, whiteouts for both driver families,
confinement of hostile members, and byte-identical re-emission."""
from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import tarfile

import pytest

from ansible_collections.strata.layers.plugins.module_utils._apply import Applier
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    Corrupt, InvalidInput)
from ansible_collections.strata.layers.plugins.module_utils._tarformat import ChunkReader, Truncated
from ansible_collections.strata.layers.plugins.module_utils._tarsplit import TarSplitWriter, emit
from tests.support.tars import MTIME, LayerTar

MODES = ["device", "delete"]
# a VFS_CAP_REVISION_2 capability set: cap_net_raw (13) permitted and effective
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0).decode("utf-8", "surrogateescape")


def apply(tmp_path, data: bytes, mode: str = "device", root: str = "root", split: bool = True):
    target = tmp_path / root
    target.mkdir(exist_ok=True)
    writer = TarSplitWriter(str(tmp_path / ("%s.split" % root))) if split else None
    chunks = [data[i:i + 4096] for i in range(0, len(data), 4096)] + [b""]
    result = Applier(str(target), mode, writer, "test layer").apply(
        ChunkReader(iter(chunks).__next__))
    if writer:
        writer.close()
    return result


def reemit(tmp_path, root: str = "root") -> bytes:
    out = io.BytesIO()
    emit(str(tmp_path / ("%s.split" % root)), str(tmp_path / root), out.write)
    return out.getvalue()


def docker_directory_size(top: str) -> int:
    """What moby's directory.Size reports for a tree (overlay2's layer and container
    size): lstat sizes of everything but directories, each inode once."""
    seen, total = set(), 0
    for base, dirs, files in os.walk(top):
        for name in files + dirs:
            st = os.lstat(os.path.join(base, name))
            if stat.S_ISDIR(st.st_mode) or not st.st_size or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            total += st.st_size
    return total


def rich_layer() -> bytes:
    t = LayerTar()
    t.dir("etc").file("etc/passwd", b"root:x:0:0\n", mode=0o644)
    t.dir("usr/bin", mode=0o755, uid=2, gid=3)
    t.file("usr/bin/su", b"\x7fELF" * 100, mode=0o4755)
    t.file("usr/bin/ping", b"ping", mode=0o755, xattrs={"security.capability": CAP_NET_RAW})
    t.file("usr/bin/tagged", b"x", xattrs={"user.origin": "test"})
    t.hardlink("usr/bin/su2", "usr/bin/su")
    t.symlink("bin", "usr/bin")
    t.symlink("abs", "/etc/passwd")
    t.device("dev/null", 1, 3)
    t.fifo("run/fifo")
    t.file("d/" + "long" * 40 + "/file", b"deep" * 1000)
    t.file("empty", b"")
    return t.bytes()


@pytest.mark.parametrize("mode", MODES)
def test_every_member_type_is_applied_faithfully(tmp_path, mode):
    data = rich_layer()
    result = apply(tmp_path, data, mode)
    root = tmp_path / "root"
    assert result.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.tar_size == len(data)
    su = os.lstat(root / "usr/bin/su")
    assert stat.S_IMODE(su.st_mode) == 0o4755 and su.st_nlink == 2
    assert os.lstat(root / "usr/bin/su2").st_ino == su.st_ino
    assert os.stat(root / "usr/bin").st_uid == 2 and os.stat(root / "usr/bin").st_gid == 3
    assert os.readlink(root / "abs") == "/etc/passwd"
    assert os.readlink(root / "bin") == "usr/bin"
    assert os.getxattr(root / "usr/bin/tagged", "user.origin") == b"test"
    assert os.getxattr(root / "usr/bin/ping", "security.capability") == \
        CAP_NET_RAW.encode("utf-8", "surrogateescape")
    assert stat.S_ISCHR(os.lstat(root / "dev/null").st_mode)
    assert os.major(os.lstat(root / "dev/null").st_rdev) == 1
    assert stat.S_ISFIFO(os.lstat(root / "run/fifo").st_mode)
    assert os.lstat(root / "etc/passwd").st_mtime_ns == MTIME * 10**9
    assert os.lstat(root / "etc").st_mtime_ns == MTIME * 10**9
    # Docker's layer size: file data once per inode, and a symlink's target length
    assert result.size == sum(len(x) for x in (b"root:x:0:0\n", b"\x7fELF" * 100, b"ping", b"x",
                                               b"deep" * 1000, b"usr/bin", b"/etc/passwd"))
    assert result.size == docker_directory_size(str(root))
    assert reemit(tmp_path) == data


def test_gnu_format_and_gzip_padding_reemit_identically(tmp_path):
    t = LayerTar(fmt=tarfile.GNU_FORMAT)
    t.file("x" * 200, b"gnu long name")
    t.symlink("y" * 150, "z" * 150)
    data = t.bytes() + bytes(10240)  # tape-style zero padding after the end marker
    apply(tmp_path, data)
    assert reemit(tmp_path) == data


def test_overlay_whiteouts_are_devices_and_opaque_is_an_xattr(tmp_path):
    apply(tmp_path, LayerTar().whiteout("etc/gone").dir("var").opaque("var").file(
        "var/new", b"n").bytes(), "device")
    root = tmp_path / "root"
    st = os.lstat(root / "etc/gone")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(root / "var", "trusted.overlay.opaque") == b"y"
    assert (root / "var/new").read_bytes() == b"n"
    assert not (root / "etc/.wh.gone").exists()


def test_full_copy_whiteouts_delete_and_opaque_keeps_only_this_layer(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/gone").write_text("old")
    (root / "etc/kept").write_text("old")
    (root / "var/sub").mkdir(parents=True)
    (root / "var/old").write_text("old")
    (root / "var/sub/old").write_text("old")
    data = LayerTar().whiteout("etc/gone").file("var/sub/new", b"n").opaque("var").bytes()
    apply(tmp_path, data, "delete")
    assert not (root / "etc/gone").exists() and (root / "etc/kept").exists()
    assert sorted(os.listdir(root / "var")) == ["sub"]
    assert sorted(os.listdir(root / "var/sub")) == ["new"]
    assert reemit(tmp_path) == data


def outside_state(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir()), (tmp_path / "outside" / "secret").read_bytes()


HOSTILE = {
    "dotdot": lambda: LayerTar().file("../outside/secret", b"pwned").bytes(),
    "dotdot-deep": lambda: LayerTar().file("a/b/../../../outside/secret", b"pwned").bytes(),
    "absolute": lambda: LayerTar().file("/outside/secret", b"pwned").bytes(),
    "symlink-dir-escape": lambda: LayerTar().symlink("evil", "../outside").file(
        "evil/secret", b"pwned").bytes(),
    "symlink-abs-escape": lambda: LayerTar().symlink("evil", "/").file("evil/tmp/x", b"p").bytes(),
    "symlink-chain": lambda: LayerTar().symlink("a", "b").symlink("b", "../outside").file(
        "a/secret", b"pwned").bytes(),
    "hardlink-abs": lambda: LayerTar().hardlink("h", "/etc/passwd").bytes(),
    "hardlink-dotdot": lambda: LayerTar().hardlink("h", "../outside/secret").bytes(),
    "hardlink-not-in-layer": lambda: LayerTar().hardlink("h", "etc/passwd").bytes(),
    "hardlink-through-symlink": lambda: LayerTar().symlink("s", "../outside").hardlink(
        "h", "s/secret").bytes(),
    "whiteout-dotdot": lambda: LayerTar().file(".wh..", b"").bytes(),
    "whiteout-empty": lambda: LayerTar().file("etc/.wh.", b"").bytes(),
    "whiteout-through-symlink": lambda: LayerTar().symlink("s", "../outside").whiteout(
        "s/secret").bytes(),
    "opaque-root": lambda: LayerTar().file(".wh..wh..opq", b"").bytes(),
    "aufs-meta": lambda: LayerTar().dir(".wh..wh.plnk").bytes(),
    "whiteout-then-add": lambda: LayerTar().whiteout("a").file("a", b"x").bytes(),
    "add-then-whiteout": lambda: LayerTar().file("a", b"x").whiteout("a").bytes(),
    "duplicate-file": lambda: LayerTar().file("a", b"1").file("a", b"2").bytes(),
    "dir-then-file": lambda: LayerTar().file("a/b", b"1").file("a", b"2").bytes(),
    "trusted-xattr": lambda: LayerTar().file("f", b"", xattrs={
        "trusted.overlay.opaque": "y"}).bytes(),
    "trusted-redirect": lambda: LayerTar().dir("d").file("d/f", b"", xattrs={
        "trusted.overlay.redirect": "/etc"}).bytes(),
    "fuse-xattr": lambda: LayerTar().file("f", b"", xattrs={
        "user.fuseoverlayfs.opaque": "y"}).bytes(),
    "trailing-garbage": lambda: LayerTar().file("f", b"x").bytes() + b"GARBAGE" + bytes(505),
    "truncated": lambda: LayerTar().file("f", b"x" * 5000).bytes()[:3000],
    "not-a-tar": lambda: b"this is not a tar archive at all" * 40,
}

# A stream that is not a whole tar is damaged (Corrupt); every other case is a hostile member
# the stream carries intact (InvalidInput).
DAMAGED = {"trailing-garbage": Corrupt, "truncated": Truncated, "not-a-tar": Corrupt}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_members_are_refused_and_nothing_outside_changes(tmp_path, mode, case):
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret").write_bytes(b"safe")
    (tmp_path / "root").mkdir()
    before = outside_state(tmp_path)
    # the host paths the cases aim at: as they were (another process may own a /tmp/x)
    aimed = {path: host_path_state(path) for path in ("/etc/x", "/tmp/x")}
    with pytest.raises(DAMAGED.get(case, InvalidInput)) as info:
        apply(tmp_path, HOSTILE[case](), mode, split=False)
    assert "test layer" in str(info.value)
    assert outside_state(tmp_path) == before
    assert {path: host_path_state(path) for path in aimed} == aimed


def host_path_state(path: str):
    """None when ``path`` does not exist, else its inode, size, times and content."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    content = b""
    if stat.S_ISREG(st.st_mode):
        with open(path, "rb") as handle:
            content = handle.read()
    return (st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns, content)


def test_refusal_names_the_member(tmp_path):
    with pytest.raises(InvalidInput) as info:
        apply(tmp_path, LayerTar().file("ok", b"").file("../bad", b"").bytes())
    assert info.value.member == "../bad"
    assert "'../bad'" in str(info.value)


def test_nul_byte_in_pax_name_is_refused(tmp_path):
    t = LayerTar()
    info = tarfile.TarInfo("x")
    info.pax_headers = {"path": "a\0b"}
    t.tar.addfile(info)
    with pytest.raises(InvalidInput, match="NUL"):
        apply(tmp_path, t.bytes())


@pytest.mark.parametrize("mode", MODES)
def test_hardlink_lands_in_its_directory_when_the_descriptor_cache_turns_over(tmp_path, mode):
    """Found by review: opening the link target's directories evicted the link's own
    parent descriptor from the cache and its number was reused for another directory."""
    t = LayerTar()
    deep = "/".join(["d"] * 130)
    t.file(deep + "/f", b"data")
    for number in range(130):
        t.dir("top%03d" % number)
    t.dir("x").hardlink("x/link", deep + "/f")
    apply(tmp_path, t.bytes(), mode)
    root = tmp_path / "root"
    assert (root / "x" / "link").read_bytes() == b"data"
    assert os.lstat(root / "x" / "link").st_ino == os.lstat(root / deep / "f").st_ino
    assert not any(name == b"link" for _base, _dirs, files in os.walk(bytes(root / "d"))
                   for name in files)


# -------------------------------------------------- owners and modes the kernel would not give
# Files are created with their mode and, when the kernel already gave them the header's
# owner and mode, get no fchown/fchmod: these pin the cases where it would not have.

def test_files_below_a_setgid_directory_get_the_headers_group(tmp_path):
    apply(tmp_path, LayerTar().dir("d", mode=0o2775, gid=5).file("d/f", b"x", gid=0)
          .file("g", b"y", gid=0).bytes())
    assert os.lstat(tmp_path / "root" / "d").st_gid == 5
    assert os.lstat(tmp_path / "root" / "d" / "f").st_gid == 0
    assert os.lstat(tmp_path / "root" / "g").st_gid == 0


def test_modes_are_the_headers_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        apply(tmp_path, LayerTar().file("a", b"x", mode=0o644).file("b", b"x", mode=0o4755)
              .file("c", b"x", mode=0o600).bytes())
    finally:
        os.umask(old)
    modes = {n: stat.S_IMODE(os.lstat(tmp_path / "root" / n).st_mode) for n in "abc"}
    assert modes == {"a": 0o644, "b": 0o4755, "c": 0o600}


def _default_acl(user: int, group: int, other: int) -> bytes:
    """A ``system.posix_acl_default`` value (version 2; user, group, other entries)."""
    entries = ((0x01, user), (0x04, group), (0x20, other))
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", tag, perm, 0xFFFFFFFF)
                                           for tag, perm in entries)


def test_modes_are_the_headers_below_a_default_acl(tmp_path):
    (tmp_path / "root").mkdir()
    try:
        os.setxattr(tmp_path / "root", "system.posix_acl_default", _default_acl(7, 0, 0))
    except OSError as exc:
        pytest.skip("this filesystem takes no ACLs: %s" % exc)
    apply(tmp_path, LayerTar().file("a", b"x", mode=0o644).dir("d", mode=0o755)
          .file("d/b", b"x", mode=0o755).bytes())
    assert stat.S_IMODE(os.lstat(tmp_path / "root" / "a").st_mode) == 0o644
    assert stat.S_IMODE(os.lstat(tmp_path / "root" / "d" / "b").st_mode) == 0o755


# ---------------------------------------------------------------------- write-behind
# A layer read ahead (layer_import's streams) hands files of 64 KiB and more to the
# WriteBehind worker: the tree, the diff_id and the header record must be the same as
# when every file is written inline.

def _apply_read_ahead(tmp_path, data: bytes, mode: str = "device", root: str = "ahead"):
    from ansible_collections.strata.layers.plugins.module_utils._compression import open_file
    src = tmp_path / (root + ".tar")
    src.write_bytes(data)
    target = tmp_path / root
    target.mkdir()
    writer = TarSplitWriter(str(tmp_path / ("%s.split" % root)))
    stream = open_file(str(src), read_ahead=True)
    try:
        result = Applier(str(target), mode, writer, "test layer").apply(ChunkReader(stream.chunk))
    finally:
        stream.close()
        writer.close()
    return result


def _tree(top):
    out = {}
    for base, dirs, files in os.walk(top):
        for name in dirs + files:
            path = os.path.join(base, name)
            st = os.lstat(path)
            data = None
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    data = hashlib.sha256(handle.read()).hexdigest()
            holes = st.st_blocks * 512 < st.st_size
            out[os.path.relpath(path, top)] = (st.st_mode, st.st_uid, st.st_gid, st.st_size,
                                               st.st_mtime_ns, st.st_nlink, data, holes)
    return out


def _big_files_layer() -> bytes:
    t = LayerTar()
    t.dir("big", mode=0o750)
    t.file("big/one-window", os.urandom(64 << 10), mode=0o600, uid=1000, gid=1000)
    t.file("big/setuid", os.urandom(300 << 10), mode=0o4755)
    t.file("big/sparse", b"x" * 100 + bytes(4 << 20) + b"y" * 100, mode=0o644)
    t.file("big/chunks", os.urandom((3 << 20) + 12345), mode=0o640, uid=7, gid=8)
    t.hardlink("big/chunks-link", "big/chunks")
    t.file("big/small", b"small", mode=0o644)
    t.file("big/caps", os.urandom(100 << 10), mode=0o755,
           xattrs={"security.capability": CAP_NET_RAW})
    return t.bytes()


@pytest.fixture
def handed(monkeypatch):
    """The members handed to a WriteBehind worker."""
    from ansible_collections.strata.layers.plugins.module_utils import _apply
    names = []

    class Counted(_apply.WriteBehind):
        def finish(self, fd, member):
            names.append(member.name)
            super().finish(fd, member)
    monkeypatch.setattr(_apply, "WriteBehind", Counted)
    return names


@pytest.mark.parametrize("mode", MODES)
def test_write_behind_gives_the_tree_digest_and_record_of_inline_writes(tmp_path, mode, handed):
    data = _big_files_layer()
    inline = apply(tmp_path, data, mode)
    ahead = _apply_read_ahead(tmp_path, data, mode)
    assert ahead == inline
    assert ahead.diff_id == "sha256:" + hashlib.sha256(data).hexdigest()
    assert _tree(tmp_path / "ahead") == _tree(tmp_path / "root")
    assert _tree(tmp_path / "ahead")["big/sparse"][-1], "the zeros became a hole"
    assert reemit(tmp_path, "ahead") == data
    # files of a window or more, without attributes (their checks stay on the applier)
    assert sorted(handed) == [b"big/chunks", b"big/one-window", b"big/setuid", b"big/sparse"]


def test_a_stream_ending_inside_a_file_written_behind_names_it(tmp_path):
    data = _big_files_layer()
    cut = data.index(b"y" * 100)            # inside big/sparse's data
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(Corrupt, match="big/sparse") as caught:
        _apply_read_ahead(tmp_path, data[:cut])
    assert caught.value.details.get("member") == "big/sparse"
    assert len(os.listdir("/proc/self/fd")) == before, "the worker closed what it held"


def test_a_worker_error_is_raised_for_the_member_it_stopped_at(tmp_path):
    t = LayerTar()
    t.file("huge-uid", os.urandom(128 << 10), uid=1 << 40)    # chown refuses it
    t.file("after", b"z")
    with pytest.raises(InvalidInput, match="huge-uid"):
        _apply_read_ahead(tmp_path, t.bytes())


# ---------------------------------------------------------------------- early flush
# A layer read ahead (layer_import's) is flushed to disk while it is applied: an
# EarlyFlush worker runs syncfs each EVERY bytes of files.  Only when the flush
# happens changes: the tree, the digests and the record stay those of an inline apply.

@pytest.fixture
def flushes(monkeypatch):
    """The flushes started, with EarlyFlush.EVERY at 64 KiB (a few per test layer)."""
    from ansible_collections.strata.layers.plugins.module_utils import _apply
    started = []

    class Counted(_apply.EarlyFlush):
        def start(self):
            started.append(1)
            super().start()
    monkeypatch.setattr(Counted, "EVERY", 64 << 10)
    monkeypatch.setattr(_apply, "EarlyFlush", Counted)
    return started


@pytest.mark.parametrize("mode", MODES)
def test_early_flushes_change_nothing_but_when_data_reaches_the_disk(tmp_path, mode, flushes):
    data = _big_files_layer()
    inline = apply(tmp_path, data, mode)
    assert not flushes, "a stream not read ahead is flushed by its caller only"
    before = len(os.listdir("/proc/self/fd"))
    ahead = _apply_read_ahead(tmp_path, data, mode)
    assert ahead == inline
    assert _tree(tmp_path / "ahead") == _tree(tmp_path / "root")
    assert reemit(tmp_path, "ahead") == data
    assert len(flushes) >= 4, "one start for each 64 KiB of files"
    assert len(os.listdir("/proc/self/fd")) == before, "the worker's descriptor is closed"
    assert not [t for t in __import__("threading").enumerate()
                if t.name == "strata-early-flush"], "the worker has ended"


def test_a_failed_early_flush_fails_the_apply(tmp_path, monkeypatch, flushes):
    # a writeback error is reported once by syncfs: the worker's must not be lost.  The
    # kernel cannot be made to fail a writeback here, so the call itself fails
    import ctypes
    import errno
    from ansible_collections.strata.layers.plugins.module_utils import _apply
    from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError

    class Failing(_apply.EarlyFlush):
        def __init__(self, root_fd):
            super().__init__(root_fd)
            self._syncfs = lambda fd: (ctypes.set_errno(errno.EIO), -1)[1]
    monkeypatch.setattr(_apply, "EarlyFlush", Failing)
    with pytest.raises(StoreError, match="writing the layer of test layer failed: "
                                         "Input/output error"):
        _apply_read_ahead(tmp_path, _big_files_layer())


@pytest.mark.parametrize("compression", ["plain", "gzip"])
def test_layer_import_flushes_early_and_keeps_its_result(tmp_path, store_root, busybox_tar,
                                                         compression, flushes, monkeypatch):
    # the module's own path: its streams are read ahead, so they take the early flushes
    from ansible_collections.strata.layers.plugins.module_utils import _apply
    from ansible_collections.strata.layers.plugins.module_utils._ops.layer_import import (
        layer_import)
    from tests.support.tars import write
    monkeypatch.setattr(_apply.EarlyFlush, "EVERY", 4096)
    with open(busybox_tar, "rb") as handle:
        data = handle.read()
    src = write(tmp_path / "layer", data, compression)
    result = layer_import({"data_root": store_root, "src": str(src)})
    assert result["changed"]
    assert result["layers"][0]["diff_id"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert flushes, "the import flushed while it applied"
    again = layer_import({"data_root": store_root, "src": str(src)})
    assert not again["changed"]
