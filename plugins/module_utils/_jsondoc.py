# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one reader of JSON documents that come from outside the store.

Manifests, indexes, image configs and registry answers are written by whoever made
the archive or runs the registry.  ``json.loads`` alone trusts them too much: a
document nested 100,000 deep ends in a RecursionError (a traceback), and 16 MiB of
``[[],[],...]`` becomes five million Python lists (hundreds of MiB).  So a document is
refused before it is decoded when it is larger than its bound or holds more arrays and
objects than theirs (brackets counted by C code; an exact scan that skips strings only
when the count is over), and after decoding when it nests deeper than its bound (a
walk of the value; beyond the interpreter's recursion limit the C decoder's own guard
raises first, and is caught).  The cost stays linear in the document whatever it holds.
Every bound has a default far above any real image (a 125-layer manifest nests 3 deep
and holds about 130 objects) and can be raised by the caller.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Dict

from ansible_collections.strata.layers.plugins.module_utils._errors import Corrupt, InvalidInput


@dataclass(frozen=True)
class Bounds:
    """What one JSON document may cost: bytes, nesting depth, arrays and objects."""

    size: int = 16 << 20
    depth: int = 64
    containers: int = 100_000


DEFAULT = Bounds()
_TOKEN = re.compile(rb'[\[\]{}"]')
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


def check_shape(raw: bytes, what: str, bounds: Bounds = DEFAULT) -> None:
    """Refuse ``raw`` when it is larger, or holds more arrays and objects, than ``bounds``
    allows, before it is decoded; linear in its size whatever it holds.

    Counting brackets is done by C code (``bytes.count``); only a document with more
    brackets than the bound allows (some may sit inside strings) gets the exact scan,
    which skips strings and stops at the bound."""
    if len(raw) > bounds.size:
        raise InvalidInput("%s is %d bytes, more than the %d a JSON document may have here"
                           % (what, len(raw), bounds.size))
    if raw.count(b"[") + raw.count(b"{") > bounds.containers:
        _scan(raw, what, bounds)


def _scan(raw: bytes, what: str, bounds: Bounds) -> None:
    """The exact count of arrays and objects (and their depth), strings skipped."""
    depth = containers = 0
    pos = 0
    while True:
        match = _TOKEN.search(raw, pos)
        if match is None:
            return
        char = raw[match.start():match.start() + 1]
        if char == b'"':
            string = _STRING.match(raw, match.start())
            if string is None:
                return                      # an unterminated string: the decoder says so
            pos = string.end()
            continue
        pos = match.end()
        if char in b"[{":
            depth += 1
            containers += 1
            _check_depth(depth, what, bounds)
            if containers > bounds.containers:
                raise InvalidInput("%s holds more than %d arrays and objects: refused"
                                   % (what, bounds.containers))
        else:
            depth -= 1


def _check_depth(depth: int, what: str, bounds: Bounds) -> None:
    if depth > bounds.depth:
        raise InvalidInput("%s nests arrays and objects more than %d deep: refused "
                           "(no image document is that deep)" % (what, bounds.depth))


def _walk_depth(value: Any, what: str, bounds: Bounds) -> None:
    """The depth of a decoded value, without recursion (at most ``bounds.containers``
    arrays and objects to visit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (dict, list)):
                _check_depth(depth + 1, what, bounds)
                stack.append((child, depth + 1))


def loads(raw: bytes, what: str, bounds: Bounds = DEFAULT) -> Any:
    """``raw`` decoded as JSON within ``bounds``; Corrupt naming ``what`` when it is not
    JSON, InvalidInput when it is beyond a bound."""
    check_shape(raw, what, bounds)
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt("%s is not valid JSON: %s" % (what, exc)) from exc
    except RecursionError as exc:
        # the C decoder guards its own recursion: deeper than the interpreter's limit
        raise InvalidInput("%s nests arrays and objects more than %d deep: refused (no image "
                           "document is that deep)" % (what, bounds.depth)) from exc
    if isinstance(value, (dict, list)):
        _walk_depth(value, what, bounds)
    return value


def load_object(raw: bytes, what: str, bounds: Bounds = DEFAULT) -> Dict[str, Any]:
    """``raw`` as a JSON object (a config, manifest or index)."""
    data = loads(raw, what, bounds)
    if not isinstance(data, dict):
        raise Corrupt("%s is not a JSON object" % what)
    return data
