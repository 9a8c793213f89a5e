"""A corpus of hostile layer tarballs and image archives, generated at test time.

Every case has a name, a class, a short description and its expected outcome:

* ``refused``: the import fails with the store's own error class (``error``), its
  message names the input (always) and the member or entry at fault (``needle``), and
  the store is byte for byte as it was;
* ``confined``: the import succeeds, every effect stays below the layer root, and the
  case's post-condition (``check``, described by ``post``) holds.

Nothing binary is checked in: ``build(ctx)`` writes the case's input under
``ctx.work``.  ``ctx.sentinel`` is a directory next to the store that no case may
change and ``ctx.host`` a path on ``/`` that no case may create; traversals aim at
them by absolute paths or by enough ``..`` to climb to ``/`` from any layer root.

``python tests/support/hostile.py --markdown`` prints the table of docs/reliability.md.
"""
from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import stat
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

if __name__ == "__main__":  # run as a script: make ``tests.support`` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.support.images import config_for, make_oci_layout  # noqa: E402
from tests.support.tars import MTIME, LayerTar  # noqa: E402

REFUSED = "refused"
CONFINED = "confined"
DRIVERS = ("overlay2", "vfs")
UP = 64  # this many ".." climb to "/" from any layer root
EMPTY_LAYER_DIFF_ID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"
BOMB_INFLATED = 1 << 30  # what a bomb inflates to
BOMB_MAX_SIZE = 64 << 20  # the max_size a bomb import is given
# a VFS_CAP_REVISION_2 capability set: cap_net_raw permitted and effective
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)


# ---------------------------------------------------------------------------- context

@dataclass
class Ctx:
    """Where a case writes its input, and what it must not touch."""

    work: str
    sentinel: str
    host: str

    def up(self, rel: str = "pwned") -> str:
        """A relative name that climbs to / and comes down into the sentinel."""
        return "../" * UP + self.sentinel.lstrip("/") + "/" + rel

    def file(self, name: str, data: bytes) -> str:
        os.makedirs(self.work, exist_ok=True)
        path = os.path.join(self.work, name)
        with open(path, "wb") as handle:
            handle.write(data)
        return path


@dataclass
class Input:
    """What a case imports: ``src`` with ``params``, on top of ``parents`` (layer tars)."""

    src: str
    params: Dict[str, object] = field(default_factory=dict)
    parents: List[bytes] = field(default_factory=list)
    layer: Optional[bytes] = None  # the uncompressed layer tar, when the input is one


class View:
    """Read-only helpers over an imported layer's files, for post-conditions."""

    def __init__(self, root: str, driver: str, parent_root: Optional[str], ctx: Ctx,
                 inp: Input, diff_id: str) -> None:
        self.root = os.fsencode(root)
        self.driver = driver
        self.parent_root = os.fsencode(parent_root) if parent_root else None
        self.ctx = ctx
        self.inp = inp
        self.diff_id = diff_id

    def path(self, rel: Union[str, bytes], base: Optional[bytes] = None) -> bytes:
        rel_b = rel if isinstance(rel, bytes) else rel.encode("utf-8", "surrogateescape")
        return os.path.join(base or self.root, rel_b) if rel_b else (base or self.root)

    def exists(self, rel: Union[str, bytes]) -> bool:
        return os.path.lexists(self.path(rel))

    def lstat(self, rel: Union[str, bytes]) -> os.stat_result:
        return os.lstat(self.path(rel))

    def names(self, rel: Union[str, bytes] = b"") -> List[bytes]:
        return sorted(os.listdir(self.path(rel)))

    def readlink(self, rel: Union[str, bytes]) -> bytes:
        return os.readlink(self.path(rel))

    def read(self, rel: Union[str, bytes]) -> bytes:
        with open(self.path(rel), "rb") as handle:
            return handle.read()

    def xattr(self, rel: Union[str, bytes], name: str) -> Optional[bytes]:
        try:
            return os.getxattr(self.path(rel), name, follow_symlinks=False)
        except OSError:
            return None


def expect(condition: bool, what: str) -> None:
    """A post-condition (a plain function so the table script needs no pytest)."""
    if not condition:
        raise AssertionError(what)


# ---------------------------------------------------------------------------- the case

@dataclass
class Case:
    name: str
    cls: str
    description: str
    outcome: str
    build: Callable[[Ctx], Input]
    error: Optional[str] = None  # class name in _errors, for refused cases
    needle: Optional[str] = None  # what the message must name besides the input
    post: str = ""  # the post-condition, in words (confined cases)
    check: Optional[Callable[[View], None]] = None
    by_driver: Dict[str, str] = field(default_factory=dict)  # outcome overrides
    targets: Tuple[str, ...] = ()  # host paths that must stay as they were
    bomb: bool = False  # run in a subprocess, peak RSS measured
    keeps_verified_layers: bool = False  # an archive whose layer N fails keeps layers < N

    def outcome_for(self, driver: str) -> str:
        return self.by_driver.get(driver, self.outcome)

    def needle_for(self, ctx: Ctx) -> Optional[str]:
        if self.needle is None:
            return None
        return self.needle.format(sentinel=ctx.sentinel, host=ctx.host)


# ---------------------------------------------------------------------------- raw tar

_FIELDS = {"name": (0, 100), "mode": (100, 108), "uid": (108, 116), "gid": (116, 124),
           "size": (124, 136), "mtime": (136, 148), "chksum": (148, 156),
           "typeflag": (156, 157), "linkname": (157, 257), "magic": (257, 265),
           "uname": (265, 297), "gname": (297, 329), "devmajor": (329, 337),
           "devminor": (337, 345), "prefix": (345, 500)}
END = bytes(1024)


def _b(value: Union[str, bytes]) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def header(name: Union[str, bytes], typeflag: bytes = b"0", size: int = 0, mode: int = 0o644,
           linkname: Union[str, bytes] = b"", devmajor: int = 0, devminor: int = 0,
           uid: int = 0, gid: int = 0, mtime: int = MTIME, magic: bytes = b"ustar\x0000",
           raw: Optional[Dict[str, bytes]] = None, checksum: Optional[bytes] = None) -> bytes:
    """One 512-byte header; ``raw`` overrides fields byte for byte (the checksum is
    computed afterwards unless ``checksum`` is given)."""
    values = {"name": _b(name), "mode": b"%07o\0" % mode, "uid": b"%07o\0" % uid,
              "gid": b"%07o\0" % gid, "size": b"%011o\0" % size, "mtime": b"%011o\0" % mtime,
              "typeflag": typeflag, "linkname": _b(linkname), "magic": magic,
              "uname": b"root", "gname": b"root", "devmajor": b"%07o\0" % devmajor,
              "devminor": b"%07o\0" % devminor}
    values.update(raw or {})
    block = bytearray(512)
    for key, value in values.items():
        start, end = _FIELDS[key]
        if len(value) > end - start:
            raise ValueError("field %s too long" % key)
        block[start:start + len(value)] = value
    block[148:156] = b" " * 8
    block[148:156] = checksum if checksum is not None else b"%06o\0 " % sum(block)
    return bytes(block)


def pad(data: bytes) -> bytes:
    return data + bytes((-len(data)) % 512)


def entry(name: Union[str, bytes], data: bytes = b"", typeflag: bytes = b"0", **kw) -> bytes:
    """A member; a name too long for ustar goes into a PAX path record."""
    name = _b(name)
    if len(name) > 100:
        return pax([(b"path", name)]) + header(name[:100], typeflag, size=len(data), **kw) + \
            pad(data)
    return header(name, typeflag, size=len(data), **kw) + pad(data)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length = len(b"%d" % length) + len(body)
    return b"%d" % length + body


def pax(records: Sequence[Tuple[bytes, bytes]] = (), typeflag: bytes = b"x",
        data: Optional[bytes] = None) -> bytes:
    """A PAX extension header (``data`` given raw for malformed records)."""
    if data is None:
        data = b"".join(pax_record(k, v) for k, v in records)
    return header(b"PaxHeaders/x", typeflag, size=len(data)) + pad(data)


def gnu_long(kind: bytes, value: Union[str, bytes]) -> bytes:
    data = _b(value) + b"\0"
    return header(b"././@LongLink", kind, size=len(data), mode=0) + pad(data)


def tar(*parts: bytes) -> bytes:
    return b"".join(parts) + END


def base256(value: int, width: int = 12) -> bytes:
    """GNU base-256: two's complement, top bit set."""
    raw = bytearray(value.to_bytes(width, "big", signed=True))
    raw[0] |= 0x80
    return bytes(raw)


# ---------------------------------------------------------------------------- builders

def layer(data: bytes, compression: str = "plain", parents: Sequence[bytes] = (),
          **params: object) -> Callable[[Ctx], Input]:
    """A builder importing ``data`` as one layer file (format auto, as users do)."""
    def build(ctx: Ctx) -> Input:
        return layer_input(ctx, data, compression, parents, **params)
    return build


def layer_input(ctx: Ctx, data: bytes, compression: str = "plain",
                parents: Sequence[bytes] = (), **params: object) -> Input:
    src = ctx.file("layer.tar" + {"plain": "", "gzip": ".gz", "zstd": ".zst", "xz": ".xz",
                                  "bzip2": ".bz2"}[compression], compress(data, compression))
    return Input(src=src, params=dict(params), parents=list(parents), layer=data)


def dynamic(make: Callable[[Ctx], bytes], compression: str = "plain",
            parents: Union[Sequence[bytes], Callable[[Ctx], List[bytes]]] = (),
            **params: object) -> Callable[[Ctx], Input]:
    """A layer (and parents) whose bytes depend on the context (the sentinel's path)."""
    def build(ctx: Ctx) -> Input:
        stack = parents(ctx) if callable(parents) else parents
        return layer_input(ctx, make(ctx), compression, stack, **params)
    return build


def compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return subprocess.run(["zstd", "-q", "-c"], input=data, stdout=subprocess.PIPE,
                              check=True).stdout
    if compression == "xz":
        return lzma.compress(data)
    if compression == "bzip2":
        return bz2.compress(data)
    return data


def lt(fmt: int = tarfile.PAX_FORMAT) -> LayerTar:
    return LayerTar(fmt=fmt)


# ---------------------------------------------------------------------------- checks

def only(*names: Union[str, bytes]) -> Callable[[View], None]:
    """The layer root holds exactly ``names`` (byte-exact)."""
    want = sorted(_b(n) for n in names)

    def check(v: View) -> None:
        expect(v.names() == want, "root holds %r, expected %r" % (v.names(), want))
    return check


def all_of(*checks: Callable[[View], None]) -> Callable[[View], None]:
    def check(v: View) -> None:
        for one in checks:
            one(v)
    return check


def symlink_is(rel: str, target_of: Callable[[Ctx], str]) -> Callable[[View], None]:
    def check(v: View) -> None:
        expect(stat.S_ISLNK(v.lstat(rel).st_mode), "%s is not a symlink" % rel)
        expect(v.readlink(rel) == _b(target_of(v.ctx)), "%s points elsewhere" % rel)
    return check


def whiteout_of(rel: str) -> Callable[[View], None]:
    """overlay2: a 0/0 character device; vfs: the path is gone from the layer's copy."""
    def check(v: View) -> None:
        if v.driver == "overlay2":
            st = v.lstat(rel)
            expect(stat.S_ISCHR(st.st_mode) and st.st_rdev == 0, "%s is no whiteout" % rel)
        else:
            expect(not v.exists(rel), "%s still exists" % rel)
    return check


def parent_keeps(rel: str) -> Callable[[View], None]:
    def check(v: View) -> None:
        expect(v.parent_root is not None and os.path.lexists(v.path(rel, v.parent_root)),
               "the parent layer lost %s" % rel)
    return check


def mode_is(rel: str, mode: int) -> Callable[[View], None]:
    def check(v: View) -> None:
        got = stat.S_IMODE(v.lstat(rel).st_mode)
        expect(got == mode, "%s has mode %o, expected %o" % (rel, got, mode))
    return check


def opaque(rel: str) -> Callable[[View], None]:
    def check(v: View) -> None:
        if v.driver == "overlay2":
            expect(v.xattr(rel, "trusted.overlay.opaque") == b"y", "%s is not opaque" % rel)
    return check


# ---------------------------------------------------------------------------- archives

def docker_archive(ctx: Ctx, layers: Sequence[bytes], manifest_edit=None, config: Optional[bytes] = None,
                   extra: Sequence[object] = (), layer_names: Optional[List[str]] = None,
                   skip_layers: bool = False, config_name: Optional[str] = None) -> str:
    """A docker-archive (as ``docker save`` writes) with hooks to make it hostile."""
    config = config if config is not None else config_for(layers)
    config_name = config_name or hashlib.sha256(config).hexdigest() + ".json"
    names = layer_names or ["%s/layer.tar" % hashlib.sha256(d).hexdigest() for d in layers]
    manifest = [{"Config": config_name, "RepoTags": ["hostile:1"], "Layers": names}]
    if manifest_edit is not None:
        manifest_edit(manifest)
    members: List[Tuple[tarfile.TarInfo, Optional[bytes]]] = []

    def add(name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mtime = MTIME
        members.append((info, data))
    add("manifest.json", json.dumps(manifest).encode())
    add(config_name, config)
    if not skip_layers:
        for name, data in zip(names, layers):
            add(name, data)
    for item in extra:  # a TarInfo (a link), or (name, data)
        if isinstance(item, tarfile.TarInfo):
            members.append((item, None))
        else:
            add(*item)
    os.makedirs(ctx.work, exist_ok=True)
    path = os.path.join(ctx.work, "image.tar")
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as out:
        for info, data in members:
            out.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def link_info(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    info.mtime = MTIME
    return info


def archive(make: Callable[[Ctx], str], fmt: str = "docker-archive") -> Callable[[Ctx], Input]:
    def build(ctx: Ctx) -> Input:
        return Input(src=make(ctx), params={"format": fmt})
    return build


GOOD = LayerTar().dir("etc").file("etc/os-release", b"ID=hostile\n").bytes()


def oci(ctx: Ctx, layers: Sequence[bytes] = (GOOD,), compress_layers: bool = False) -> Tuple[str, dict]:
    path = os.path.join(ctx.work, "layout")
    info = make_oci_layout(path, layers, ref="hostile:1", compress=compress_layers)
    return path, info


def blob_path(layout: str, digest: str) -> str:
    return os.path.join(layout, "blobs", "sha256", digest[7:])


def rewrite_json(path: str, edit) -> None:
    with open(path) as handle:
        data = json.load(handle)
    edit(data)
    with open(path, "w") as handle:
        json.dump(data, handle)


def oci_case(edit: Callable[[Ctx, str, dict], None], fmt: str = "oci-layout") -> Callable[[Ctx], Input]:
    """An OCI layout made by hand, then ``edit``-ed; ``oci-archive`` tars it up."""
    def build(ctx: Ctx) -> Input:
        path, info = oci(ctx)
        edit(ctx, path, info)
        if fmt == "oci-layout":
            return Input(src=path, params={"format": fmt})
        out = os.path.join(ctx.work, "oci.tar")
        subprocess.run(["tar", "-C", path, "-cf", out, "."], check=True)
        return Input(src=out, params={"format": fmt})
    return build


def nested_index(ctx: Ctx, layout: str, info: dict, tamper: bool) -> None:
    """Put the manifest behind an image index (the multi-platform form)."""
    with open(os.path.join(layout, "index.json")) as handle:
        top = json.load(handle)
    desc = dict(top["manifests"][0])
    desc["platform"] = {"os": "linux", "architecture": os.uname().machine.replace(
        "x86_64", "amd64").replace("aarch64", "arm64")}
    nested = json.dumps({"schemaVersion": 2, "manifests": [desc]}).encode()
    digest = "sha256:" + hashlib.sha256(nested).hexdigest()
    with open(blob_path(layout, digest), "wb") as handle:
        handle.write(nested + (b" " if tamper else b""))
    top["manifests"] = [{"mediaType": "application/vnd.oci.image.index.v1+json",
                         "digest": digest, "size": len(nested)}]
    with open(os.path.join(layout, "index.json"), "w") as handle:
        json.dump(top, handle)


def set_layer_digest(value: str) -> Callable[[Ctx, str, dict], None]:
    def edit(ctx: Ctx, layout: str, info: dict) -> None:
        manifest_file = blob_path(layout, info["manifest"])
        with open(manifest_file) as handle:
            manifest = json.load(handle)
        manifest["layers"][0]["digest"] = value
        raw = json.dumps(manifest).encode()
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        with open(blob_path(layout, digest), "wb") as handle:
            handle.write(raw)
        rewrite_json(os.path.join(layout, "index.json"),
                     lambda top: top["manifests"][0].update(digest=digest, size=len(raw)))
    return edit


def replace_with_symlink(which: str, target: Callable[[Ctx], str]) -> Callable[[Ctx, str, dict], None]:
    def edit(ctx: Ctx, layout: str, info: dict) -> None:
        path = os.path.join(layout, "index.json") if which == "index" else \
            blob_path(layout, info["layers"][0]["digest"] if which == "layer" else info[which])
        os.unlink(path)
        os.symlink(target(ctx), path)
    return edit


def tamper_blob(which: str) -> Callable[[Ctx, str, dict], None]:
    def edit(ctx: Ctx, layout: str, info: dict) -> None:
        with open(blob_path(layout, info[which]), "ab") as handle:
            handle.write(b" ")
    return edit


def diff_ids_mismatch(ctx: Ctx, layout: str, info: dict) -> None:
    config = config_for([GOOD, GOOD])
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    with open(blob_path(layout, digest), "wb") as handle:
        handle.write(config)
    manifest_file = blob_path(layout, info["manifest"])
    with open(manifest_file) as handle:
        manifest = json.load(handle)
    manifest["config"].update(digest=digest, size=len(config))
    raw = json.dumps(manifest).encode()
    mdigest = "sha256:" + hashlib.sha256(raw).hexdigest()
    with open(blob_path(layout, mdigest), "wb") as handle:
        handle.write(raw)
    rewrite_json(os.path.join(layout, "index.json"),
                 lambda top: top["manifests"][0].update(digest=mdigest, size=len(raw)))


def manifest_digest(value: str) -> Callable[[Ctx, str, dict], None]:
    def edit(ctx: Ctx, layout: str, info: dict) -> None:
        rewrite_json(os.path.join(layout, "index.json"),
                     lambda top: top["manifests"][0].update(digest=value))
    return edit


# ---------------------------------------------------------------------------- bombs

def gzip_bomb(ctx: Ctx) -> Input:
    """A one-file layer of BOMB_INFLATED zero bytes, gzip level 9 (about 1 MB)."""
    path = os.path.join(ctx.work, "bomb.tar.gz")
    os.makedirs(ctx.work, exist_ok=True)
    deflate = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as out:
        for piece in _bomb_stream():
            out.write(deflate.compress(piece))
        out.write(deflate.flush())
    return Input(src=path, params={"max_size": BOMB_MAX_SIZE})


def zstd_bomb(ctx: Ctx) -> Input:
    path = os.path.join(ctx.work, "bomb.tar.zst")
    os.makedirs(ctx.work, exist_ok=True)
    with open(path, "wb") as out:
        proc = subprocess.Popen(["zstd", "-q", "-c", "-19"], stdin=subprocess.PIPE, stdout=out)
        try:
            for piece in _bomb_stream():
                proc.stdin.write(piece)
        finally:
            proc.stdin.close()
            proc.wait()
    return Input(src=path, params={"max_size": BOMB_MAX_SIZE})


def _bomb_stream():
    yield header("zeros", size=BOMB_INFLATED)
    chunk = bytes(1 << 20)
    for _number in range(BOMB_INFLATED >> 20):
        yield chunk
    yield END


def extension_flood(kind: bytes, count: int = 300) -> Callable[[Ctx], Input]:
    """``count`` extension headers of almost 1 MiB each before (or between) members,
    gzip-compressed: every header is under the per-header limit, together they are not."""
    def build(ctx: Ctx) -> Input:
        path = os.path.join(ctx.work, "flood.tar.gz")
        os.makedirs(ctx.work, exist_ok=True)
        deflate = zlib.compressobj(6, zlib.DEFLATED, 31)
        with open(path, "wb") as out:
            for number in range(count):
                if kind == b"L":
                    out.write(deflate.compress(gnu_long(b"L", b"a" * ((1 << 20) - 2))))
                else:  # global PAX headers, each with a new key: they accumulate
                    key = b"strata.flood.%d" % number
                    out.write(deflate.compress(pax([(key, b"v" * ((1 << 20) - 100))], b"g")))
                    out.write(deflate.compress(entry("f%d" % number, b"x")))
            out.write(deflate.compress(tar(entry("last", b"x"))))
            out.write(deflate.flush())
        return Input(src=path)
    return build


def zstd_window_bomb(ctx: Ctx) -> Input:
    """A zstd frame that declares a 2 GiB window (made by hand: compressing with
    ``--long=31`` would itself need the 2 GiB); its blocks are stored raw."""
    data = LayerTar().file("f", b"w" * 1000).bytes()
    return Input(src=ctx.file("window.tar.zst", zstd_frame(data, window_log=31)), layer=data)


def zstd_frame(data: bytes, window_log: int) -> bytes:
    """One zstd frame: no content size, no checksum, the window given, raw blocks."""
    out = bytearray(b"\x28\xb5\x2f\xfd\x00")
    out.append((window_log - 10) << 3)
    pieces = [data[i:i + (1 << 17)] for i in range(0, len(data), 1 << 17)] or [b""]
    for number, piece in enumerate(pieces):
        last = 1 if number == len(pieces) - 1 else 0
        out += ((len(piece) << 3) | last).to_bytes(3, "little") + piece
    return bytes(out)


# ---------------------------------------------------------------------------- the corpus

def _deep(levels: int, component: str = "abc") -> List[str]:
    return ["/".join([component] * n) for n in range(1, levels + 1)]


def _deep_explicit() -> bytes:
    t = lt()
    for path in _deep(1000):
        t.dir(path)
    t.file(_deep(1000)[-1] + "/f", b"deep")
    return t.bytes()


def _block_device_of_root() -> Tuple[int, int]:
    dev = os.stat("/").st_dev
    return os.major(dev), os.minor(dev)


def _pax_smuggle() -> bytes:
    """ustar says 1024 bytes of data (a tar inside); PAX says 0: a PAX-aware reader sees
    the 'data' as the next header, an escaping member."""
    hidden = entry("../" * UP + "tmp/smuggled", b"pwned")
    return tar(pax([(b"size", b"0")]), header("innocent", size=len(hidden)) + hidden)


def _odd_names() -> bytes:
    t = lt()
    for name in ("new\nline", "-rf", "--help", "~", "*?[glob]", "...", "sp ace", "tab\tbed",
                 "esc\x1b[31m", "\u202eevil.txt", "caf\u00e9", "cafe\u0301", "\U0001f600",
                 "A", "a", "back\\slash"):
        t.file(name, name.encode("utf-8", "surrogateescape"))
    return t.bytes()


ODD_NAMES = ["new\nline", "-rf", "--help", "~", "*?[glob]", "...", "sp ace", "tab\tbed",
             "esc\x1b[31m", "\u202eevil.txt", "caf\u00e9", "cafe\u0301", "\U0001f600", "A", "a",
             "back\\slash"]


def _invalid_utf8(fmt: int) -> bytes:
    t = lt(fmt)
    t.file("bad\udcff\udcfe", b"latin-1 \xff")
    t.dir("dir\udce9")
    t.file("dir\udce9/x\udc80", b"x")
    return t.bytes()


def cases() -> List[Case]:
    """The whole corpus, in table order."""
    out: List[Case] = []
    out += _traversal()
    out += _long_names()
    out += _links()
    out += _whiteouts()
    out += _xattrs()
    out += _special()
    out += _duplicates()
    out += _corrupt()
    out += _trailing()
    out += _bombs()
    out += _paths()
    out += _names()
    out += _pax_cases()
    out += _formats()
    out += _archives()
    return out


def _traversal() -> List[Case]:
    c = "traversal"
    return [
        Case("dotdot-name", c, "a file named ../../..(x64)/<sentinel>/pwned", REFUSED,
             dynamic(lambda ctx: lt().file(ctx.up(), b"pwned").bytes()),
             "InvalidInput", "pwned"),
        Case("dotdot-inside-name", c, "a/b/../../../... climbing out from inside the tree",
             REFUSED, dynamic(lambda ctx: lt().dir("a").file("a/b/../../" + ctx.up(), b"p").bytes()),
             "InvalidInput", "pwned"),
        Case("dotdot-staying-inside", c, "a/../b stays inside but still has a '..' component "
             "(refused on principle: no '..' is ever resolved)", REFUSED,
             layer(lt().dir("a").file("a/../b", b"x").bytes()), "InvalidInput", "a/../b"),
        Case("absolute-name", c, "a file named /<host>/pwned (an absolute name)", REFUSED,
             dynamic(lambda ctx: tar(entry(ctx.host + "/pwned", b"pwned"))),
             "InvalidInput", "{host}/pwned"),
        Case("absolute-sentinel", c, "an absolute name inside the sentinel directory", REFUSED,
             dynamic(lambda ctx: tar(entry(ctx.sentinel + "/secret", b"pwned"))),
             "InvalidInput", "{sentinel}/secret"),
        Case("dot-slash-dotdot", c, "./../ prefix (tar -C style) that climbs out", REFUSED,
             dynamic(lambda ctx: tar(entry("./" + ctx.up(), b"pwned"))), "InvalidInput", "pwned"),
        Case("dotdot-directory", c, "a directory entry named ../", REFUSED,
             layer(tar(entry("../", typeflag=b"5", mode=0o755))), "InvalidInput", "../"),
        Case("backslash-name", c, "..\\..\\etc\\passwd: backslashes are ordinary characters",
             CONFINED, layer(tar(entry("..\\..\\etc\\passwd", b"root::0:0::/:/bin/sh\n"))),
             post="one file at the root whose name is the 18 bytes given; /etc/passwd unchanged",
             check=only("..\\..\\etc\\passwd"), targets=("/etc/passwd",)),
        Case("root-as-file", c, "a regular file named ./ (the layer root itself)", REFUSED,
             layer(tar(entry("./", b"x"))), "InvalidInput", "./"),
        Case("root-as-symlink", c, "the root entry '.' as a symlink to /", REFUSED,
             layer(tar(entry(".", typeflag=b"2", linkname="/"), entry("etc/x", b"x"))),
             "InvalidInput", "."),
        Case("root-dir-metadata", c, "./ as a directory with mode 0700 and owner 1:1", CONFINED,
             layer(lt().dir(".", mode=0o700, uid=1, gid=1).file("f", b"x").bytes()),
             post="the layer root takes mode 0700 and owner 1:1; nothing else changes",
             check=lambda v: expect(stat.S_IMODE(v.lstat("").st_mode) == 0o700 and
                                    v.lstat("").st_uid == 1, "root metadata not applied")),
    ]


def _long_names() -> List[Case]:
    c = "long names"
    long_name = "/".join(["l" * 60] * 5) + "/file"
    return [
        Case("pax-long-name", c, "a 305-byte name in a PAX path record", CONFINED,
             layer(lt().file(long_name, b"long").bytes()),
             post="the file exists under its full name; re-emitted byte-identical",
             check=lambda v: expect(v.read(long_name) == b"long", "long name lost")),
        Case("gnu-long-name", c, "a 305-byte name in a GNU ././@LongLink (L) header", CONFINED,
             layer(lt(tarfile.GNU_FORMAT).file(long_name, b"long").bytes()),
             post="the file exists under its full name; re-emitted byte-identical",
             check=lambda v: expect(v.read(long_name) == b"long", "long name lost")),
        Case("pax-long-traversal", c, "a PAX path of 200+ bytes that climbs out", REFUSED,
             dynamic(lambda ctx: tar(pax([(b"path", _b(ctx.up()))]), entry("short", b"p"))),
             "InvalidInput", "pwned"),
        Case("pax-path-overrides-ustar", c, "ustar name 'innocent.txt', PAX path escaping: the "
             "PAX name is the one judged", REFUSED,
             dynamic(lambda ctx: tar(pax([(b"path", _b(ctx.up()))]), entry("innocent.txt", b"p"))),
             "InvalidInput", "pwned"),
        Case("pax-global-path", c, "a PAX global header setting path=../... for every member",
             CONFINED, dynamic(lambda ctx: tar(pax([(b"path", _b(ctx.up()))], b"g"),
                                               entry("innocent.txt", b"p"))),
             post="global headers apply to no member, as Docker's reader ignores them: "
                  "innocent.txt under its own name, the sentinel untouched",
             check=only("innocent.txt")),
        Case("gnu-longname-over-pax-path", c, "a GNU long name and a PAX path for one member: "
             "the long name wins, as Go's archive/tar (Docker's reader) reads it", CONFINED,
             layer(tar(pax([(b"path", b"benign")]), gnu_long(b"L", "longname-wins"),
                       entry("short", b"d"))),
             post="the file is longname-wins, the name Docker extracts",
             check=only("longname-wins")),
        Case("pax-global-size", c, "a PAX global header with size=1024: applied to no member, "
             "so it cannot swallow the next member as data", CONFINED,
             layer(tar(pax([(b"size", b"1024")], b"g"), entry("a", b"1"), entry("hidden", b"h"),
                       entry("b", b"2"))),
             post="a, hidden and b, as Docker extracts them",
             check=only("a", "b", "hidden")),
        Case("dir-with-size", c, "a directory header declaring 512 bytes of data, which is the "
             "next member's header: a directory carries no data, as in Go", CONFINED,
             layer(tar(header("d/", b"5", size=512, mode=0o755), entry("evil", b"e"),
                       entry("ok", b"o"))),
             post="d, evil and ok, as Docker extracts them (none hidden)",
             check=only("d", "evil", "ok")),
        Case("oldstyle-dir-slash", c, "an old-style (NUL type) member named x/ then x/child: "
             "a directory, as Go, GNU tar and Python read it", CONFINED,
             layer(tar(header("x/", b"\0", mode=0o755), entry("x/child", b"c"))),
             post="x is a directory holding child",
             check=lambda v: expect(v.names("x") == [b"child"], "x holds %r" % v.names("x"))),
        Case("gnu-longname-traversal", c, "GNU long name (L) that climbs out", REFUSED,
             dynamic(lambda ctx: tar(gnu_long(b"L", ctx.up()), entry("innocent", b"p"))),
             "InvalidInput", "pwned"),
        Case("gnu-longlink-hardlink-traversal", c, "hardlink whose GNU long link name (K) climbs "
             "to the sentinel", REFUSED,
             dynamic(lambda ctx: tar(gnu_long(b"K", ctx.up("secret")),
                                     header("h", b"1", linkname="innocent"))),
             "InvalidInput", "h"),
        Case("gnu-longlink-symlink-outside", c, "symlink whose GNU long link name points into the "
             "sentinel", CONFINED,
             dynamic(lambda ctx: tar(gnu_long(b"K", ctx.up("secret")),
                                     header("s", b"2", linkname="innocent"))),
             post="symlink s stored verbatim (its long target), the sentinel untouched",
             check=symlink_is("s", lambda ctx: ctx.up("secret"))),
        Case("pax-linkpath-override", c, "hardlink with a harmless ustar linkname and a PAX "
             "linkpath of /etc/shadow", REFUSED,
             layer(tar(entry("innocent", b"x"), pax([(b"linkpath", b"/etc/shadow")]),
                       header("h", b"1", linkname="innocent"))),
             "InvalidInput", "h", targets=("/etc/shadow",)),
        Case("ustar-prefix-traversal", c, "a ustar prefix field of ../../.. joined to the name",
             REFUSED, layer(tar(header("pwned", size=1, raw={"prefix": b"../" * 50}) + pad(b"p"))),
             "InvalidInput", "pwned"),
        Case("gnu-longname-nul", c, "GNU long name 'safe\\0../../evil': cut at the NUL, as GNU "
             "tar and Go read it", CONFINED,
             layer(tar(gnu_long(b"L", b"safe\0" + b"../" * UP + b"tmp/evil"), entry("x", b"s"))),
             post="one file named 'safe'", check=only("safe")),
        Case("pax-path-nul", c, "a PAX path with a NUL byte in it", REFUSED,
             layer(tar(pax([(b"path", b"ok\0" + b"../" * 8 + b"evil")]), entry("x", b""))),
             "InvalidInput", "NUL"),
    ]


def _links() -> List[Case]:
    c = "links"
    parent_dir = LayerTar().dir("a").file("a/kept", b"k").bytes()
    return [
        Case("symlink-absolute-verbatim", c, "symlink evil -> /etc/shadow, nothing written "
             "through it", CONFINED, layer(lt().symlink("evil", "/etc/shadow").bytes()),
             post="evil is a symlink to /etc/shadow stored verbatim; /etc/shadow unchanged",
             check=symlink_is("evil", lambda ctx: "/etc/shadow"), targets=("/etc/shadow",)),
        Case("symlink-dir-write-through", c, "symlink evil -> <sentinel>, then evil/pwned",
             REFUSED, dynamic(lambda ctx: lt().symlink("evil", ctx.sentinel).file(
                 "evil/pwned", b"p").bytes()), "InvalidInput", "evil/pwned"),
        Case("symlink-relative-write-through", c, "symlink evil -> ../..(x64)/<sentinel>, then "
             "evil/pwned", REFUSED,
             dynamic(lambda ctx: lt().symlink("evil", ctx.up("")[:-1]).file(
                 "evil/pwned", b"p").bytes()), "InvalidInput", "evil/pwned"),
        Case("symlink-chain-write-through", c, "a -> b, b -> <sentinel>, then a/pwned", REFUSED,
             dynamic(lambda ctx: lt().symlink("a", "b").symlink("b", ctx.sentinel).file(
                 "a/pwned", b"p").bytes()), "InvalidInput", "a/pwned"),
        Case("symlink-chain-verbatim", c, "a -> b -> /etc/shadow, nothing written through",
             CONFINED, layer(lt().symlink("a", "b").symlink("b", "/etc/shadow").bytes()),
             post="two symlinks stored verbatim; /etc/shadow unchanged",
             check=all_of(symlink_is("a", lambda ctx: "b"),
                          symlink_is("b", lambda ctx: "/etc/shadow")),
             targets=("/etc/shadow",)),
        Case("symlink-then-directory", c, "symlink d -> <sentinel>, then a directory entry d/",
             REFUSED, dynamic(lambda ctx: lt().symlink("d", ctx.sentinel).dir("d").bytes()),
             "InvalidInput", "d"),
        Case("symlink-then-hardlink-through", c, "symlink s -> <sentinel>, hardlink h -> "
             "s/secret", REFUSED,
             dynamic(lambda ctx: lt().symlink("s", ctx.sentinel).hardlink("h", "s/secret").bytes()),
             "InvalidInput", "h"),
        Case("hardlink-absolute", c, "hardlink h -> /etc/shadow", REFUSED,
             layer(lt().hardlink("h", "/etc/shadow").bytes()), "InvalidInput", "h",
             targets=("/etc/shadow",)),
        Case("hardlink-dotdot", c, "hardlink h -> ../..(x64)/<sentinel>/secret", REFUSED,
             dynamic(lambda ctx: lt().hardlink("h", ctx.up("secret")).bytes()),
             "InvalidInput", "h"),
        Case("hardlink-to-escaping-symlink", c, "symlink s -> /etc/shadow, hardlink h -> s",
             CONFINED, layer(lt().symlink("s", "/etc/shadow").hardlink("h", "s").bytes()),
             post="h is a second name of the symlink s (same inode), not of /etc/shadow",
             check=lambda v: expect(v.lstat("h").st_ino == v.lstat("s").st_ino and
                                    stat.S_ISLNK(v.lstat("h").st_mode), "h is not the symlink"),
             targets=("/etc/shadow",)),
        Case("hardlink-to-symlink-write-through", c, "symlink s -> <sentinel>, hardlink h -> s, "
             "then h/pwned", REFUSED,
             dynamic(lambda ctx: lt().symlink("s", ctx.sentinel).hardlink("h", "s").file(
                 "h/pwned", b"p").bytes()), "InvalidInput", "h/pwned"),
        Case("hardlink-before-target", c, "hardlink h -> t listed before t", REFUSED,
             layer(lt().hardlink("h", "t").file("t", b"t").bytes()), "InvalidInput", "h"),
        Case("hardlink-to-directory", c, "hardlink h -> d where d is a directory", REFUSED,
             layer(lt().dir("d").hardlink("h", "d").bytes()), "InvalidInput", "h"),
        Case("hardlink-to-itself", c, "hardlink h -> h", REFUSED,
             layer(lt().hardlink("h", "h").bytes()), "InvalidInput", "h"),
        Case("hardlink-to-parent-layer", c, "hardlink to a file of the parent layer (it is not "
             "in this layer's tree on overlay2, and refused alike on vfs)", REFUSED,
             layer(lt().hardlink("h", "a/kept").bytes(), parents=[parent_dir]),
             "InvalidInput", "h"),
        Case("dir-replaced-by-symlink", c, "directory a, then symlink a -> <sentinel>, then "
             "a/pwned (one layer)", REFUSED,
             dynamic(lambda ctx: lt().dir("a").symlink("a", ctx.sentinel).file(
                 "a/pwned", b"p").bytes()), "InvalidInput", "a"),
        Case("parent-dir-replaced-by-symlink", c, "the parent layer has directory a; this layer "
             "makes a a symlink to <sentinel> and writes a/pwned", REFUSED,
             dynamic(lambda ctx: lt().symlink("a", ctx.sentinel).file("a/pwned", b"p").bytes(),
                     parents=[parent_dir]), "InvalidInput", "a/pwned"),
    ]


def _whiteouts() -> List[Case]:
    c = "whiteouts"
    parent_etc = LayerTar().dir("etc").file("etc/passwd", b"root\n").dir("a").file(
        "a/old", b"o").bytes()
    return [
        Case("whiteout-dot", c, ".wh.. (a whiteout of '.')", REFUSED,
             layer(lt().file(".wh..").bytes()), "InvalidInput", ".wh.."),
        Case("whiteout-dotdot", c, ".wh... (a whiteout of '..')", REFUSED,
             layer(lt().file(".wh...").bytes()), "InvalidInput", ".wh..."),
        Case("whiteout-dotdot-nested", c, "a/.wh... (a whiteout of a/..)", REFUSED,
             layer(lt().dir("a").file("a/.wh...").bytes()), "InvalidInput", "a/.wh..."),
        Case("whiteout-empty-name", c, "a/.wh. (a whiteout of nothing)", REFUSED,
             layer(lt().dir("a").file("a/.wh.").bytes()), "InvalidInput", "a/.wh."),
        Case("whiteout-through-symlink", c, "symlink s -> <sentinel>, then s/.wh.secret", REFUSED,
             dynamic(lambda ctx: lt().symlink("s", ctx.sentinel).whiteout("s/secret").bytes()),
             "InvalidInput", "s/.wh.secret"),
        Case("whiteout-through-parent-symlink", c, "the parent layer has symlink s -> <sentinel>;"
             " this layer has s/.wh.secret", CONFINED,
             dynamic(lambda ctx: lt().whiteout("s/secret").bytes(),
                     parents=lambda ctx: [LayerTar().symlink("s", ctx.sentinel).bytes()]),
             by_driver={"vfs": REFUSED}, error="InvalidInput", needle="s/.wh.secret",
             post="overlay2: the whiteout lands in a new directory s of the layer's own diff "
             "(upper s hides the lower symlink); vfs (whose layer copy has the symlink): refused",
             check=whiteout_of("s/secret")),
        Case("whiteout-at-root", c, ".wh.etc over a parent that has /etc", CONFINED,
             layer(lt().whiteout("etc").bytes(), parents=[parent_etc]),
             post="overlay2: etc is a 0/0 device in the diff; vfs: etc removed from the layer's "
             "copy; the parent layer still has etc",
             check=all_of(whiteout_of("etc"), parent_keeps("etc/passwd"))),
        Case("opaque-root", c, ".wh..wh..opq at the root", REFUSED,
             layer(lt().file(".wh..wh..opq").bytes()), "InvalidInput", ".wh..wh..opq"),
        Case("opaque-marker-as-dir", c, "a/.wh..wh..opq as a directory entry: still the opaque "
             "marker of a/ (as Docker reads it)", CONFINED,
             layer(lt().dir("a").file("a/new", b"n").dir("a/.wh..wh..opq").bytes(),
                   parents=[parent_etc]),
             post="a is opaque (overlay2 xattr, vfs keeps only a/new); no entry named "
             ".wh..wh..opq is created; the parent keeps a/old",
             check=all_of(opaque("a"), parent_keeps("a/old"),
                          lambda v: expect(v.names("a") == [b"new"], "a holds %r" % v.names("a")))),
        Case("opaque-marker-as-dir-at-root", c, ".wh..wh..opq/ as a directory at the root",
             REFUSED, layer(lt().dir(".wh..wh..opq").bytes()), "InvalidInput", ".wh..wh..opq"),
        Case("below-opaque-marker", c, "a/.wh..wh..opq/ then a file a/.wh..wh..opq/x", REFUSED,
             layer(lt().dir("a").dir("a/.wh..wh..opq").file("a/.wh..wh..opq/x", b"x").bytes()),
             "InvalidInput", "a/.wh..wh..opq/x"),
        Case("whiteout-of-opaque-marker", c, "a/.wh..wh..wh..opq (a whiteout of the marker)",
             REFUSED, layer(lt().dir("a").file("a/.wh..wh..wh..opq").bytes()),
             "InvalidInput", "a/.wh..wh..wh..opq"),
        Case("aufs-metadata", c, ".wh..wh.plnk/ (AUFS hardlink directory)", REFUSED,
             layer(lt().dir(".wh..wh.plnk").bytes()), "InvalidInput", ".wh..wh.plnk"),
        Case("below-whiteout-name", c, "a file below a whiteout name: .wh.a/b", REFUSED,
             layer(tar(entry(".wh.a/b", b"x"))), "InvalidInput", ".wh.a/b"),
        Case("below-whited-out-path", c, ".wh.a then a/b (re-creating what was whited out)",
             REFUSED, layer(lt().whiteout("a").file("a/b", b"x").bytes()), "InvalidInput", "a/b"),
        Case("whiteout-then-add", c, ".wh.a then a", REFUSED,
             layer(lt().whiteout("a").file("a", b"x").bytes()), "InvalidInput", "a"),
        Case("add-then-whiteout", c, "a then .wh.a", REFUSED,
             layer(lt().file("a", b"x").whiteout("a").bytes()), "InvalidInput", ".wh.a"),
        Case("whiteout-as-symlink", c, ".wh.x typed as a symlink to /etc/shadow: a whiteout "
             "whatever its type", CONFINED,
             layer(lt().symlink(".wh.x", "/etc/shadow").bytes()),
             post="a whiteout of x; no symlink is created",
             check=all_of(whiteout_of("x"), lambda v: expect(not v.exists(".wh.x"), "symlink made")),
             targets=("/etc/shadow",)),
        Case("whiteout-with-data", c, ".wh.x carrying 100 bytes of data", CONFINED,
             layer(lt().file(".wh.x", b"d" * 100).bytes()),
             post="a whiteout of x; the data is kept only in the header record (re-emitted)",
             check=whiteout_of("x")),
        Case("whiteout-with-huge-data", c, ".wh.x carrying 2 MiB of data", REFUSED,
             layer(lt().file(".wh.x", b"d" * (2 << 20)).bytes()), "InvalidInput", ".wh.x"),
        Case("smuggled-whiteout-device", c, "a 0/0 character device named etc (overlay's own "
             "whiteout form) over a parent that has etc", CONFINED,
             layer(lt().device("etc", 0, 0).bytes(), parents=[parent_etc]),
             post="stored as given: overlay2 reads it as a whiteout of etc (as Docker does); "
             "vfs replaces its copy of etc with the device; the parent keeps etc",
             check=all_of(lambda v: expect(stat.S_ISCHR(v.lstat("etc").st_mode) and
                                           v.lstat("etc").st_rdev == 0, "no 0/0 device"),
                          parent_keeps("etc/passwd"))),
    ]


def _xattrs() -> List[Case]:
    c = "xattrs"

    def with_xattrs(*pairs: Tuple[str, bytes], name: str = "f") -> bytes:
        records = [(b"SCHILY.xattr." + k.encode(), v) for k, v in pairs]
        return tar(pax(records), entry(name, b"x"))

    refused = []
    for key, value in (("trusted.overlay.opaque", b"y"), ("trusted.overlay.redirect", b"/etc"),
                       ("trusted.overlay.origin", b"\0" * 16), ("trusted.foo", b"bar"),
                       ("user.overlay.opaque", b"y"), ("user.fuseoverlayfs.opaque", b"y")):
        refused.append(Case("xattr-" + key, c, "a file carrying %s" % key, REFUSED,
                            layer(with_xattrs((key, value))), "InvalidInput", key))
    return refused + [
        Case("xattr-libarchive-trusted", c, "LIBARCHIVE.xattr.trusted.overlay.opaque (base64)",
             REFUSED, layer(tar(pax([(b"LIBARCHIVE.xattr.trusted.overlay.opaque", b"eQ==")]),
                                entry("f", b"x"))), "InvalidInput", "trusted.overlay.opaque"),
        Case("xattr-trusted-on-root", c, "./ carrying trusted.overlay.opaque=y (hide the whole "
             "parent)", REFUSED,
             layer(tar(pax([(b"SCHILY.xattr.trusted.overlay.opaque", b"y")]),
                       entry("./", typeflag=b"5", mode=0o755))), "InvalidInput", "trusted"),
        Case("xattr-security-capability", c, "security.capability (cap_net_raw) on a binary",
             CONFINED, layer(with_xattrs(("security.capability", CAP_NET_RAW))),
             post="the capability is applied byte for byte",
             check=lambda v: expect(v.xattr("f", "security.capability") == CAP_NET_RAW,
                                    "capability not applied")),
        Case("xattr-security-other", c, "security.selinux, security.ima and security.evm",
             CONFINED, layer(with_xattrs(("security.selinux", b"system_u:object_r:shadow_t:s0"),
                                         ("security.ima", b"\x03\x02"),
                                         ("security.evm", b"\x05"))),
             post="skipped: none of the three is set from the tar (they are the host's policy)",
             check=lambda v: expect(all(v.xattr("f", n) is None for n in (
                 "security.ima", "security.evm")) and v.xattr("f", "security.selinux") !=
                 b"system_u:object_r:shadow_t:s0", "a security.* xattr was applied")),
        Case("xattr-user", c, "user.origin=test", CONFINED,
             layer(with_xattrs(("user.origin", b"test"))), post="applied",
             check=lambda v: expect(v.xattr("f", "user.origin") == b"test", "not applied")),
        Case("xattr-bad-acl", c, "system.posix_acl_access with a malformed value", REFUSED,
             layer(with_xattrs(("system.posix_acl_access", b"\x02\0\0\0garbage"))),
             "InvalidInput", "f"),
        Case("xattr-name-nul", c, "an xattr name with a NUL byte (user.a\\0b)", REFUSED,
             layer(with_xattrs(("user.a\0b", b"v"))), "InvalidInput", "f"),
        Case("xattr-unknown-namespace", c, "an xattr in no namespace (bogus.name)", REFUSED,
             layer(with_xattrs(("bogus.name", b"v"))), "InvalidInput", "bogus.name"),
    ]


def _special() -> List[Case]:
    c = "setuid and devices"
    major, minor = _block_device_of_root()
    return [
        Case("setuid-root", c, "a setuid-root binary (04755, 0:0) and a setgid one", CONFINED,
             layer(lt().file("su", b"\x7fELF", mode=0o4755).file(
                 "sg", b"x", mode=0o2711, gid=42).bytes()),
             post="modes kept: 04755 and 02711 (setuid survives chown because chmod comes after)",
             check=all_of(mode_is("su", 0o4755), mode_is("sg", 0o2711))),
        Case("sticky-dir", c, "a world-writable sticky directory (01777)", CONFINED,
             layer(lt().dir("tmp", mode=0o1777).bytes()), post="mode 01777 kept",
             check=mode_is("tmp", 0o1777)),
        Case("char-device", c, "/dev/null as a character device 1:3", CONFINED,
             layer(lt().dir("dev").device("dev/null", 1, 3).bytes()),
             post="a 1:3 character device under the layer root (created as root)",
             check=lambda v: expect(stat.S_ISCHR(v.lstat("dev/null").st_mode) and
                                    v.lstat("dev/null").st_rdev == os.makedev(1, 3), "no device")),
        Case("block-device-host-disk", c, "a block device with the major:minor of this host's "
             "root disk (%d:%d)" % (major, minor), CONFINED,
             layer(lt().dir("dev").device("dev/disk", major, minor, char=False).bytes()),
             post="created under the layer root, as images carry /dev entries; it grants nothing "
             "a container's device cgroup does not, and nothing outside the root changes",
             check=lambda v: expect(stat.S_ISBLK(v.lstat("dev/disk").st_mode), "no block device")),
        Case("fifo", c, "a FIFO", CONFINED, layer(lt().fifo("run/fifo").bytes()),
             post="a FIFO under the layer root (never opened)",
             check=lambda v: expect(stat.S_ISFIFO(v.lstat("run/fifo").st_mode), "no fifo")),
        Case("fifo-as-parent", c, "FIFO p, then a file p/x (the FIFO used as a directory)",
             REFUSED, layer(lt().fifo("p").file("p/x", b"x").bytes()), "InvalidInput", "p/x"),
        Case("chardev-as-parent", c, "character device d, then d/x", REFUSED,
             layer(lt().device("d", 1, 3).file("d/x", b"x").bytes()), "InvalidInput", "d/x"),
        Case("fifo-then-directory", c, "FIFO p, then a directory entry p/", REFUSED,
             layer(lt().fifo("p").dir("p").bytes()), "InvalidInput", "p"),
        Case("owner-name-ignored", c, "uname 'root' with uid 1000 (names are never looked up)",
             CONFINED, layer(lt().file("f", b"x", uid=1000, gid=1000).bytes()),
             post="owner 1000:1000", check=lambda v: expect(
                 v.lstat("f").st_uid == 1000 and v.lstat("f").st_gid == 1000, "owner changed")),
        Case("uid-too-large", c, "a PAX uid of 2^40 (no such uid on Linux)", REFUSED,
             layer(tar(pax([(b"uid", b"%d" % (1 << 40))]), entry("f", b"x"))),
             "InvalidInput", "f"),
        Case("devmajor-too-large", c, "a character device with a base-256 major of 2^40",
             REFUSED, layer(tar(header("d", b"3", raw={"devmajor": base256(1 << 40, 8)}))),
             "InvalidInput", "d"),
        Case("mtime-too-large", c, "a base-256 mtime of 2^80 seconds", REFUSED,
             layer(tar(header("f", raw={"mtime": base256(1 << 80)}))), "InvalidInput", "f"),
    ]


def _duplicates() -> List[Case]:
    c = "duplicates"
    return [
        Case("file-twice", c, "the same file twice (a second, different content)", REFUSED,
             layer(lt().file("a", b"1").file("a", b"2").bytes()), "InvalidInput", "a"),
        Case("dir-then-file", c, "directory a, then a regular file a", REFUSED,
             layer(lt().dir("a").file("a", b"x").bytes()), "InvalidInput", "a"),
        Case("implicit-dir-then-file", c, "a/b (making a), then a regular file a", REFUSED,
             layer(lt().file("a/b", b"1").file("a", b"2").bytes()), "InvalidInput", "a"),
        Case("file-then-dir", c, "regular file a, then directory a", REFUSED,
             layer(lt().file("a", b"x").dir("a").bytes()), "InvalidInput", "a"),
        Case("symlink-then-file", c, "symlink a -> /etc/shadow, then file a (write through the "
             "link if replaced naively)", REFUSED,
             layer(lt().symlink("a", "/etc/shadow").file("a", b"pwned").bytes()),
             "InvalidInput", "a", targets=("/etc/shadow",)),
        Case("dir-twice", c, "directory a twice with different modes", CONFINED,
             layer(lt().dir("a", mode=0o755).file("a/f", b"x").dir("a", mode=0o700).bytes()),
             post="one directory a with the last mode (0700) and its file",
             check=all_of(mode_is("a", 0o700), lambda v: expect(v.names("a") == [b"f"], "lost"))),
        Case("case-variants", c, "A and a (distinct names on Linux)", CONFINED,
             layer(lt().file("A", b"1").file("a", b"2").bytes()),
             post="two files", check=only("A", "a")),
    ]


def _corrupt() -> List[Case]:
    c = "corrupt streams"
    good = lt().file("f", b"x" * 5000).file("g", b"y").bytes()
    return [
        Case("truncated-header", c, "the stream ends 300 bytes into a header", REFUSED,
             layer(good[:512 * 11 + 300]), "Corrupt", None),
        Case("truncated-data", c, "the stream ends inside a member's data", REFUSED,
             layer(good[:3000]), "Corrupt", "f"),
        Case("truncated-padding", c, "the stream ends inside a member's padding", REFUSED,
             layer(tar(entry("f", b"x" * 100))[:512 + 200]), "Corrupt", None),
        Case("truncated-after-extension", c, "a PAX header, then the end of the stream", REFUSED,
             layer(pax([(b"path", b"x")])), "Corrupt", None),
        Case("zero-block-after-extension", c, "a PAX header followed by the end marker", REFUSED,
             layer(tar(pax([(b"path", b"x")]))), "Corrupt", None),
        Case("bad-checksum", c, "a header whose checksum is wrong", REFUSED,
             layer(tar(header("f", checksum=b"000000\0 "))), "Corrupt", "checksum"),
        Case("bad-octal-size", c, "size field '12x4'", REFUSED,
             layer(tar(header("f", raw={"size": b"12x4\0"}))), "Corrupt", "f"),
        Case("bad-octal-mode", c, "mode field '9999'", REFUSED,
             layer(tar(header("f", raw={"mode": b"9999\0"}))), "Corrupt", "f"),
        Case("negative-size-base256", c, "size -1 in base-256", REFUSED,
             layer(tar(header("f", raw={"size": base256(-1)}))), "Corrupt", "f"),
        Case("huge-size-base256", c, "size 2^87 in base-256 on a regular file", REFUSED,
             layer(tar(header("f", raw={"size": base256(1 << 87)}) + b"x" * 512)), "Corrupt", "f"),
        Case("huge-size-pax", c, "PAX size=10^30 on a regular file", REFUSED,
             layer(tar(pax([(b"size", b"1" + b"0" * 30)]), entry("f", b"x"))), "Corrupt", "f"),
        Case("symlink-with-size", c, "a symlink declaring 1000 bytes of data", REFUSED,
             layer(tar(header("s", b"2", size=1000, linkname="t") + pad(b"x" * 1000))),
             "Corrupt", "s"),
        Case("not-a-tar", c, "1 KiB of text", REFUSED, layer(b"not a tar archive\n" * 60),
             "Corrupt", "checksum"),
        Case("unknown-typeflag", c, "typeflag 'X' (unknown)", REFUSED,
             layer(tar(header("f", b"X"))), "InvalidInput", "f"),
        Case("gzip-truncated", c, "a gzip layer cut in half", REFUSED,
             lambda ctx: Input(src=ctx.file("t.tar.gz", _half(compress(good, "gzip")))),
             "Corrupt", "gzip"),
        Case("gzip-bad-crc", c, "a gzip layer whose CRC32 trailer is wrong", REFUSED,
             lambda ctx: Input(src=ctx.file("c.tar.gz", _bad_crc(compress(good, "gzip")))),
             "Corrupt", "gzip"),
        Case("zstd-truncated", c, "a zstd layer cut short", REFUSED,
             lambda ctx: Input(src=ctx.file("t.tar.zst", compress(good, "zstd")[:-8])),
             "Corrupt", "zstd"),
        Case("zstd-corrupt", c, "a zstd layer with flipped bytes", REFUSED,
             lambda ctx: Input(src=ctx.file("c.tar.zst", _flip(compress(good, "zstd")))),
             "Corrupt", "zstd"),
        Case("missing-end-marker", c, "members but no end-of-archive marker (clean EOF)",
             CONFINED, layer(entry("f", b"x")),
             post="imported (Go's reader, Docker's, accepts it too); re-emitted byte-identical",
             check=only("f")),
        Case("single-zero-block", c, "one zero block as the end marker", CONFINED,
             layer(entry("f", b"x") + bytes(512)), post="imported; re-emitted byte-identical",
             check=only("f")),
    ]


def _half(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _bad_crc(data: bytes) -> bytes:
    return data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:]


def _flip(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x55 for b in data[middle:middle + 16]) + data[middle + 16:]


def _trailing() -> List[Case]:
    c = "trailing data"
    body = lt().file("f", b"x").bytes()
    return [
        Case("garbage-after-end", c, "text after the end-of-archive marker", REFUSED,
             layer(body + b"GARBAGE" + bytes(505)), "Corrupt", "end-of-archive"),
        Case("second-archive-after-end", c, "a second tar (with ../escape) after the end marker",
             REFUSED, layer(body + tar(entry("../" * UP + "tmp/second", b"p"))),
             "Corrupt", "end-of-archive"),
        Case("zero-padding-after-end", c, "10 KiB of zeros after the end marker (tape blocking)",
             CONFINED, layer(body + bytes(10240)),
             post="imported; the zeros are part of the diff_id and re-emitted", check=only("f")),
        Case("gzip-trailing-garbage", c, "garbage after the gzip stream", REFUSED,
             lambda ctx: Input(src=ctx.file("g.tar.gz", compress(body, "gzip") + b"GARBAGE")),
             "Corrupt", "gzip"),
        Case("gzip-concatenated", c, "two gzip members (gzip -c a b)", CONFINED,
             lambda ctx: Input(src=ctx.file("cat.tar.gz", compress(body[:512], "gzip") +
                                            compress(body[512:], "gzip")), layer=body),
             post="one stream, as gzip reads it", check=only("f")),
        Case("gzip-zero-padding", c, "zero bytes after the gzip stream", CONFINED,
             lambda ctx: Input(src=ctx.file("z.tar.gz", compress(body, "gzip") + bytes(4096)),
                               layer=body),
             post="padding ignored, as gzip does", check=only("f")),
    ]


def _bombs() -> List[Case]:
    c = "bombs"
    return [
        Case("gzip-bomb", c, "1 MB of gzip inflating to a 1 GiB tar (max_size 64 MiB)", REFUSED,
             gzip_bomb, "InvalidInput", "max_size", bomb=True),
        Case("zstd-bomb", c, "33 KB of zstd inflating to a 1 GiB tar (max_size 64 MiB)", REFUSED,
             zstd_bomb, "InvalidInput", "max_size", bomb=True),
        Case("zstd-window-bomb", c, "a zstd frame asking for a 2 GiB window (--long=31)", REFUSED,
             zstd_window_bomb, "Corrupt", "zstd", bomb=True),
        Case("gnu-longname-flood", c, "300 GNU long-name headers of 1 MiB each before one "
             "member (each under the per-header limit)", REFUSED,
             extension_flood(b"L"), "InvalidInput", "extension", bomb=True),
        Case("pax-global-flood", c, "300 PAX global headers of 1 MiB each, each with a new key",
             REFUSED, extension_flood(b"g"), "InvalidInput", "global", bomb=True),
    ]


def _paths() -> List[Case]:
    c = "deep and long paths"
    deepest = _deep(1000)[-1]
    return [
        Case("deep-explicit", c, "1000 nested directories listed one by one (4001-byte path)",
             CONFINED, layer(_deep_explicit()),
             post="the file exists 1000 levels down; re-emitted byte-identical",
             check=lambda v: expect(_read_deep(v, deepest + "/f") == b"deep", "deep file lost")),
        Case("deep-implicit", c, "one file 1000 directories down, no directory entries",
             CONFINED, layer(lt().file(deepest + "/f", b"deep").bytes()),
             post="the file exists 1000 levels down",
             check=lambda v: expect(_read_deep(v, deepest + "/f") == b"deep", "deep file lost")),
        Case("deep-parent", c, "a small layer over a parent 1000 directories deep (vfs copies "
             "the parent first)", CONFINED,
             layer(lt().file("top", b"t").bytes(), parents=[lt().file(deepest + "/f", b"deep").bytes()]),
             post="the layer holds top; vfs's copy of the parent keeps the deep file",
             check=lambda v: expect(v.exists("top") and (v.driver != "vfs" or _read_deep(
                 v, deepest + "/f") == b"deep"), "deep parent lost")),
        Case("deep-opaque", c, "a 1000-deep tree, then its top directory marked opaque",
             CONFINED, layer(lt().file(deepest + "/f", b"deep").opaque("abc").bytes(),
                             parents=[lt().dir("abc").file("abc/old", b"o").bytes()]),
             post="the deep file stays (this layer added it); the parent's abc/old is hidden",
             check=all_of(opaque("abc"), lambda v: expect(
                 _read_deep(v, deepest + "/f") == b"deep" and (v.driver != "vfs" or not v.exists(
                     "abc/old")), "opaque applied wrongly"))),
        Case("deep-then-escape", c, "1000 nested directories, then a member escaping with '..' "
             "(the deep tree must be rolled back)", REFUSED,
             layer(lt().file(deepest + "/f", b"deep").file("../" * UP + "tmp/x", b"p").bytes()),
             "InvalidInput", "tmp/x"),
        Case("path-4095", c, "a name of exactly 4095 bytes", CONFINED,
             layer(lt().file("/".join(["p" * 254] * 16)[:4095], b"x").bytes()),
             post="the file exists", check=lambda v: expect(
                 _read_deep(v, "/".join(["p" * 254] * 16)[:4095]) == b"x", "lost")),
        Case("path-too-long", c, "a name of 4096 bytes", REFUSED,
             layer(lt().file("/".join(["q" * 255] * 16) + "/q", b"x").bytes()),
             "InvalidInput", "qqq"),
        Case("component-255", c, "a 255-byte name component", CONFINED,
             layer(lt().file("n" * 255, b"x").bytes()), post="the file exists",
             check=only("n" * 255)),
        Case("component-too-long", c, "a 256-byte name component", REFUSED,
             layer(lt().file("n" * 256, b"x").bytes()), "InvalidInput", "nnn"),
        Case("symlink-target-too-long", c, "a symlink whose target is 5000 bytes", REFUSED,
             layer(lt().symlink("s", "t" * 5000).bytes()), "InvalidInput", "s"),
    ]


def _read_deep(v: View, rel: str) -> bytes:
    """Read a file whose full path may exceed PATH_MAX, one directory at a time."""
    fd = os.open(v.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = rel.split("/")
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
        try:
            return os.read(leaf, 1 << 16)
        finally:
            os.close(leaf)
    finally:
        os.close(fd)


def _names() -> List[Case]:
    c = "odd names"
    return [
        Case("odd-names", c, "newline, tab, escape sequences, leading dashes, '...', a "
             "right-to-left override, NFC and NFD e-acute, an emoji, A/a, a backslash", CONFINED,
             layer(_odd_names()), post="every name kept byte for byte (16 files)",
             check=only(*ODD_NAMES)),
        Case("invalid-utf8-pax", c, "names with invalid UTF-8 bytes (PAX, hdrcharset=BINARY)",
             CONFINED, layer(_invalid_utf8(tarfile.PAX_FORMAT)),
             post="names kept byte for byte", check=only("bad\udcff\udcfe", "dir\udce9")),
        Case("invalid-utf8-gnu", c, "names with invalid UTF-8 bytes (GNU, raw bytes)", CONFINED,
             layer(_invalid_utf8(tarfile.GNU_FORMAT)),
             post="names kept byte for byte", check=lambda v: expect(
                 v.names(b"dir\xe9") == [b"x\x80"], "bytes changed")),
        Case("latin1-ustar", c, "a Latin-1 name in a plain ustar header", CONFINED,
             layer(tar(entry(b"caf\xe9", b"x"))), post="name kept byte for byte",
             check=only(b"caf\xe9")),
    ]


def _pax_cases() -> List[Case]:
    c = "PAX headers"
    return [
        Case("pax-header-over-1mib", c, "a PAX header of 1 MiB + 1 byte", REFUSED,
             layer(tar(pax([(b"comment", b"c" * (1 << 20))]), entry("f", b"x"))),
             "InvalidInput", "extension header"),
        Case("gnu-longname-over-1mib", c, "a GNU long name of 1 MiB + 1 byte", REFUSED,
             layer(tar(gnu_long(b"L", b"a" * (1 << 20)), entry("f", b"x"))),
             "InvalidInput", "extension header"),
        Case("pax-length-too-long", c, "a record whose length runs past the header", REFUSED,
             layer(tar(pax(data=b"99 path=x\n"), entry("f", b"x"))), "Corrupt", "PAX"),
        Case("pax-length-zero", c, "a record of length 0", REFUSED,
             layer(tar(pax(data=b"0 path=x\n"), entry("f", b"x"))), "Corrupt", "PAX"),
        Case("pax-length-not-a-number", c, "a record length 'ten'", REFUSED,
             layer(tar(pax(data=b"ten path=x\n"), entry("f", b"x"))), "Corrupt", "PAX"),
        Case("pax-length-5000-digits", c, "a record length of 5000 digits", REFUSED,
             layer(tar(pax(data=b"9" * 5000 + b" path=x\n"), entry("f", b"x"))), "Corrupt", "PAX"),
        Case("pax-no-newline", c, "a record whose length ends before its newline", REFUSED,
             layer(tar(pax(data=b"9 path=xy\n"), entry("f", b"x"))), "Corrupt", "PAX"),
        Case("pax-no-equals", c, "a record without '='", REFUSED,
             layer(tar(pax(data=b"10 pathxyz\n"), entry("f", b"x"))), "Corrupt", "PAX"),
        Case("pax-bad-mtime", c, "mtime=1e9", REFUSED,
             layer(tar(pax([(b"mtime", b"1e9")]), entry("f", b"x"))), "Corrupt", "f"),
        Case("pax-negative-uid", c, "uid=-1", REFUSED,
             layer(tar(pax([(b"uid", b"-1")]), entry("f", b"x"))), "Corrupt", "f"),
        Case("pax-size-smuggle", c, "ustar size 1024 hiding a tar of '../' members, PAX size=0 "
             "(readers that ignore PAX see another archive)", REFUSED, layer(_pax_smuggle()),
             "InvalidInput", "smuggled"),
        Case("pax-size-override", c, "ustar size 0, PAX size=5 (a legitimate override)", CONFINED,
             layer(tar(pax([(b"size", b"5")]), header("f", size=0) + pad(b"hello"))),
             post="f holds the 5 bytes", check=lambda v: expect(v.read("f") == b"hello", "size")),
        Case("pax-unknown-keys", c, "comment, vendor and charset records", CONFINED,
             layer(tar(pax([(b"comment", b"hi"), (b"VENDOR.key", b"v"), (b"charset", b"X")]),
                       entry("f", b"x"))),
             post="ignored, kept in the header record, re-emitted", check=only("f")),
    ]


def _formats() -> List[Case]:
    c = "formats"
    return [
        Case("gnu-sparse-old", c, "a GNU sparse member (typeflag S)", REFUSED,
             layer(tar(header("sparse", b"S"))), "Unsupported", "sparse"),
        Case("gnu-sparse-pax", c, "a PAX 1.0 sparse member (GNU.sparse.major=1)", REFUSED,
             layer(tar(pax([(b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0"),
                            (b"GNU.sparse.name", b"sparse")]), entry("GNUSparseFile.0/x", b""))),
             "Unsupported", "sparse"),
        Case("xz-layer", c, "an xz-compressed layer", REFUSED,
             layer(GOOD, "xz"), "Unsupported", "recompress"),
        Case("bzip2-layer", c, "a bzip2-compressed layer", REFUSED,
             layer(GOOD, "bzip2"), "Unsupported", "recompress"),
        Case("empty-file", c, "a file of 0 bytes (not a tar: a tar has at least its end "
             "marker)", REFUSED, lambda ctx: Input(src=ctx.file("empty.tar", b"")),
             "Corrupt", "empty"),
        Case("only-zero-blocks", c, "1024 zero bytes: the empty layer Docker makes", CONFINED,
             layer(bytes(1024)), post="an empty layer with diff_id sha256:5f70bf18...",
             check=lambda v: expect(v.diff_id == EMPTY_LAYER_DIFF_ID and v.names() == [],
                                    "not the empty layer")),
        Case("contiguous-file", c, "typeflag 7 (contiguous file)", CONFINED,
             layer(tar(entry("c", b"contig", typeflag=b"7"))),
             post="a regular file", check=lambda v: expect(v.read("c") == b"contig", "lost")),
        Case("v7-header", c, "an old V7 header (no ustar magic)", CONFINED,
             layer(tar(entry("v7", b"old", magic=bytes(8)))),
             post="a regular file", check=only("v7")),
        Case("volume-header", c, "a GNU volume header (V)", REFUSED,
             layer(tar(header("vol", b"V"))), "InvalidInput", "vol"),
        Case("multivolume", c, "a GNU multi-volume continuation (M)", REFUSED,
             layer(tar(header("m", b"M", size=0))), "InvalidInput", "m"),
    ]


def _archives() -> List[Case]:
    c = "image archives"
    escaping = lt().file("../" * UP + "tmp/from-archive", b"p").bytes()

    def manifest_set(key: str, value):
        def edit(manifest: list) -> None:
            manifest[0][key] = value
        return edit
    return [
        Case("docker-config-traversal", c, "manifest.json names ../../etc/passwd as Config",
             REFUSED, archive(lambda ctx: docker_archive(
                 ctx, [GOOD], manifest_edit=manifest_set("Config", "../../../../etc/passwd"))),
             "NotFound", "etc/passwd", targets=("/etc/passwd",)),
        Case("docker-layer-traversal", c, "manifest.json names ../../etc/passwd as a layer",
             REFUSED, archive(lambda ctx: docker_archive(
                 ctx, [GOOD], manifest_edit=manifest_set("Layers", ["../../../../etc/passwd"]))),
             "NotFound", "etc/passwd"),
        Case("docker-layer-absolute", c, "manifest.json names /etc/passwd as a layer (looked up "
             "inside the archive, never on the host)", REFUSED,
             archive(lambda ctx: docker_archive(
                 ctx, [GOOD], manifest_edit=manifest_set("Layers", ["/etc/passwd"]))),
             "NotFound", "etc/passwd"),
        Case("docker-layer-symlink-outside", c, "the layer member is a symlink to ../../etc/passwd",
             REFUSED, archive(lambda ctx: docker_archive(
                 ctx, [GOOD], layer_names=["l/layer.tar"], skip_layers=True,
                 extra=[link_info("l/layer.tar", "../../../etc/passwd")])),
             "InvalidInput", "l/layer.tar"),
        Case("docker-layer-symlink-inside", c, "the layer member is a symlink to another member "
             "(as older docker save writes duplicate layers)", CONFINED,
             archive(lambda ctx: docker_archive(
                 ctx, [GOOD], layer_names=["dup/layer.tar"], skip_layers=True,
                 extra=[("real/layer.tar", GOOD), link_info("dup/layer.tar", "../real/layer.tar")])),
             post="the link is followed inside the archive; the layer imports",
             check=lambda v: expect(v.read("etc/os-release") == b"ID=hostile\n", "not imported")),
        Case("docker-layer-symlink-absolute", c, "the layer member is a symlink to /etc/passwd "
             "(resolved inside the archive)", REFUSED,
             archive(lambda ctx: docker_archive(
                 ctx, [GOOD], layer_names=["l/layer.tar"], skip_layers=True,
                 extra=[link_info("l/layer.tar", "/etc/passwd")])),
             "NotFound", "etc/passwd"),
        Case("docker-layer-symlink-loop", c, "layer members a -> b -> a", REFUSED,
             archive(lambda ctx: docker_archive(
                 ctx, [GOOD], layer_names=["a"], skip_layers=True,
                 extra=[link_info("a", "b"), link_info("b", "a")])), "InvalidInput", "loop"),
        Case("docker-layer-hardlink-outside", c, "the layer member is a hardlink to ../x", REFUSED,
             archive(lambda ctx: docker_archive(
                 ctx, [GOOD], layer_names=["l.tar"], skip_layers=True,
                 extra=[link_info("l.tar", "../../x", tarfile.LNKTYPE)])), "NotFound", "x"),
        Case("docker-config-name-mismatch", c, "a config named <hex>.json that hashes otherwise",
             REFUSED, archive(lambda ctx: docker_archive(ctx, [GOOD], config_name="0" * 64 + ".json")),
             "DigestMismatch", "json"),
        Case("docker-diff-ids-mismatch", c, "two layers listed, one diff_id in the config",
             REFUSED, archive(lambda ctx: docker_archive(
                 ctx, [GOOD, GOOD], config=config_for([GOOD]))), "Corrupt", "diff_ids"),
        Case("docker-layer-content-mismatch", c, "a layer whose content is not its diff_id",
             REFUSED, archive(lambda ctx: docker_archive(
                 ctx, [GOOD], config=config_for([lt().file("other", b"o").bytes()]))),
             "DigestMismatch", "layer.tar"),
        Case("docker-layer-escapes", c, "a well-formed archive whose layer has a ../ member",
             REFUSED, archive(lambda ctx: docker_archive(ctx, [escaping])),
             "InvalidInput", "from-archive"),
        Case("docker-second-layer-escapes", c, "layer 1 fine, layer 2 has a ../ member", REFUSED,
             archive(lambda ctx: docker_archive(ctx, [GOOD, escaping])),
             "InvalidInput", "from-archive"),
        Case("docker-manifest-not-json", c, "manifest.json is not JSON", REFUSED,
             archive(lambda ctx: _raw_archive(ctx, {"manifest.json": b"{not json"})),
             "Corrupt", "manifest"),
        Case("docker-manifest-huge", c, "a 17 MiB manifest.json", REFUSED,
             archive(lambda ctx: _raw_archive(ctx, {"manifest.json": b" " * (17 << 20)})),
             "InvalidInput", "manifest.json"),
        Case("oci-index-blob-mismatch", c, "a nested image index whose blob does not match its "
             "digest", REFUSED, oci_case(lambda ctx, p, i: nested_index(ctx, p, i, True)),
             "DigestMismatch", "index"),
        Case("oci-manifest-blob-mismatch", c, "a manifest blob that does not match its digest",
             REFUSED, oci_case(tamper_blob("manifest")), "DigestMismatch", "manifest"),
        Case("oci-config-blob-mismatch", c, "a config blob that does not match its digest",
             REFUSED, oci_case(tamper_blob("config")), "DigestMismatch", "config"),
        Case("oci-archive-manifest-mismatch", c, "oci-archive: a tampered manifest blob",
             REFUSED, oci_case(tamper_blob("manifest"), "oci-archive"), "DigestMismatch",
             "manifest"),
        Case("oci-diff-ids-mismatch", c, "a manifest with one layer, a config with two diff_ids",
             REFUSED, oci_case(diff_ids_mismatch), "Corrupt", "diff_ids"),
        Case("oci-uppercase-digest", c, "a layer digest in uppercase hex", REFUSED,
             oci_case(set_layer_digest("sha256:" + "AB" * 32)), "Corrupt", "digest"),
        Case("oci-digest-traversal", c, "a layer digest sha256:../../../../etc/passwd", REFUSED,
             oci_case(set_layer_digest("sha256:../../../../etc/passwd")), "Corrupt", "digest"),
        Case("oci-manifest-digest-traversal", c, "index.json names sha256:../../etc/passwd as "
             "the manifest", REFUSED, oci_case(manifest_digest("sha256:../../../../etc/passwd")),
             "Corrupt", "digest"),
        Case("oci-digest-sha512", c, "a sha512 layer digest", REFUSED,
             oci_case(set_layer_digest("sha512:" + "ab" * 64)), "Corrupt", "digest"),
        Case("oci-layer-blob-symlink", c, "oci-layout whose layer blob is a symlink to a file "
             "of the sentinel", REFUSED,
             oci_case(replace_with_symlink("layer", lambda ctx: ctx.sentinel + "/secret")),
             "InvalidInput", "blobs/sha256"),
        Case("oci-config-blob-symlink", c, "oci-layout whose config blob is a symlink to "
             "/etc/passwd", REFUSED,
             oci_case(replace_with_symlink("config", lambda ctx: "/etc/passwd")),
             "InvalidInput", "blobs/sha256"),
        Case("oci-index-dev-zero", c, "oci-layout whose index.json is a symlink to /dev/zero "
             "(an endless read)", REFUSED,
             oci_case(replace_with_symlink("index", lambda ctx: "/dev/zero")),
             "InvalidInput", "index.json"),
        Case("oci-archive-blob-symlink-outside", c, "oci-archive whose manifest blob member is a "
             "symlink to ../../etc/passwd", REFUSED,
             oci_case(replace_with_symlink("manifest", lambda ctx: "../../../../etc/passwd"),
                      "oci-archive"), "InvalidInput", "links outside"),
    ]


def _raw_archive(ctx: Ctx, members: Dict[str, bytes]) -> str:
    os.makedirs(ctx.work, exist_ok=True)
    path = os.path.join(ctx.work, "raw.tar")
    with tarfile.open(path, "w") as out:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------------------- the table

def markdown(corpus: Optional[List[Case]] = None) -> str:
    corpus = corpus if corpus is not None else cases()
    lines = ["| class | case | input | expected outcome | the message names / post-condition |",
             "| --- | --- | --- | --- | --- |"]
    for case in corpus:
        outcome = case.outcome if not case.by_driver else "; ".join(
            "%s: %s" % (d, case.outcome_for(d)) for d in DRIVERS)
        if case.outcome_for(DRIVERS[0]) == REFUSED or case.outcome_for(DRIVERS[1]) == REFUSED:
            outcome += " (%s)" % case.error
        said = []
        if REFUSED in (case.outcome_for(d) for d in DRIVERS):
            named = " and `%s`" % case.needle.replace("|", "\\|") if case.needle else ""
            said.append("the input path" + named)
        if case.post:
            said.append(case.post)
        if case.keeps_verified_layers:
            said.append("layer 1, complete and verified, stays (no image, no tag)")
        text = "; ".join(said).replace("|", "\\|").replace("\n", " ")
        lines.append("| %s | `%s` | %s | %s | %s |" % (
            case.cls, case.name, case.description.replace("|", "\\|"), outcome, text))
    lines += ["", "| class | cases | refused | confined | depends on the driver |",
              "| --- | --- | --- | --- | --- |"]
    for cls in dict.fromkeys(case.cls for case in corpus):
        counts = summary([case for case in corpus if case.cls == cls])
        lines.append("| %s | %d | %d | %d | %d |" % (cls, sum(counts.values()), counts[REFUSED],
                                                     counts[CONFINED], counts["mixed"]))
    counts = summary(corpus)
    lines.append("| **all** | **%d** | **%d** | **%d** | **%d** |" % (
        len(corpus), counts[REFUSED], counts[CONFINED], counts["mixed"]))
    lines.append("")
    lines.append("%d cases: %d refused, %d confined, %d with an outcome that depends on the "
                 "driver; each run against overlay2 and vfs (%d runs)."
                 % (len(corpus), counts[REFUSED], counts[CONFINED], counts["mixed"],
                    2 * len(corpus)))
    return "\n".join(lines)


def summary(corpus: List[Case]) -> Dict[str, int]:
    counts = {REFUSED: 0, CONFINED: 0, "mixed": 0}
    for case in corpus:
        if case.by_driver:
            counts["mixed"] += 1
        else:
            counts[case.outcome] += 1
    return counts


def _names_are_unique() -> None:
    seen = set()
    for case in cases():
        if case.name in seen:
            raise SystemExit("duplicate case name %s" % case.name)
        seen.add(case.name)


if __name__ == "__main__":
    _names_are_unique()
    if sys.argv[1:] == ["--markdown"]:
        print(markdown())
    else:
        print("usage: python tests/support/hostile.py --markdown", file=sys.stderr)
        sys.exit(2)
