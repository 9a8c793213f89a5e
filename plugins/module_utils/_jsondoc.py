# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one reader of JSON documents that come from outside the store.

Manifests, indexes, image configs and registry answers are written by whoever made
the archive or runs the registry.  ``json.loads`` alone trusts them too much: a
document nested 100,000 deep ends in a RecursionError (a traceback), and 16 MiB of
``[[],[],...]`` becomes five million Python lists (hundreds of MiB).  So before
anything is decoded, one linear pass over the bytes checks the three bounds that
decide the decoder's cost: the document's size, its nesting depth and its number of
arrays and objects.  Every bound has a default far above any real image (a 125-layer
manifest nests 3 deep and holds about 130 objects) and can be raised by the caller.
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
    """Refuse ``raw`` when it is larger, deeper or holds more arrays and objects than
    ``bounds`` allows; linear in its size whatever it holds."""
    if len(raw) > bounds.size:
        raise InvalidInput("%s is %d bytes, more than the %d a JSON document may have here"
                           % (what, len(raw), bounds.size))
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
            if depth > bounds.depth:
                raise InvalidInput("%s nests arrays and objects more than %d deep: refused "
                                   "(no image document is that deep)" % (what, bounds.depth))
            if containers > bounds.containers:
                raise InvalidInput("%s holds more than %d arrays and objects: refused"
                                   % (what, bounds.containers))
        else:
            depth -= 1


def loads(raw: bytes, what: str, bounds: Bounds = DEFAULT) -> Any:
    """``raw`` decoded as JSON within ``bounds``; Corrupt naming ``what`` when it is not
    JSON, InvalidInput when it is beyond a bound."""
    check_shape(raw, what, bounds)
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise Corrupt("%s is not valid JSON: %s" % (what, exc)) from exc
    except RecursionError as exc:        # only if a caller raised depth past the stack
        raise InvalidInput("%s nests too deeply to decode" % what) from exc


def load_object(raw: bytes, what: str, bounds: Bounds = DEFAULT) -> Dict[str, Any]:
    """``raw`` as a JSON object (a config, manifest or index)."""
    data = loads(raw, what, bounds)
    if not isinstance(data, dict):
        raise Corrupt("%s is not a JSON object" % what)
    return data
