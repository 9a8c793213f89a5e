"""One copy of the on-disk layout: docs/design.md, "Layout of a store".

The code's list of what a store holds is ``_trust.STORE_ENTRIES`` (a directory holding
anything else is not made a store) plus a home per driver (``_probe.DRIVERS``); the
layout section's table must list exactly those, and its "Each driver's home" listing
must show every driver's home with the subdirectories the driver classes name.  No
docstring under ``plugins/module_utils`` keeps a second layout listing (it points to
design.md instead), and every such pointer names a section design.md has.

``module_utils/_docker/`` is left out of the listing rule: its layout is dockerd's data
root (another program's files), described where it is read and in docs/docker.md.
"""
from __future__ import annotations

import ast
import os
import re
from typing import Dict, Iterator, List, Set, Tuple

from ansible_collections.strata.layers.plugins.module_utils._probe import (
    DRIVERS, driver_class)
from ansible_collections.strata.layers.plugins.module_utils._trust import STORE_ENTRIES
from tests.support.paths import REPO

DESIGN = os.path.join(REPO, "docs", "design.md")
MODULE_UTILS = os.path.join(REPO, "plugins", "module_utils")
LAYOUT = "Layout of a store"
HOMES = "Each driver's home"
# another program's layout, not the store's (see the module docstring)
NOT_THE_STORE = ("_docker" + os.sep,)

# An indented line starting with a store path is a layout listing: "    layers/<chain>/",
# "      containers/<id>/diff", "    btrfs/init/<id>/", "    tags.json    ...".
_SUBDIRS = ("layers|images|containers|init|l|registry|cache|incomplete|tmp|mounts|quarantine"
            "|distribution|sources|pulls|downloads|runtime|compressed|origins|uploads")
LISTING = re.compile(r"^\s+(?:[\w.-]+/)?(?:%s)/\S|^\s+(?:lock|store\.json|tags\.json)\s{2,}"
                     % _SUBDIRS)
POINTER = re.compile(r'docs/design\.md, "([^"]+)"(?: \("([^"]+)"\))?')


def _design() -> str:
    with open(DESIGN, encoding="utf-8") as handle:
        return handle.read()


def _headings(text: str) -> List[str]:
    return [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]


def _section(text: str, title: str, level: str = "## ") -> str:
    """The body of the section whose heading starts with ``title``, up to the next
    heading of the same or a higher level."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(level + title))
    depth = len(level.strip())
    body = []
    for line in lines[start + 1:]:
        if line.startswith("#") and len(line) - len(line.lstrip("#")) <= depth:
            break
        body.append(line)
    return "\n".join(body)


def _table_entries(section: str) -> Set[str]:
    """The top-level names in the first column of the layout table (``layers/<x>/`` ->
    ``layers``; a cell may name several, each in backquotes)."""
    names = set()
    for line in section.splitlines():
        if not line.startswith("| `"):
            continue
        first = line.split(" | ")[0]
        for path in re.findall(r"`([^`]+)`", first):
            names.add(path.split("/")[0])
    return names


def _code_block(section: str) -> str:
    return section.split("```")[1]


def _docstrings() -> Iterator[Tuple[str, int, str]]:
    """(file under module_utils, line, docstring) of every module, class and function."""
    for top, _dirs, files in os.walk(MODULE_UTILS):
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            path = os.path.join(top, name)
            with open(path, encoding="utf-8") as handle:
                tree = ast.parse(handle.read(), path)
            rel = os.path.relpath(path, MODULE_UTILS)
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                     ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node, clean=False)
                    if doc:
                        yield rel, getattr(node, "lineno", 1), doc


def test_layout_section_lists_every_store_entry():
    entries = _table_entries(_section(_design(), LAYOUT))
    missing = sorted(STORE_ENTRIES - entries)
    assert not missing, ("docs/design.md, %r does not describe %s, which _trust.STORE_ENTRIES "
                         "says a store makes at its top" % (LAYOUT, missing))


def test_layout_section_lists_every_driver_home():
    entries = _table_entries(_section(_design(), LAYOUT))
    missing = sorted(set(DRIVERS) - entries)
    assert not missing, "docs/design.md, %r has no row for the homes %s" % (LAYOUT, missing)


def test_layout_section_lists_nothing_the_code_does_not_make():
    # a name the store made but did not know would make refuse_foreign turn down the
    # store's own directory: the table and STORE_ENTRIES must agree both ways
    extra = sorted(_table_entries(_section(_design(), LAYOUT)) - STORE_ENTRIES - set(DRIVERS))
    assert not extra, ("docs/design.md, %r lists %s, which neither _trust.STORE_ENTRIES nor "
                       "_probe.DRIVERS knows" % (LAYOUT, extra))


def test_each_driver_home_is_shown_with_its_directories():
    block = _code_block(_section(_design(), HOMES, "### "))
    for name in DRIVERS:
        assert re.search(r"(^|\s)%s/" % re.escape(name), block), \
            "docs/design.md, %r does not show the home %s/" % (HOMES, name)
        cls = driver_class(name)
        for sub in (cls.layers_dir, cls.containers_dir):
            assert "%s/<" % sub in block, \
                "docs/design.md, %r does not show %s/ (driver %s)" % (HOMES, sub, name)


def test_no_module_utils_docstring_keeps_a_layout_listing():
    found: Dict[str, List[str]] = {}
    for rel, line, doc in _docstrings():
        if rel.startswith(NOT_THE_STORE):
            continue
        for text in doc.splitlines():
            if LISTING.match(text):
                found.setdefault("%s:%d" % (rel, line), []).append(text.strip())
    assert not found, ("layout listings outside docs/design.md (replace them with a pointer: "
                       "On-disk layout: docs/design.md, \"%s\"): %s" % (LAYOUT, found))


def test_the_listing_rule_sees_a_listing():
    # the rule above is only as good as its pattern: it must catch the shapes the
    # listings had before they moved to design.md
    for text in ("    layers/<chain-hex>/      layer record", "      containers/<id>/diff  upper",
                 "    btrfs/init/<id>/   snapshot", "    tags.json                NAME:TAG",
                 "    compressed/<diff-hex>-<compression>.json  {diff_id}"):
        assert LISTING.match(text), text
    for text in ("Layer records: ``<data_root>/layers/<chain-hex>/``.",
                 'On-disk layout: docs/design.md, "Layout of a store".'):
        assert not LISTING.match(text), text


def test_docstring_pointers_name_sections_design_md_has():
    headings = _headings(_design())
    wrong = []
    for rel, line, doc in _docstrings():
        for match in POINTER.finditer(" ".join(doc.split())):
            for title in filter(None, match.groups()):
                if not any(h.startswith(title) for h in headings):
                    wrong.append("%s:%d: %r" % (rel, line, title))
    assert not wrong, "pointers to sections docs/design.md does not have: %s" % wrong


# ------------------------------------------------------------------- the module map

GROUP_HEADS = ("ops:", "engine:", "formats:", "primitives:")


def _module_map() -> Dict[str, List[str]]:
    """The files the map lists under each group (``_docker/layout.py``, ``_store.py``)."""
    block = _code_block(_section(_design(), "The engine, file by file"))
    listed: Dict[str, List[str]] = {}
    group = None
    for line in block.splitlines():
        if line.startswith(GROUP_HEADS):
            group = line.split(":")[0]
            continue
        if group is None or not line.startswith("  "):
            continue
        for name in re.findall(r"(?<![\w/.])((?:_ops/|_docker/|drivers/)?[\w]+\.py)\b", line):
            listed.setdefault(name, []).append(group)
    return listed


def test_the_module_map_lists_every_module_utils_file_once_under_its_group():
    from tests.unit.test_source import group_of
    top = os.path.join(REPO, "plugins", "module_utils")
    files = sorted(os.path.relpath(os.path.join(d, f), top)
                   for d, _dirs, names in os.walk(top) for f in names
                   if f.endswith(".py") and f != "__init__.py" and "__pycache__" not in d)
    listed = _module_map()
    missing = [f for f in files if f not in listed]
    assert not missing, "docs/design.md's module map does not list %s" % missing
    stale = sorted(set(listed) - set(files))
    assert not stale, "docs/design.md's module map lists files that are gone: %s" % stale
    twice = {f: g for f, g in listed.items() if len(g) > 1}
    assert not twice, "listed more than once: %s" % twice
    misplaced = {f: (listed[f][0], group_of("module_utils/" + f)) for f in files
                 if listed[f][0] != group_of("module_utils/" + f)}
    assert not misplaced, "map group != test_source group: %s" % misplaced
