"""Rules the source keeps, read from its syntax trees (as dulwich's ``test_source``).

One walk of every Python file under ``plugins/`` (``sources``, ``Source``), then one
test function per rule; a rule is checked on the ``ast`` (names resolved through the
file's imports), never on text, so a comment or a string cannot hide or fake a use.

Rules:
- durable writes: nothing under ``plugins/`` renames over a file or opens one for
  writing except ``module_utils/_atomic.py`` and the writers of ``WRITERS_ALLOWED``,
  each with the reason it is not a durable write of store metadata;
- no ``ansible`` import in ``plugins/module_utils``: the engine runs from pytest, a
  benchmark or a CLI (``ANSIBLE_IMPORTS_ALLOWED`` lists the exceptions: none today);
- imports point down: every module_utils file is in one group of ``MEMBERS`` (ops ->
  engine -> formats -> primitives) and imports only from its own group or below.
"""
from __future__ import annotations

import ast
import functools
import os
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Set, Tuple

from tests.support.paths import REPO

PLUGINS = os.path.join(REPO, "plugins")
ATOMIC = "module_utils/_atomic.py"
OWN_UTILS = "ansible_collections.strata.layers.plugins.module_utils"


# ----------------------------------------------------------------------------- the walk

@dataclass(frozen=True)
class Source:
    """One file under ``plugins/``: its path there (``module_utils/_atomic.py``) and tree."""

    rel: str
    tree: ast.Module

    @functools.cached_property
    def aliases(self) -> Dict[str, str]:
        """Local name -> dotted name of what it was imported as (``replace`` ->
        ``os.replace`` after ``from os import replace``)."""
        names: Dict[str, str] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        names[alias.asname] = alias.name
                    else:
                        head = alias.name.split(".")[0]
                        names[head] = head
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    names[alias.asname or alias.name] = "%s.%s" % (node.module, alias.name)
        return names

    def dotted(self, node: ast.AST) -> Optional[str]:
        """``os.path.join`` for that expression, its head resolved through the imports;
        None for anything but a name or a chain of attributes on one."""
        parts: List[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        parts.append(self.aliases.get(node.id, node.id))
        return ".".join(reversed(parts))

    @functools.cached_property
    def constants(self) -> Dict[str, ast.AST]:
        """The value of each name the file assigns once at its top level."""
        found: Dict[str, ast.AST] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and \
                    isinstance(node.targets[0], ast.Name):
                found[node.targets[0].id] = node.value
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                    node.value is not None:
                found[node.target.id] = node.value
        return found

    def scoped(self) -> Iterator[Tuple[str, ast.AST]]:
        """Every node with the qualified name of the function or class holding it
        (``Class.method``, ``outer.inner``; ``<module>`` at the top)."""
        stack: List[Tuple[str, ast.AST]] = [("<module>", self.tree)]
        while stack:
            scope, node = stack.pop()
            yield scope, node
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    name = child.name if scope == "<module>" else scope + "." + child.name
                    stack.append((name, child))
                else:
                    stack.append((scope, child))

    def imports(self) -> Iterator[Tuple[str, ast.AST]]:
        """The dotted name of every module imported (absolute imports; a relative one
        is given as ``.name``)."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    yield alias.name, node
            elif isinstance(node, ast.ImportFrom):
                yield "." * node.level + (node.module or ""), node


@functools.lru_cache(maxsize=None)
def sources() -> Tuple[Source, ...]:
    found = []
    for top, dirs, files in os.walk(PLUGINS):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(top, name)
                with open(path, "rb") as handle:
                    tree = ast.parse(handle.read(), filename=path)
                found.append(Source(os.path.relpath(path, PLUGINS), tree))
    return tuple(found)


def source_of(module: str) -> Optional[Source]:
    """Our module_utils file of a dotted module name, if it is one."""
    if not module.startswith(OWN_UTILS + "."):
        return None
    rel = "module_utils/" + module[len(OWN_UTILS) + 1:].replace(".", "/") + ".py"
    return next((s for s in sources() if s.rel == rel), None)


def under(prefix: str) -> List[Source]:
    return [s for s in sources() if s.rel.startswith(prefix)]


def test_the_walk_reads_every_plugin_file():
    names = {s.rel for s in sources()}
    assert ATOMIC in names and "module_utils/drivers/overlay2.py" in names, sorted(names)
    assert any(n.startswith("modules/") for n in names), sorted(names)


# ------------------------------------------------------------------- durable writes

# Replacing or renaming a file: only _atomic does it (write_file, write_stream,
# rename_durable: fsync before, fsync of the directory after).
RENAMES = {"os.replace", "os.rename", "os.renames", "shutil.move"}
# Creating a file with content by another road than open().
COPIES = {"shutil.copy", "shutil.copy2", "shutil.copyfile", "shutil.copytree",
          "tempfile.mkstemp", "tempfile.NamedTemporaryFile", "tempfile.TemporaryFile",
          "tempfile.SpooledTemporaryFile"}
# Opening with a mode (second argument or ``mode=``): writing when it has w, a, x or +.
OPENS = {"open", "io.open", "os.fdopen", "gzip.open", "bz2.open", "lzma.open",
         "tarfile.open", "codecs.open"}
WRITE_FLAGS = {"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND"}
PATH_WRITES = {"write_text", "write_bytes"}    # pathlib.Path's
# Not in the rule: entries without content (mkdir, mknod, mkfifo, symlink, link), which
# the rename or syncfs that publishes their tree makes durable, or which are scratch.

# The writers under plugins/ that are not durable writes of store metadata, with why.
# A key is a file (every write in it) or "file:Qualified.function" (the writes of that
# function only).  The kinds: layer or container FILES (made durable together by one
# syncfs before the record that publishes them is renamed in, docs/design.md
# "Crash-safety rules" 4, or by the rename_durable of their staged directory); LOCK
# files (flock targets, never renamed, their content a note); SCRATCH files under tmp/
# or a temp directory, read once and removed; the container's OUTPUT and the
# sandbox's set-up.
WRITERS_ALLOWED: Dict[str, str] = {
    "module_utils/_apply.py":
        "layer files extracted from a tar (content, device nodes, hard links): flushed "
        "by one syncfs before the layer record is renamed in",
    "module_utils/_copytree.py":
        "layer and container files copied or cloned by a commit or a migration: flushed "
        "by one syncfs before the record is renamed in",
    "module_utils/_initlayer.py":
        "the empty files of a container's init layer: container files, flushed with the "
        "container before its record is renamed in",
    "module_utils/_docker/tarsplit.py":
        "layer files cloned (FICLONE) while a Docker layer is applied: the applier's files",
    "module_utils/_docker/trash.py":
        "whited-out directories of a layer being applied moved aside within it and "
        "deleted: the applier's deletions, the layer synced before it is staged",
    "module_utils/_docker/migrate.py:Conversion._stage_layer":
        "a layerdb entry staged in a temp directory, published by rename_durable",
    "module_utils/_docker/migrate.py:Conversion._install_metadata":
        "Docker's metadata copied into the staged driver root, flushed by syncfs and "
        "published by rename_durable",
    "module_utils/_tarsplit.py:TarSplitWriter.__init__":
        "tar-split.gz written into a staged layer record directory, fsync'ed on close, "
        "published by rename_durable of the record",
    "module_utils/drivers/_base.py:Driver.commit_layer":
        "a filled staging directory renamed to its layer name; _store and _migrate syncfs "
        "the driver's home right after, before the record that makes it reachable",
    "module_utils/drivers/overlay2.py:Overlay2._ensure_link":
        "the l/ short-name symlink: flushed by the syncfs after commit_layer, and made "
        "again before every mount (lowerdirs) and by repair",
    "module_utils/drivers/overlay2.py:probe_overlay_mount":
        "probe files in a scratch directory removed after the probe",
    "module_utils/_migrate.py:_detach":
        "/dev/null opened as the standard streams of the detached remover of a previous "
        "driver's data",
    "module_utils/_lock.py":
        "the store's lock file: an flock target never renamed; its content a note of the "
        "holder",
    "module_utils/_runsetup.py:_cache_dir":
        "a cache mount's lock file (flock target)",
    "module_utils/_runsetup.py:copy_tree":
        "a RUN mount's files copied into a scratch directory the step sees",
    "module_utils/_runsetup.py:run_log":
        "a RUN step's output log in the host's temporary directory, never in the store",
    "module_utils/_ingest.py:ArchiveJob._decompress":
        "a compressed archive decompressed into scratch under tmp/ to be indexed, removed "
        "after",
    "module_utils/_registry.py:Registry.download":
        "a blob downloaded into scratch under tmp/, its digest verified before use",
    "module_utils/_remote.py:_save":
        "an ADD <url> download into the build's scratch directory",
    "module_utils/_ops/image_push.py:PushJob.spool":
        "a layer spooled to scratch under tmp/ to learn its digest before an upload",
    "module_utils/_ops/container.py:_write_plain":
        "the runtime bundle of one start: rewritten at every start, never read after a "
        "crash, so not durable on purpose",
    "module_utils/_runtime.py":
        "the container's stdout/stderr logs and its stdin: output, not store records",
    "module_utils/_sandbox.py":
        "the build sandbox's root (device nodes, /etc files, mount points): scratch torn "
        "down after the step",
    "module_utils/_crash.py":
        "the crash-point log, written only when a test asks for it",
}


@dataclass(frozen=True)
class Write:
    rel: str
    scope: str
    line: int
    what: str

    def allowed(self) -> Optional[str]:
        """The allow-list key that covers this write, if any."""
        for key in (self.rel + ":" + self.scope, self.rel):
            if key in WRITERS_ALLOWED:
                return key
        return None

    def __str__(self) -> str:
        return "plugins/%s:%d (%s): %s" % (self.rel, self.line, self.scope, self.what)


def _argument(call: ast.Call, position: int, keyword: str) -> Optional[ast.AST]:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[position] if len(call.args) > position else None


def _open_writes(call: ast.Call) -> Optional[str]:
    """Why an open-like call writes (its mode), or None when it only reads."""
    mode = _argument(call, 1, "mode")
    if mode is None:
        return None
    if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
        return "mode %r" % mode.value if set(mode.value) & set("wax+") else None
    return "a mode computed at run time"


def _flag_names(source: Source, expr: ast.AST, depth: int = 0) -> Set[str]:
    """The O_* names of an ``os.open`` flags expression, through the module constants
    it names (``DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY``), here or imported."""
    names: Set[str] = set()
    for node in ast.walk(expr):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and depth < 4:
            owner, name = source, node.id
            dotted = source.aliases.get(node.id, "")
            if "." in dotted:
                module, _dot, name = dotted.rpartition(".")
                owner = source_of(module)
            if owner is not None and name in owner.constants:
                names |= _flag_names(owner, owner.constants[name], depth + 1)
            else:
                names.add(name)
    return names


def _os_open_writes(source: Source, call: ast.Call) -> Optional[str]:
    """Why an ``os.open`` writes (its flags), or None when it only reads."""
    flags = _argument(call, 1, "flags")
    if flags is None:
        return None
    names = _flag_names(source, flags)
    if not any(n.startswith("O_") for n in names):
        return "flags computed at run time"
    found = sorted(names & WRITE_FLAGS)
    return "|".join(found) if found else None


def _write_of(source: Source, node: ast.AST) -> Optional[str]:
    """What ``node`` is, when it renames a file or opens one for writing."""
    if isinstance(node, (ast.Attribute, ast.Name)) and isinstance(node.ctx, ast.Load):
        name = source.dotted(node)
        if name in RENAMES or name in COPIES:
            return name
    if not isinstance(node, ast.Call):
        return None
    name = source.dotted(node.func)
    if name in OPENS:
        why = _open_writes(node)
        return "%s(%s)" % (name, why) if why else None
    if name == "os.open":
        why = _os_open_writes(source, node)
        return "os.open(%s)" % why if why else None
    if isinstance(node.func, ast.Attribute) and node.func.attr in PATH_WRITES:
        return "." + node.func.attr
    return None


def writes(source: Source) -> List[Write]:
    found = []
    for scope, node in source.scoped():
        what = _write_of(source, node)
        if what:
            found.append(Write(source.rel, scope, getattr(node, "lineno", 0), what))
    return sorted(found, key=lambda w: w.line)


def test_the_rule_sees_the_writes_of_atomic():
    """The walker is not blind: _atomic's own writes are each found."""
    atomic = next(s for s in sources() if s.rel == ATOMIC)
    seen = {w.what.split("(")[0] for w in writes(atomic)}
    assert {"os.replace", "os.rename", "os.open", "os.fdopen"} <= seen, seen


def test_the_rule_sees_every_road_to_a_write():
    """Aliases, keywords, computed modes and flags named by a constant are all seen."""
    code = "\n".join([
        "import os, shutil as sh",
        "from os import replace as swap",
        "FLAGS = os.O_WRONLY | os.O_CREAT",
        "READ = os.O_RDONLY",
        "def f(p, q, m):",
        "    swap(p, q)",
        "    sh.move(p, q)",
        "    keep = os.rename",
        "    open(p, mode='ab')",
        "    open(p, m)",
        "    os.open(p, FLAGS)",
        "    os.open(p, flags=m)",
        "    q.write_bytes(b'')",
        "    open(p)",
        "    open(p, 'rb')",
        "    os.open(p, READ)",
        "    os.path.join(p, q)",
    ])
    found = [(w.line, w.what) for w in writes(Source("x.py", ast.parse(code)))]
    assert found == [(6, "os.replace"), (7, "shutil.move"), (8, "os.rename"),
                     (9, "open(mode 'ab')"), (10, "open(a mode computed at run time)"),
                     (11, "os.open(O_CREAT|O_WRONLY)"),
                     (12, "os.open(flags computed at run time)"), (13, ".write_bytes")]


def test_durable_writes_go_through_atomic():
    """No rename over a file and no write-mode open outside _atomic, except the
    writers of WRITERS_ALLOWED (each with its reason)."""
    stray = [w for s in sources() if s.rel != ATOMIC for w in writes(s) if not w.allowed()]
    assert not stray, (
        "write these through _atomic (write_file, write_stream, rename_durable), or add "
        "the writer to WRITERS_ALLOWED with the reason it is not a durable write of store "
        "metadata:\n  %s" % "\n  ".join(map(str, stray)))


def test_every_allowed_writer_still_writes():
    """An entry of WRITERS_ALLOWED that covers no write any more is removed, so the list
    stays the list of what is there."""
    used = {w.allowed() for s in sources() if s.rel != ATOMIC for w in writes(s)}
    assert not set(WRITERS_ALLOWED) - used, sorted(set(WRITERS_ALLOWED) - used)


# ------------------------------------------------------------- no ansible below modules

# plugins/module_utils files that may import ansible, with why (none today: the module
# files own AnsibleModule; _argspec only calls the module object it is given).
ANSIBLE_IMPORTS_ALLOWED: Dict[str, str] = {}


def _is_ansible(module: str) -> bool:
    """``ansible`` itself, or another collection's (or our modules') code, which
    needs ansible; our own module_utils is not."""
    if module == "ansible" or module.startswith("ansible."):
        return True
    if module == "ansible_collections" or module.startswith("ansible_collections."):
        return not (module == OWN_UTILS or module.startswith(OWN_UTILS + "."))
    return False


def test_module_utils_do_not_import_ansible():
    found = ["plugins/%s:%d imports %s" % (s.rel, node.lineno, module)
             for s in under("module_utils/") if s.rel not in ANSIBLE_IMPORTS_ALLOWED
             for module, node in s.imports() if _is_ansible(module)]
    assert not found, "the engine imports no ansible (the modules do):\n  " + \
        "\n  ".join(found)


def test_every_ansible_import_allowed_is_there():
    names: Set[str] = {s.rel for s in under("module_utils/")
                       if any(_is_ansible(m) for m, _node in s.imports())}
    assert set(ANSIBLE_IMPORTS_ALLOWED) <= names, sorted(set(ANSIBLE_IMPORTS_ALLOWED) - names)


# ------------------------------------------------------------- the import direction

# Every file under plugins/module_utils is in one group; a file imports from its own group
# or from those below it, never from above (docs/design.md, "The engine, file by file"):
#   ops        the modules' logic, one file per module, and the options they share
#   engine     the store, its records and what works on them
#   formats    archive, registry, Dockerfile and tar formats, build steps' parts, the
#              container runtime, the drivers and Docker's on-disk layout
#   primitives errors, digests, durable writes, locks, paths, bounded readers
GROUPS = ("primitives", "formats", "engine", "ops")
MEMBERS: Dict[str, Tuple[str, ...]] = {
    "primitives": (
        "_errors", "_digest", "_atomic", "_lock", "_crash", "_jsondoc", "_safepath",
        "_copytree", "_sparse", "_files", "_fsinfo", "_trust"),
    "formats": (
        "_tarformat", "_tarsplit", "_compression", "_apply", "_changes", "_archive",
        "_imageref", "_imageconfig", "_registry", "_regsettings", "_upload", "_encode",
        "_dockerfile", "_remote", "_runmounts", "_runsetup", "_sandbox", "_buildcontext",
        "_imageview", "_passwd", "_runtime_spec", "_runtime", "_initlayer", "_verify",
        "_probe", "drivers/*", "_docker/__init__", "_docker/layout", "_docker/graph",
        "_docker/candidates", "_docker/tarsplit", "_docker/daemon", "_docker/trash"),
    "engine": (
        "_store", "_layers", "_imagerecords", "_recovery", "_blobrecords", "_containers",
        "_commit", "_check", "_prune", "_history", "_ingest", "_export", "_pull", "_builder",
        "_migrate", "_docker/migrate"),
    "ops": ("_ops/*", "_argspec"),
}


def group_of(rel: str) -> Optional[str]:
    """The group of ``module_utils/<name>.py`` (None when it is in none)."""
    name = rel[len("module_utils/"):-len(".py")]
    for group, members in MEMBERS.items():
        for member in members:
            if name == member or (member.endswith("/*") and name.startswith(member[:-1])):
                return group
    return None


def own_imports(source: Source) -> Iterator[Tuple[Source, ast.AST]]:
    """The module_utils files ``source`` imports (``from ..module_utils import _x`` and
    ``from ..module_utils._docker import daemon`` name a file, as ``from .._x import y``
    does)."""
    for node in ast.walk(source.tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = ["%s.%s" % (node.module, alias.name) for alias in node.names]
            names = [n for n in names if source_of(n)] or [node.module]
        else:
            continue
        for name in names:
            found = source_of(name)
            if found is not None:
                yield found, node


def test_every_module_utils_file_is_in_one_group():
    loose = [s.rel for s in under("module_utils/") if group_of(s.rel) is None]
    assert not loose, "place each in a group of MEMBERS: %s" % loose
    named = [m for members in MEMBERS.values() for m in members if not m.endswith("/*")]
    stale = [m for m in named if source_of(OWN_UTILS + "." + m.replace("/", ".")) is None]
    assert not stale, "MEMBERS names files that are gone: %s" % stale


def test_imports_point_down():
    upward = []
    for source in under("module_utils/"):
        mine = GROUPS.index(group_of(source.rel) or "ops")
        for target, node in own_imports(source):
            theirs = GROUPS.index(group_of(target.rel) or "ops")
            if theirs > mine:
                upward.append("plugins/%s:%d (%s) imports %s (%s)" % (
                    source.rel, node.lineno, GROUPS[mine], target.rel, GROUPS[theirs]))
    assert not upward, "imports point down (ops -> engine -> formats -> primitives):\n  " + \
        "\n  ".join(upward)


def test_the_direction_rule_sees_a_file_import():
    """``from ...module_utils import _store`` names the file, as ``from ..._store import
    Store`` does: both are seen."""
    ops = next(s for s in under("module_utils/_ops/") if s.rel.endswith("storage_driver.py"))
    targets = {t.rel for t, _node in own_imports(ops)}
    assert "module_utils/_docker/daemon.py" in targets, sorted(targets)
    assert "module_utils/_errors.py" in targets, sorted(targets)


def test_every_own_import_names_a_file_that_exists():
    """``from ...module_utils._x import y``: ``_x`` is a file of ours (a module renamed or
    split leaves no importer behind; plugins/, tests/ and benchmarks/ alike)."""
    missing = []
    for top in ("plugins", "tests", "benchmarks"):
        for base, dirs, files in os.walk(os.path.join(REPO, top)):
            dirs[:] = [d for d in dirs if d not in ("__pycache__", "output")]
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(base, name)
                with open(path, "rb") as handle:
                    tree = ast.parse(handle.read(), filename=path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom) and node.module and \
                            node.module.startswith(OWN_UTILS + ".") and \
                            source_of(node.module) is None and \
                            not os.path.isdir(os.path.join(
                                PLUGINS, "module_utils",
                                *node.module[len(OWN_UTILS) + 1:].split("."))):
                        missing.append("%s:%d %s" % (os.path.relpath(path, REPO),
                                                     node.lineno, node.module))
    assert not missing, "imports of files that do not exist:\n  " + "\n  ".join(missing)
