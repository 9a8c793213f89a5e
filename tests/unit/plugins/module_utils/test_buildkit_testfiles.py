"""BuildKit's own parser test files (data/buildkit_testfiles, see its README) through our
parser.

Positive files: our reading of each instruction (keyword, flags, arguments) printed the
way BuildKit's parser prints its syntax tree must equal the file's ``result``; then the
whole file through ``parse`` builds a spec, or is refused for the reason BuildKit's
instruction parser refuses it too.  Negative files: refused with a clear InvalidInput.
"""
from __future__ import annotations

import os
from typing import List, Optional

import pytest

from ansible_collections.strata.layers.plugins.module_utils import _dockerfile as dockerfile
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "buildkit_testfiles")
POSITIVE = sorted(os.listdir(os.path.join(DATA, "positive")))
NEGATIVE = sorted(os.listdir(os.path.join(DATA, "negative")))

# Positive files that BuildKit's parser reads but that no build accepts as a whole, with
# what we say; BuildKit refuses each too, when it turns the tree into instructions or
# expands their variables.
NOT_BUILDABLE = {
    "json": "CMD before the first FROM",     # CMD lines only, no stage
    "jeztah-invalid-json-json-inside-string": "before the first FROM",
    "jeztah-invalid-json-json-inside-string-double": "before the first FROM",
    "jeztah-invalid-json-single-quotes": "before the first FROM",
    "jeztah-invalid-json-unterminated-bracket": "before the first FROM",
    "jeztah-invalid-json-unterminated-string": "before the first FROM",
    "flags": "does not support the flag --user",
    "health": "HEALTHCHECK needs an argument",
    "env": "matching single-quote",          # ENV name='a\'b': no escape inside '...'
    "escapes": "matching double-quote",      # ADD \conf\\" leaves a quote open
}
# ADD of a URL: read once remote ADD is there, refused by name until then.
REMOTE_ADD = {"cpuguy83-nagios": "ADD of URLs is not supported"}


def read(kind: str, name: str, part: str) -> str:
    with open(os.path.join(DATA, kind, name, part), encoding="utf-8") as handle:
        return handle.read()


# ---------------------------------------------------------------------------------------
# BuildKit's syntax-tree print, from our reader's pieces
# ---------------------------------------------------------------------------------------

def quote_all(values: List[str]) -> str:
    return " ".join(dockerfile.go_quote(value) for value in values)


def maybe_json(rest: str) -> Optional[List[str]]:
    """The exec form's strings, or None for text (shell form)."""
    return dockerfile._json_array(rest)


def arguments(keyword: str, rest: str, escape: str) -> List[str]:
    if keyword in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
        found = maybe_json(rest)
        return found if found is not None else ([rest] if rest else [])
    if keyword in ("ADD", "COPY", "VOLUME"):
        found = maybe_json(rest)
        return found if found is not None else whitespace_words(rest)
    if keyword in ("FROM", "EXPOSE"):
        return whitespace_words(rest)
    if keyword in ("ENV", "LABEL"):
        return name_values(rest, escape)
    if keyword == "ARG":
        return dockerfile._parse_words(rest, escape)
    if keyword == "HEALTHCHECK":
        kind, _sep, command = rest.partition(" ")
        if not kind:
            return []
        found = maybe_json(command.lstrip())
        return [kind] + (found if found is not None else
                         ([command.lstrip()] if command.strip() else []))
    return [rest] if rest else []     # MAINTAINER, USER, WORKDIR, STOPSIGNAL


def whitespace_words(rest: str) -> List[str]:
    return dockerfile._WHITESPACE_RE.split(rest) if rest else []


def name_values(rest: str, escape: str) -> List[str]:
    """Each pair as key, value and "=" (or "" for the legacy ``KEY value`` form), the
    value as written (quotes and escapes kept)."""
    words = dockerfile._parse_words(rest, escape)
    if words and "=" not in words[0]:
        key, value = dockerfile._WHITESPACE_RE.split(rest, 1)
        return [key, value, ""]
    out: List[str] = []
    for word in words:
        key, _sep, value = word.partition("=")
        out += [key, value, "="]
    return out


def dump(text: str) -> List[str]:
    reader = dockerfile._Reader(text, lambda number: "line %d" % number)
    lines = []
    for logical in reader.read():
        lines.append("(%s)" % node(logical.text, reader.escape))
    return lines


def node(text: str, escape: str) -> str:
    keyword, flags, rest = dockerfile._split_command(text)
    parts = [keyword.lower()]
    if flags:
        parts.append("[%s]" % quote_all(flags))
    if keyword.upper() == "ONBUILD":
        parts.append("(%s)" % node(rest, escape))
    else:
        parts += [dockerfile.go_quote(value) for value in arguments(keyword.upper(), rest, escape)]
    return " ".join(parts)


@pytest.mark.parametrize("name", POSITIVE)
def test_our_reading_prints_buildkits_syntax_tree(name):
    expected = read("positive", name, "result").splitlines()
    assert dump(read("positive", name, "Dockerfile")) == expected


@pytest.mark.parametrize("name", POSITIVE)
def test_each_positive_file_builds_a_spec_or_is_refused_as_buildkit_refuses(name):
    text = read("positive", name, "Dockerfile")
    if name in NOT_BUILDABLE:
        with pytest.raises(InvalidInput, match=NOT_BUILDABLE[name]):
            dockerfile.parse(text)
        return
    try:
        spec = dockerfile.parse(text)
    except InvalidInput as exc:
        assert name in REMOTE_ADD and REMOTE_ADD[name] in str(exc)
        return
    assert spec.stages and spec.target.instructions is not None


@pytest.mark.parametrize("name", NEGATIVE)
def test_each_negative_file_is_refused_with_a_clear_message(name):
    with pytest.raises(InvalidInput) as info:
        dockerfile.parse(read("negative", name, "Dockerfile"))
    assert "Traceback" not in str(info.value) and str(info.value)
