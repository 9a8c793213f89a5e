# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Dockerfile parser of ``image_build``: a spec in, a checked build plan out.

``parse(text)`` reads Dockerfile text, ``from_instructions(items)`` the same spec as
YAML (one ``{INSTRUCTION: value}`` item a step; each item is rendered to the Dockerfile
line it stands for and read by the same code, so both give the same ``Spec``).  Every
problem is found here, before anything is built: ``InvalidInput(msg, line=N)`` whose
message names the line (or item) and quotes the offending text.

What is read, as Docker reads it (BuildKit's Dockerfile frontend where the two builders
differ, the classic builder's ``docker history`` strings):

- parser directives at the top (``# escape=`` sets the escape character, ``# syntax=``
  and ``# check=`` are accepted and ignored), comments, line continuations (comment and
  blank lines inside a continuation are skipped), a UTF-8 BOM, CRLF line ends;
- heredocs for ``RUN``, ``COPY`` and ``ADD`` (``<<EOF``, ``<<-EOF`` strips leading tabs,
  a quoted delimiter turns off expansion, several on one line, ``<< EOF`` with a space
  when the delimiter is a plain word);
- variable substitution (``$V``, ``${V}``, ``${V:-x}``, ``${V-x}``, ``${V:+x}``,
  ``${V+x}``, ``${V:?msg}``, ``${V?msg}``, ``${V#p}``, ``${V##p}``, ``${V%p}``,
  ``${V%%p}``, ``${V/p/x}``, ``${V//p/x}``, ``\\$``), applied where BuildKit applies it:
  FROM, COPY/ADD (sources, destination, ``--chown``, ``--chmod``; never ``--from``), ENV,
  ARG, WORKDIR, USER, EXPOSE, LABEL, VOLUME, STOPSIGNAL.  RUN, CMD, ENTRYPOINT, SHELL,
  HEALTHCHECK, ONBUILD and MAINTAINER keep their text (the shell expands at run time).
  The variables are the stage's ENV (from its base image, given by ``base_config``, or
  its base stage, whose ARG values it inherits too) and the ARGs it declared, in order;
  as in BuildKit, the later of an ENV and an ARG of one name wins (only ENV reaches the
  config); a build arg overrides an ARG default; an ARG with neither default nor build
  arg is unset (``$V`` is empty, ``${V-x}`` gives ``x``); every stage starts with a PATH
  (the default one when its base has none); ARGs before the first FROM are seen by FROM
  lines only, or by a stage that declares them again without a default.
  ``TARGETPLATFORM``, ``TARGETOS``, ``TARGETARCH``, ``TARGETVARIANT`` and their
  ``BUILD*`` twins are predefined before the first FROM, as BuildKit does;
- JSON (exec) form and shell form; text that is not a JSON array of strings is shell
  form, an array holding anything but strings is an error;
- multi-stage builds: ``FROM [--platform=P] image [AS name]``, ``FROM scratch``,
  stages named by name (case-insensitive; a name used twice means the later stage) or
  index, ``COPY --from=stage|index|image`` (any stage but itself, earlier or later: the
  builder takes stages in dependency order, a cycle is refused), and the target (the
  last stage unless named).

Decisions where Docker leaves a choice:

- ``MAINTAINER`` is accepted and sets the image's ``author``;
- ``ONBUILD`` is accepted: its trigger (heredocs included, stored as BuildKit stores
  them) is checked and stored in the config, never run;
- read as BuildKit reads them although it lints them: ``EXPOSE 0`` and the
  ``host:port``/``ip:host:port`` forms (the container port is exposed), an empty
  ``--chmod`` after substitution (no chmod), ``RUN []`` (refused only when built);
- ``HEALTHCHECK`` is accepted with its options and stored in the config;
- ``ADD`` takes a URL or a git repository as its only source (``--checksum``,
  ``--keep-git-dir``; see ``_remote``), COPY refuses them;
- ``RUN`` takes ``--mount`` (see ``_runmounts``) and ``--network=default|none|host``;
  other flags are refused by name (``COPY --parents`` and ``--exclude`` are read);
- ``<< WORD`` (a space after ``<<``) opens a heredoc only when WORD is a plain word, so
  that shell arithmetic such as ``$((1 << 2))`` stays a command.

What the builder gets: ``Spec.stages`` (``needed_stages()`` for the target and what it
depends on), each ``Stage`` with its ``Instruction`` list.  An instruction carries its
typed payload (``args``), the state in effect before it (``state``: ENV, ARGs, SHELL,
WORKDIR, USER; ``state.run_env()`` is the environment of a RUN), and ``created_by``, the
string Docker's classic builder records in the image history (COPY and ADD leave
``{source}`` for the content hash, see ``Instruction.history``).  ``apply_config``
applies an instruction's configuration change to an image config.

``DockerIgnore`` matches build-context paths against ``.dockerignore`` as Docker does.
"""
from __future__ import annotations

import difflib
import ipaddress
import json
import posixpath
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import (
    Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Pattern, Sequence, Set, Tuple,
    Union)

from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput
from ansible_collections.strata.layers.plugins.module_utils._imageconfig import host_platform
from ansible_collections.strata.layers.plugins.module_utils._remote import (
    Remote, RemoteError, remote_source)
from ansible_collections.strata.layers.plugins.module_utils._runmounts import (
    Mount, MountError, network_mode, parse_mounts)

DEFAULT_SHELL = ["/bin/sh", "-c"]
# What Docker's daemon gives a container whose image sets no PATH.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SOURCE_PLACEHOLDER = "{source}"
PIPES_DIR = "/dev/pipes"
KEYWORDS = ("ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
            "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
            "WORKDIR")
LAYER_KEYWORDS = frozenset(("RUN", "COPY", "ADD"))
BaseConfig = Callable[[str], Optional[Mapping[str, Any]]]


# ---------------------------------------------------------------------------------------
# The data model
# ---------------------------------------------------------------------------------------

@dataclass
class Heredoc:
    """A here-document: the lines after its instruction, up to the delimiter line."""

    name: str          # the delimiter word, quotes removed
    content: str       # the body as written, every line with its line end
    chomp: bool        # ``<<-``: leading tabs are stripped
    expand: bool       # False when the delimiter was quoted

    def body(self) -> str:
        """The content with leading tabs stripped when ``chomp`` asks for it."""
        return re.sub(r"(?m)^\t+", "", self.content) if self.chomp else self.content


@dataclass
class Run:
    """RUN: ``argv`` is what the build container executes (the stage's SHELL prepended
    in shell form); ``files`` are read-only executable files the command needs (a
    heredoc script with a shebang runs from ``/dev/pipes/<name>``, as BuildKit does)."""

    command: Union[str, List[str]]    # the shell text as written, or the exec argv
    shell_form: bool
    heredocs: List[Heredoc]
    argv: List[str]
    files: Dict[str, str] = field(default_factory=dict)
    network: Optional[str] = None     # None: the module's ``network`` option
    mounts: List[Mount] = field(default_factory=list)


@dataclass
class InlineFile:
    """A COPY/ADD source written as a heredoc: a file named after its delimiter."""

    name: str
    content: str       # tabs stripped (``<<-``) and variables expanded (unquoted delimiter)


@dataclass
class Copy:
    """COPY and ADD (``is_add``).  ``dest_path`` is ``dest`` made absolute against the
    WORKDIR; it ends with ``/`` when the destination names a directory."""

    sources: List[str]
    dest: str
    dest_path: str
    from_stage: Optional[int] = None
    from_image: Optional[str] = None
    chown: Optional[str] = None
    chmod: Optional[str] = None
    link: bool = False
    is_add: bool = False
    heredoc_files: List[InlineFile] = field(default_factory=list)
    remote: Optional[Remote] = None     # ADD of a URL or a git repository
    parents: bool = False          # COPY --parents: source paths kept below dest
    excludes: List[str] = field(default_factory=list)   # --exclude patterns


@dataclass
class Command:
    """CMD: the argv stored in the config (the SHELL prepended in shell form)."""

    argv: List[str]
    shell_form: bool


@dataclass
class Entrypoint(Command):
    """ENTRYPOINT; ``clears_cmd`` when no CMD came before it in this stage (Docker then
    drops the CMD inherited from the base image)."""

    clears_cmd: bool = False


@dataclass
class Env:
    pairs: List[Tuple[str, str]]


@dataclass
class Label:
    pairs: List[Tuple[str, str]]


@dataclass
class Arg:
    """ARG: each name with the value it resolved to (None: declared but unset)."""

    pairs: List[Tuple[str, Optional[str]]]


@dataclass
class Workdir:
    path: str          # absolute and clean


@dataclass
class User:
    user: str


@dataclass
class Expose:
    ports: List[str]   # "80/tcp", ranges expanded


@dataclass
class Volume:
    paths: List[str]


@dataclass
class StopSignal:
    signal: str


@dataclass
class Shell:
    argv: List[str]


@dataclass
class Healthcheck:
    """HEALTHCHECK as Docker stores it (durations in nanoseconds, 0 = default)."""

    test: List[str]    # ["NONE"], ["CMD", ...] or ["CMD-SHELL", text]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass
class Onbuild:
    expression: str    # the trigger as written after ONBUILD


@dataclass
class Maintainer:
    author: str


Payload = Union[Run, Copy, Command, Entrypoint, Env, Label, Arg, Workdir, User, Expose, Volume,
                StopSignal, Shell, Healthcheck, Onbuild, Maintainer]


@dataclass
class StepState:
    """What is in effect at a step: the stage's ENV (ordered), its ARGs (None: unset),
    SHELL, WORKDIR (absolute) and USER.  ``arg_last`` names the variables whose latest
    setting was an ARG: BuildKit keeps one environment where the later of ENV and ARG
    wins, while only ENV reaches the image config."""

    env: Dict[str, str] = field(default_factory=dict)
    args: Dict[str, Optional[str]] = field(default_factory=dict)
    shell: List[str] = field(default_factory=lambda: list(DEFAULT_SHELL))
    workdir: str = "/"
    user: str = ""
    arg_last: Set[str] = field(default_factory=set)

    def copy(self) -> "StepState":
        return StepState(dict(self.env), dict(self.args), list(self.shell), self.workdir,
                         self.user, set(self.arg_last))

    def set_env(self, key: str, value: str) -> None:
        self.env[key] = value
        self.arg_last.discard(key)

    def set_arg(self, key: str, value: Optional[str]) -> None:
        # an ARG without a value leaves the variable as it was (BuildKit adds nothing
        # to the environment then)
        if value is None:
            self.args.setdefault(key, None)
            return
        self.args[key] = value
        self.arg_last.add(key)

    def variables(self) -> Dict[str, str]:
        """The variables substitution sees: ENV and ARGs with a value, the later
        setting of a name winning."""
        found = {k: v for k, v in self.args.items() if v is not None}
        found.update((k, v) for k, v in self.env.items() if k not in self.arg_last)
        return found

    def run_env(self) -> Dict[str, str]:
        """The environment of a RUN: ENV, ARGs it does not shadow, and a default PATH
        when none is set (as Docker's daemon gives every container)."""
        env = self.variables()
        env.setdefault("PATH", DEFAULT_PATH)
        return env

    def history_args(self) -> List[str]:
        """``K=V`` of the ARGs a RUN's history line lists: set, not shadowed by ENV,
        sorted (Docker's ``|N K=V ...`` prefix)."""
        return sorted("%s=%s" % (k, v) for k, v in self.args.items()
                      if v is not None and (k not in self.env or k in self.arg_last))


@dataclass
class Instruction:
    """One step of a stage."""

    line: int          # Dockerfile line (or YAML item number) where it starts
    keyword: str       # upper case
    original: str      # the text as written (continuations joined), for messages
    args: Payload
    created_by: str    # the history string; COPY/ADD hold SOURCE_PLACEHOLDER
    state: StepState   # in effect before this step

    @property
    def makes_layer(self) -> bool:
        """RUN, COPY and ADD change the filesystem; the rest change the config only."""
        return self.keyword in LAYER_KEYWORDS

    def history(self, source: str = "") -> str:
        """``created_by`` with the COPY/ADD source hash (``dir:<hex>``...) filled in."""
        return self.created_by.replace(SOURCE_PLACEHOLDER, source, 1)


@dataclass
class Stage:
    """A build stage: ``base`` is the FROM reference after substitution (``scratch``,
    an image reference, or the name of an earlier stage, then also in ``base_stage``)."""

    index: int
    name: Optional[str]
    base: str
    base_stage: Optional[int]
    platform: Optional[str]
    line: int
    original: str
    instructions: List[Instruction] = field(default_factory=list)
    start: StepState = field(default_factory=StepState)
    end: StepState = field(default_factory=StepState)

    def dependencies(self) -> List[int]:
        """Indexes of the earlier stages this one reads (its base, ``COPY --from``)."""
        found = [] if self.base_stage is None else [self.base_stage]
        for step in self.instructions:
            if isinstance(step.args, Copy) and step.args.from_stage is not None:
                found.append(step.args.from_stage)
            if isinstance(step.args, Run):
                found.extend(m.from_stage for m in step.args.mounts if m.from_stage is not None)
        return sorted(set(found))


@dataclass
class Spec:
    stages: List[Stage]
    target_index: int
    global_args: Dict[str, Optional[str]]
    unused_build_args: List[str] = field(default_factory=list)
    escape: str = "\\"

    @property
    def target(self) -> Stage:
        return self.stages[self.target_index]

    def needed_stages(self) -> List[Stage]:
        """The target and every stage it depends on, each after the stages it reads
        (``COPY --from`` may name a later stage), otherwise in spec order."""
        return [self.stages[index] for index in _stage_order(self.stages, self.target_index)]


def _stage_order(stages: Sequence[Stage], target: int) -> List[int]:
    """Stages needed for ``target``, dependencies first; a cycle raises ``_Bad``."""
    order: List[int] = []
    done: Set[int] = set()
    # an explicit stack: (stage, its dependencies still to visit)
    stack: List[Tuple[int, List[int]]] = [(target, list(stages[target].dependencies()))]
    active = {target}
    while stack:
        index, todo = stack[-1]
        if not todo:
            stack.pop()
            active.discard(index)
            done.add(index)
            order.append(index)
            continue
        nxt = todo.pop(0)
        if nxt in active:
            raise _Bad("circular dependency between stages: stage %d reads stage %d, which "
                       "in turn needs stage %d" % (index, nxt, index))
        if nxt not in done:
            active.add(nxt)
            stack.append((nxt, list(stages[nxt].dependencies())))
    return order


class _Bad(Exception):
    """A problem with one instruction; the caller adds where it is."""


# ---------------------------------------------------------------------------------------
# Words and variable substitution (BuildKit's shell lexer)
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _LexMode:
    escape: str = "\\"
    raw_quotes: bool = False      # keep quote characters in the result
    raw_escapes: bool = False     # keep escape characters in the result
    skip_quotes: bool = False     # quotes are ordinary characters (heredoc bodies)
    skip_unset: bool = False      # leave unset variables as written


class _Words:
    """Word splitting of a processed string: expansions split, quoted text does not."""

    def __init__(self) -> None:
        self.word = ""
        self.words: List[str] = []
        self.in_word = False

    def add_char(self, char: str) -> None:
        if not char.isspace():
            self.add_raw(char)
        elif self.in_word and self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False

    def add_raw(self, text: str) -> None:
        self.word += text
        self.in_word = True

    def add_split(self, text: str) -> None:
        for char in text:
            self.add_char(char)

    def result(self) -> List[str]:
        if self.word:
            self.words.append(self.word)
            self.word, self.in_word = "", False
        return self.words


class _Lexer:
    """One pass over one string: quotes, escapes and ``$`` substitutions."""

    def __init__(self, text: str, variables: Mapping[str, str], mode: _LexMode) -> None:
        self.text = text
        self.pos = 0
        self.variables = variables
        self.mode = mode

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        self.pos += 1 if char else 0
        return char

    def process(self, stop: str = "") -> Tuple[str, List[str]]:
        result: List[str] = []
        words = _Words()
        while self.peek():
            if stop and self.peek() == stop:
                self.take()
                return "".join(result), words.result()
            result.append(self._token(words))
        if stop:
            raise _Bad("syntax error: missing '%s'" % stop)
        return "".join(result), words.result()

    def _token(self, words: _Words) -> str:
        char = self.peek()
        if char == "$":
            value = self._dollar()
            words.add_split(value)
            return value
        if char in "'\"" and not self.mode.skip_quotes:
            value = self._single_quoted() if char == "'" else self._double_quoted()
            words.add_raw(value)
            return value
        self.take()
        if char != self.mode.escape:
            words.add_char(char)
            return char
        kept = char if self.mode.raw_escapes else ""
        escaped = self.take()
        if kept:
            words.add_raw(kept)
        if escaped:
            words.add_raw(escaped)
        return kept + escaped

    def _single_quoted(self) -> str:
        self.take()
        out = ["'"] if self.mode.raw_quotes else []
        while True:
            char = self.take()
            if not char:
                raise _Bad("unexpected end of statement while looking for matching single-quote")
            if char == "'":
                break
            out.append(char)
        return "".join(out) + ("'" if self.mode.raw_quotes else "")

    def _double_quoted(self) -> str:
        self.take()
        out = ['"'] if self.mode.raw_quotes else []
        while True:
            char = self.peek()
            if not char:
                raise _Bad("unexpected end of statement while looking for matching double-quote")
            if char == '"':
                self.take()
                break
            out.append(self._dollar() if char == "$" else self._double_quoted_char())
        return "".join(out) + ('"' if self.mode.raw_quotes else "")

    def _double_quoted_char(self) -> str:
        char = self.take()
        if char != self.mode.escape:
            return char
        kept = char if self.mode.raw_escapes else ""
        # Inside double quotes only ", $ and the escape character itself can be escaped;
        # any other escape stays as written.
        if self.peek() in ('"', "$", self.mode.escape) and self.peek():
            return kept + self.take()
        return char if self.peek() else kept

    def _dollar(self) -> str:
        self.take()
        if self.peek() != "{":
            name = self._name()
            if not name:
                return "$"
            return self._lookup(name, "$" + name)
        self.take()
        if not self.peek():
            raise _Bad("syntax error: missing '}'")
        if self.peek() in "{}:":
            raise _Bad("syntax error: bad substitution")
        name = self._name()
        if not name:
            raise _Bad("syntax error: bad substitution")
        return self._braced(name)

    def _braced(self, name: str) -> str:
        char = self.take()
        if char == "}":
            return self._lookup(name, "${%s}" % name)
        if char == "/":
            return self._replaced(name)
        colon = char == ":"
        modifier = self.take() if colon else char
        if not modifier:
            raise _Bad("syntax error: missing '}'")
        if modifier not in "-+?#%" or (colon and modifier in "#%"):
            raise _Bad("unsupported modifier (%s%s) in substitution"
                       % (":" if colon else "", modifier))
        # the trimming patterns keep their escapes: \* is a literal star there
        text = self._word("}", raw_escapes=modifier in "#%")
        if modifier in "#%":
            return self._trimmed(name, modifier, text)
        return self._modified(name, colon, modifier, text)

    def _word(self, stop: str, raw_escapes: bool = False) -> str:
        mode = self.mode
        if raw_escapes and not mode.raw_escapes:
            mode = _LexMode(mode.escape, mode.raw_quotes, True, mode.skip_quotes, mode.skip_unset)
        word = _Lexer(self.text, self.variables, mode)
        word.pos = self.pos
        try:
            text = word.process(stop=stop)[0]
        except _Bad:
            if stop == "/" and not word.peek():
                raise _Bad("syntax error: missing '/' in ${}") from None
            raise
        self.pos = word.pos
        return text

    def _trimmed(self, name: str, modifier: str, pattern: str) -> str:
        """``${V#p}``/``${V##p}`` (shortest/longest prefix), ``${V%p}``/``${V%%p}``
        (suffix): shell patterns where ``*`` is any text and ``?`` one character."""
        value = self.variables.get(name)
        if value is None and self.mode.skip_unset:
            return "${%s%s%s}" % (name, modifier, pattern)
        value = value or ""
        greedy = pattern.startswith(modifier)
        pattern = pattern[1:] if greedy else pattern
        if modifier == "#":
            return _trim_prefix(value, pattern, greedy)
        # a shortest rightmost match is a shortest leftmost one on the reversed text
        return _trim_prefix(value[::-1], _reversed_pattern(pattern), greedy)[::-1]

    def _replaced(self, name: str) -> str:
        """``${V/pattern/text}`` (first match) and ``${V//pattern/text}`` (every match)."""
        every = self.peek() == "/"
        if every:
            self.take()
        pattern = self._word("/", raw_escapes=True)
        replacement = self._word("}", raw_escapes=True)
        value = self.variables.get(name)
        if value is None and self.mode.skip_unset:
            return "${%s/%s/%s}" % (name, pattern, replacement)
        regex = _shell_pattern(pattern, greedy=True, anchored=False)
        return regex.sub(lambda _match: replacement, value or "", count=0 if every else 1)

    def _modified(self, name: str, colon: bool, modifier: str, word: str) -> str:
        value = self.variables.get(name)
        if value is None and self.mode.skip_unset:
            return "${%s%s%s%s}" % (name, ":" if colon else "", modifier, word)
        unset = value is None or (colon and value == "")
        if modifier == "-":
            return word if unset else str(value)
        if modifier == "+":
            return "" if unset else word
        if value is None:
            raise _Bad("%s: %s" % (name, word or "is not allowed to be unset"))
        if unset:
            raise _Bad("%s: %s" % (name, word or "is not allowed to be empty"))
        return value

    def _lookup(self, name: str, as_written: str) -> str:
        value = self.variables.get(name)
        if value is None:
            return as_written if self.mode.skip_unset else ""
        return value

    def _name(self) -> str:
        first = self.peek()
        if first.isdecimal():
            digits = ""
            while self.peek().isdecimal():
                digits += self.take()
            return digits
        if first and first in "@*#?-$!":
            return self.take()
        name = ""
        while self.peek() and (self.peek().isalnum() or self.peek() == "_"):
            name += self.take()
        return name


def _shell_pattern(pattern: str, greedy: bool, anchored: bool) -> Pattern[str]:
    """A ``${V#...}``/``${V/...}`` pattern as a regular expression: ``*`` any text
    (shortest unless ``greedy``), ``?`` one character, ``\\`` escapes ``*``, ``?`` and
    itself (before ``}`` or ``/`` it only protects them)."""
    out = ["\\A"] if anchored else []
    star = ".*" if greedy else ".*?"
    pos = 0
    while pos < len(pattern):
        char = pattern[pos]
        pos += 1
        if char == "*":
            out.append(star)
        elif char == "?":
            out.append(".")
        elif char == "\\":
            following = pattern[pos:pos + 1]
            if following in ("}", "/"):
                continue
            if following not in ("*", "?", "\\"):
                raise _Bad("invalid pattern (%s) in substitution: invalid escape '\\%s'"
                           % (pattern, following))
            out.append(re.escape(following))
            pos += 1
        else:
            out.append(re.escape(char))
    return re.compile("".join(out))


def _trim_prefix(value: str, pattern: str, greedy: bool) -> str:
    match = _shell_pattern(pattern, greedy, anchored=True).search(value)
    return value[match.end():] if match else value


def _reversed_pattern(pattern: str) -> str:
    """The pattern backwards, each escape kept in front of the character it escapes."""
    tokens: List[str] = []
    pos = 0
    while pos < len(pattern):
        size = 2 if pattern[pos] == "\\" and pos + 1 < len(pattern) else 1
        tokens.append(pattern[pos:pos + size])
        pos += size
    return "".join(reversed(tokens))


def _expand(text: str, variables: Mapping[str, str], escape: str = "\\") -> str:
    return _Lexer(text, variables, _LexMode(escape=escape)).process()[0]


def _expand_words(text: str, variables: Mapping[str, str], escape: str = "\\") -> List[str]:
    return _Lexer(text, variables, _LexMode(escape=escape)).process()[1]


def _expand_heredoc(text: str, variables: Mapping[str, str]) -> str:
    # BuildKit expands COPY heredoc bodies with quotes left alone ("ExpandRaw"), so
    # quotes in a config file survive while $VAR and \$ still work.
    return _Lexer(text, variables, _LexMode(skip_quotes=True)).process()[0]


def substitute(text: str, variables: Mapping[str, str], escape: str = "\\") -> str:
    """Docker's substitution of one word: quotes removed, escapes applied, ``$V``
    expanded.  Raises ``InvalidInput`` on bad syntax (an unclosed quote or ``${``)."""
    try:
        return _expand(text, variables, escape)
    except _Bad as exc:
        raise InvalidInput("cannot substitute variables in %r: %s" % (text, exc)) from exc


def substitute_words(text: str, variables: Mapping[str, str], escape: str = "\\") -> List[str]:
    """Like ``substitute`` but split into words, as EXPOSE reads its ports."""
    try:
        return _expand_words(text, variables, escape)
    except _Bad as exc:
        raise InvalidInput("cannot substitute variables in %r: %s" % (text, exc)) from exc


# ---------------------------------------------------------------------------------------
# Reading: directives, continuations, heredocs -> logical lines
# ---------------------------------------------------------------------------------------

_DIRECTIVE_RE = re.compile(r"#[\t\n\f\r ]*([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)"
                           r"[\t\n\f\r ]*\Z")
_DIRECTIVES = ("escape", "syntax", "check")
_WHITESPACE_RE = re.compile(r"[\t\v\f\r ]+")
_HEREDOC_RE = re.compile(r"\A(\d*)<<(-?)[\t\n\f\r ]*([^<]*)\Z")
_BARE_HEREDOC_RE = re.compile(r"\A\d*<<-?\Z")
# After "<< " only a plain word opens a heredoc, so that $((1 << 2)) stays arithmetic.
_PLAIN_DELIMITER_RE = re.compile(r"\A(['\"]?)[A-Za-z_][A-Za-z0-9_.-]*\1\Z")


@dataclass
class _Logical:
    """One instruction as read: its first line, joined text and heredoc bodies."""

    line: int
    text: str
    heredocs: List[Heredoc] = field(default_factory=list)


def _physical_lines(text: str) -> List[str]:
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def _continuation_re(escape: str) -> Pattern[str]:
    # Docker's own rule: the escape character ends a line (trailing blanks allowed)
    # unless it is itself escaped.
    char = re.escape(escape)
    return re.compile(r"([^%s])%s[ \t]*\Z|\A%s[ \t]*\Z" % (char, char, char))


class _Reader:
    """Splits Dockerfile text into logical instructions, as BuildKit's parser does."""

    def __init__(self, text: str, where: Callable[[int], str],
                 fixed_line: Optional[int] = None) -> None:
        self.lines = _physical_lines(text[1:] if text.startswith("\ufeff") else text)
        self.where = where
        self.fixed_line = fixed_line
        self.next = 0
        self.escape = "\\"
        self.continuation = _continuation_re(self.escape)
        self.directives_done = False
        self.seen_directives: List[str] = []

    def read(self) -> List[_Logical]:
        found = []
        while self.next < len(self.lines):
            logical = self._logical()
            if logical is not None:
                found.append(logical)
        return found

    def _number(self, line: int) -> int:
        return self.fixed_line if self.fixed_line is not None else line

    def _fail(self, line: int, problem: str, text: str) -> InvalidInput:
        number = self._number(line)
        return InvalidInput('%s: %s in "%s"' % (self.where(number), problem, _shown(text)),
                            line=number)

    def _take(self) -> Tuple[int, str]:
        self.next += 1
        return self.next, self.lines[self.next - 1]

    def _logical(self) -> Optional[_Logical]:
        start, raw = self._take()
        token = raw.rstrip("\r\n").lstrip()
        self._directive(start, token)
        if token.startswith("#"):
            return None
        text, ended = self._trim(token)
        if ended and not text:
            return None
        while not ended and self.next < len(self.lines):
            piece, ended = self._continued()
            text += piece
        logical = _Logical(self._number(start), text)
        try:
            logical.heredocs = self._heredocs(start, text)
        except _Bad as exc:
            raise self._fail(start, str(exc), text) from None
        return logical

    def _continued(self) -> Tuple[str, bool]:
        number, raw = self._take()
        line = raw.rstrip("\r\n")
        self._directive(number, line)
        if not line.strip() or line.lstrip().startswith("#"):
            return "", False
        return self._trim(line)

    def _trim(self, line: str) -> Tuple[str, bool]:
        if self.continuation.search(line):
            return self.continuation.sub(r"\1", line), False
        return line, True

    def _directive(self, number: int, token: str) -> None:
        if self.directives_done:
            return
        match = _DIRECTIVE_RE.match(token)
        name = match.group(1).lower() if match else ""
        if name not in _DIRECTIVES:
            self.directives_done = True
            return
        if name in self.seen_directives:
            raise self._fail(number, "only one %s parser directive can be used" % name, token)
        self.seen_directives.append(name)
        if name == "escape":
            self._set_escape(number, match.group(2), token)

    def _set_escape(self, number: int, value: str, token: str) -> None:
        if value not in ("\\", "`"):
            raise self._fail(number, "the escape directive takes \\ or ` (not %r)" % value, token)
        self.escape = value
        self.continuation = _continuation_re(value)

    def _heredocs(self, start: int, text: str) -> List[Heredoc]:
        if not _may_hold_heredocs(text):
            return []
        found = []
        for heredoc in _heredocs_in(text):
            heredoc.content = self._body(start, heredoc, text)
            found.append(heredoc)
        return found

    def _body(self, start: int, heredoc: Heredoc, text: str) -> str:
        body = []
        while self.next < len(self.lines):
            raw = self._take()[1]
            candidate = raw.rstrip("\r\n")
            if heredoc.chomp:
                candidate = candidate.lstrip("\t")
            if candidate == heredoc.name:
                return "".join(body)
            body.append(raw)
        raise self._fail(start, "unterminated heredoc: no line reads %r" % heredoc.name, text)


def _may_hold_heredocs(text: str) -> bool:
    parts = _split_command(text)
    keyword, rest = parts[0].upper(), parts[2]
    if keyword == "ONBUILD":
        # the trigger's own heredocs (ONBUILD RUN <<EOF), kept with the trigger
        return _may_hold_heredocs(rest)
    if keyword not in LAYER_KEYWORDS or "<<" not in rest:
        return False
    return _json_array(rest) is None


def _heredocs_in(text: str) -> List[Heredoc]:
    raw = _LexMode(raw_quotes=True, raw_escapes=True, skip_unset=True)
    try:
        words = _Lexer(text, {}, raw).process()[1]
    except _Bad:
        # Docker ignores a line its lexer cannot split (an unclosed quote): no heredocs,
        # and the shell reports the quote when the step runs.
        return []
    found = []
    for word in _join_bare_heredocs(words):
        heredoc = _heredoc_word(word)
        if heredoc is not None:
            found.append(heredoc)
    return found


def _join_bare_heredocs(words: Sequence[str]) -> List[str]:
    """``<<`` or ``<<-`` alone takes the next word as its delimiter when that is a
    plain word; alone at the end of the line it has no delimiter at all."""
    joined: List[str] = []
    index = 0
    while index < len(words):
        word = words[index]
        index += 1
        if _BARE_HEREDOC_RE.match(word):
            if index == len(words):
                raise _Bad("empty heredoc delimiter after %s" % word)
            if _PLAIN_DELIMITER_RE.match(words[index]):
                word += words[index]
                index += 1
        joined.append(word)
    return joined


def _heredoc_word(word: str) -> Optional[Heredoc]:
    match = _HEREDOC_RE.match(word)
    if not match or not match.group(3):
        return None
    rest = match.group(3)
    plain = _Lexer(rest, {}, _LexMode(skip_unset=True)).process()[1]
    if not plain and rest.strip("'\"") == "":
        raise _Bad("empty heredoc delimiter %s" % word)
    if len(plain) != 1:
        return None
    quoted = _Lexer(rest, {}, _LexMode(raw_quotes=True, skip_unset=True)).process()[1]
    name = plain[0]
    # A delimiter with any quoted part turns off expansion, as in a shell.
    expand = _quotes(name) == _quotes(quoted[0] if quoted else name)
    return Heredoc(name=name, content="", chomp=match.group(2) == "-", expand=expand)


def _quotes(text: str) -> int:
    return text.count("'") + text.count('"')


def _shown(text: str) -> str:
    text = text.strip().replace("\n", "\\n")
    return text if len(text) <= 160 else text[:157] + "..."


# ---------------------------------------------------------------------------------------
# Splitting an instruction: keyword, flags, arguments
# ---------------------------------------------------------------------------------------

def _split_command(text: str) -> Tuple[str, List[str], str]:
    parts = _WHITESPACE_RE.split(text.strip(), 1)
    if len(parts) < 2:
        return parts[0], [], ""
    rest, flags = _extract_flags(parts[1])
    return parts[0], flags, rest.strip()


def _extract_flags(line: str) -> Tuple[str, List[str]]:
    """Leading ``--name[=value]`` words (quotes and backslashes processed); a bare
    ``--`` ends them."""
    flags: List[str] = []
    pos = 0
    while True:
        while pos < len(line) and line[pos].isspace():
            pos += 1
        if not line.startswith("--", pos):
            return line[pos:], flags
        word, pos = _flag_word(line, pos)
        if word == "--":
            return line[pos:], flags
        flags.append(word)


def _flag_word(line: str, pos: int) -> Tuple[str, int]:
    chars: List[str] = []
    quote = ""
    while pos < len(line):
        char = line[pos]
        pos += 1
        if not quote and char.isspace():
            return "".join(chars), pos - 1
        if char in "'\"" and (not quote or char == quote):
            quote = "" if quote else char
            continue
        if char == "\\":
            if pos == len(line):
                continue
            char = line[pos]
            pos += 1
        chars.append(char)
    return "".join(chars), pos


_FLAG_STRING, _FLAG_BOOL, _FLAG_STRINGS = "string", "bool", "strings"


def _parse_flags(words: Sequence[str], allowed: Mapping[str, str],
                 keyword: str) -> Dict[str, Any]:
    """``--name=value`` flags; a ``_FLAG_STRINGS`` flag may repeat and gives a list."""
    found: Dict[str, Any] = {}
    for word in words:
        name, equals, value = word[2:].partition("=")
        kind = allowed.get(name)
        if kind is None:
            raise _Bad(_unknown_flag(keyword, name, allowed))
        if kind == _FLAG_STRINGS:
            found.setdefault(name, []).append(_flag_value(name, _FLAG_STRING, bool(equals), value))
            continue
        if name in found:
            raise _Bad("duplicate flag --%s" % name)
        found[name] = _flag_value(name, kind, bool(equals), value)
    return found


def _unknown_flag(keyword: str, name: str, allowed: Mapping[str, str]) -> str:
    if keyword == "COPY" and name in ("checksum", "keep-git-dir"):
        return "COPY does not support the flag --%s: it is ADD's, for URL and git " \
               "sources" % name
    supported = ", ".join("--" + flag for flag in sorted(allowed)) or "none"
    return "%s does not support the flag --%s (supported: %s)" % (keyword, name, supported)


def _flag_value(name: str, kind: str, has_value: bool, value: str) -> Union[str, bool]:
    if kind == _FLAG_STRING:
        if not has_value:
            raise _Bad("missing a value on flag --%s" % name)
        return value
    if not has_value:
        return True
    if value.lower() not in ("true", "false"):
        raise _Bad("expecting true or false for flag --%s, not %r" % (name, value))
    return value.lower() == "true"


def _json_array(rest: str) -> Optional[List[str]]:
    """The JSON (exec) form, or None for shell form (text that is not a JSON array)."""
    text = rest.lstrip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return None
    if not all(isinstance(item, str) for item in value):
        raise _Bad("when using JSON array syntax, arrays must be comprised of strings only")
    return value


def _no_constant(name: str) -> None:
    raise ValueError("%s is not JSON" % name)


def _parse_words(rest: str, escape: str) -> List[str]:
    """Whitespace-separated words, quotes and escapes kept (ENV, LABEL, ARG)."""
    words: List[str] = []
    word, quote, blank_ok = "", "", False
    pos = 0
    while pos < len(rest):
        char = rest[pos]
        pos += 1
        if not quote and char.isspace():
            if word or blank_ok:
                words.append(word)
            word, blank_ok = "", False
            continue
        if not quote and char in "'\"":
            quote, blank_ok = char, True
        elif quote and char == quote:
            quote = ""
        elif char == escape and quote != "'":
            if pos == len(rest):
                continue
            char += rest[pos]
            pos += 1
        word += char
    if word or blank_ok:
        words.append(word)
    return words


def _name_values(rest: str, keyword: str, escape: str) -> List[Tuple[str, str]]:
    words = _parse_words(rest, escape)
    if not words:
        raise _Bad("%s needs at least one name=value" % keyword)
    if "=" not in words[0]:
        parts = _WHITESPACE_RE.split(rest, 1)
        if len(parts) < 2:
            raise _Bad("%s %s has no value: write %s name=value" % (keyword, parts[0], keyword))
        return [(parts[0], parts[1])]
    pairs = []
    for word in words:
        key, equals, value = word.partition("=")
        if not equals:
            raise _Bad("%r is not name=value: %s takes name=value pairs" % (word, keyword))
        pairs.append((key, value))
    return pairs


# ---------------------------------------------------------------------------------------
# Compiling: stages, state and one handler per instruction
# ---------------------------------------------------------------------------------------

@dataclass
class _Command:
    """An instruction split into its parts, before substitution."""

    line: int
    keyword: str
    flags: List[str]
    rest: str
    original: str
    heredocs: List[Heredoc]


_STAGE_NAME_RE = re.compile(r"\A[a-z][a-z0-9-_.]*\Z")
_URL_PREFIXES = ("http://", "https://", "git://", "ssh://", "git@")   # see _remote


def _command(logical: _Logical) -> _Command:
    keyword, flags, rest = _split_command(logical.text)
    return _Command(logical.line, keyword.upper(), flags, rest, logical.text.strip(),
                    logical.heredocs)


def _platform_args() -> Dict[str, Optional[str]]:
    host = host_platform()
    values: Dict[str, Optional[str]] = {}
    for prefix in ("TARGET", "BUILD"):
        values[prefix + "PLATFORM"] = str(host)
        values[prefix + "OS"] = host.os
        values[prefix + "ARCH"] = host.architecture
        values[prefix + "VARIANT"] = host.variant or ""
    return values


def _build_arg_values(build_args: Optional[Mapping[str, Any]]) -> Dict[str, str]:
    values: Dict[str, str] = {}
    for key, value in (build_args or {}).items():
        if not isinstance(key, str) or not key:
            raise InvalidInput("build_args: every name must be a non-empty string, not %r" % (key,))
        if value is None:
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        values[key] = str(value)
    return values


def _resolve_arg(key: str, default: Optional[str], variables: Mapping[str, str],
                 build_args: Mapping[str, str], inherited: Mapping[str, Optional[str]],
                 escape: str) -> Optional[str]:
    if key in build_args:
        return build_args[key]
    if default is not None:
        return _expand(default, variables, escape)
    return inherited.get(key)


def _arg_pairs(rest: str, escape: str) -> List[Tuple[str, Optional[str]]]:
    words = _parse_words(rest, escape)
    if not words:
        raise _Bad("ARG needs a name: ARG name[=default]")
    pairs: List[Tuple[str, Optional[str]]] = []
    for word in words:
        key, equals, value = word.partition("=")
        if not key or any(char.isspace() for char in key):
            raise _Bad("%r is not a valid ARG name" % key)
        pairs.append((key, value if equals else None))
    return pairs


def _initial_state(config: Optional[Mapping[str, Any]]) -> StepState:
    state = StepState()
    if not config:
        return state
    for entry in config.get("Env") or []:
        key, value = str(entry).partition("=")[::2]
        state.env[key] = value
    if config.get("Shell"):
        state.shell = [str(part) for part in config["Shell"]]
    state.workdir = _clean("/" + str(config.get("WorkingDir") or "/"))
    state.user = str(config.get("User") or "")
    return state


def _clean(path: str) -> str:
    """Go's ``path.Clean``: what Docker applies to WORKDIR and .dockerignore patterns."""
    rooted = path.startswith("/")
    parts: List[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part != "..":
            parts.append(part)
        elif parts and parts[-1] != "..":
            parts.pop()
        elif not rooted:
            parts.append("..")
    joined = "/".join(parts)
    return "/" + joined if rooted else (joined or ".")


def _dest_path(workdir: str, dest: str) -> str:
    directory = dest.endswith("/") or dest in ("", ".") or dest.endswith("/.")
    path = _clean(dest if dest.startswith("/") else workdir + "/" + dest)
    return path if path == "/" or not directory else path + "/"


class _Compiler:
    """Turns logical instructions into a ``Spec``: the global ARGs, then each stage."""

    def __init__(self, logicals: List[_Logical], escape: str, name: str,
                 where: Callable[[int], str], build_args: Optional[Mapping[str, Any]],
                 target: Optional[str], base_config: Optional[BaseConfig]) -> None:
        self.commands = [_command(logical) for logical in logicals]
        self.escape = escape
        self.name = name
        self.where = where
        self.build_args = _build_arg_values(build_args)
        self.target = target
        self.base_config = base_config
        self.global_args: Dict[str, Optional[str]] = _platform_args()
        self.declared: Set[str] = set()
        self.global_declared: List[str] = []
        self.stages: List[Stage] = []

    def fail(self, command: _Command, problem: str) -> InvalidInput:
        return InvalidInput('%s: %s in "%s"' % (self.where(command.line), problem,
                                                _shown(command.original)), line=command.line)

    def compile(self) -> Spec:
        if not self.commands:
            raise InvalidInput("%s holds no instructions: a spec starts with FROM" % self.name)
        # every stage's name, known before any stage is read: COPY --from may name a
        # later stage, and a name used twice means the last stage so named (BuildKit)
        self.names = [_declared_name(c) for c in self.commands if c.keyword == "FROM"]
        position = self._global_args()
        while position < len(self.commands):
            position = self._stage(position)
        spec = Spec(stages=self.stages, target_index=self._target_index(),
                    global_args={k: self.global_args[k] for k in self.global_declared},
                    unused_build_args=sorted(set(self.build_args) - self.declared),
                    escape=self.escape)
        for stage in self.stages:
            try:
                _stage_order(self.stages, stage.index)
            except _Bad as exc:
                raise InvalidInput('%s: %s in "%s"' % (self.where(stage.line), exc,
                                                       _shown(stage.original)),
                                   line=stage.line) from None
        return spec

    def _global_args(self) -> int:
        position = 0
        while position < len(self.commands) and self.commands[position].keyword != "FROM":
            command = self.commands[position]
            self._check_known(command)
            if command.keyword != "ARG":
                raise self.fail(command, "%s before the first FROM (only ARG may come before "
                                         "FROM)" % command.keyword)
            self._guarded(command, self._global_arg)
            position += 1
        if position == len(self.commands):
            raise InvalidInput("%s has no FROM instruction: every build stage starts with FROM"
                               % self.name)
        return position

    def _global_arg(self, command: _Command) -> None:
        if command.flags:
            raise _Bad(_unknown_flag("ARG", command.flags[0][2:].partition("=")[0], {}))
        for key, default in _arg_pairs(command.rest, self.escape):
            variables = {k: v for k, v in self.global_args.items() if v is not None}
            self.global_args[key] = _resolve_arg(key, default, variables, self.build_args, {},
                                                 self.escape)
            self.declared.add(key)
            if key not in self.global_declared:
                self.global_declared.append(key)

    def _guarded(self, command: _Command, handler: Callable[[_Command], Any]) -> Any:
        try:
            return handler(command)
        except _Bad as exc:
            raise self.fail(command, str(exc)) from None

    def _check_known(self, command: _Command) -> None:
        if command.keyword not in KEYWORDS:
            raise InvalidInput("%s: %s" % (self.where(command.line),
                                           _unknown_instruction(command.keyword, command.original)),
                               line=command.line)

    def _stage(self, position: int) -> int:
        stage = self._guarded(self.commands[position], self._from)
        self.stages.append(stage)
        worker = _StageWork(self, stage)
        position += 1
        while position < len(self.commands) and self.commands[position].keyword != "FROM":
            command = self.commands[position]
            self._check_known(command)
            stage.instructions.append(self._guarded(command, worker.dispatch))
            position += 1
        stage.end = worker.state.copy()
        return position

    def _from(self, command: _Command) -> Stage:
        flags = _parse_flags(command.flags, {"platform": _FLAG_STRING}, "FROM")
        words = _WHITESPACE_RE.split(command.rest) if command.rest else []
        if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
            raise _Bad("FROM takes an image and an optional stage name: FROM image [AS name]")
        variables = {k: v for k, v in self.global_args.items() if v is not None}
        base = _expand(words[0], variables, self.escape)
        if not base:
            raise _Bad("FROM names no image (%r is empty after substitution)" % words[0])
        platform = flags.get("platform")
        if platform is not None:
            platform = _expand(str(platform), variables, self.escape)
            if not platform:
                raise _Bad("FROM --platform=%s is empty after substitution (as BuildKit, an "
                           "undefined ARG there is an error)" % flags["platform"])
        stage = Stage(index=len(self.stages), name=self._stage_name(words), base=base,
                      base_stage=self._earlier_stage(base), platform=platform,
                      line=command.line, original=command.original)
        stage.start = self._start_state(stage)
        return stage

    def _stage_name(self, words: List[str]) -> Optional[str]:
        if len(words) < 3:
            return None
        name = words[2].lower()
        if not _STAGE_NAME_RE.match(name) or name == "scratch":
            raise _Bad("invalid stage name %r: a name starts with a letter and holds letters, "
                       "digits, '-', '_' and '.', and is not 'scratch'" % words[2])
        return name

    def _earlier_stage(self, name: str) -> Optional[int]:
        # the latest stage so named before this one (a duplicate name is only linted
        # by BuildKit)
        for stage in reversed(self.stages):
            if stage.name is not None and stage.name == name.lower():
                return stage.index
        return None

    def _start_state(self, stage: Stage) -> StepState:
        # a stage built on another keeps its ENV and its ARG values (BuildKit); every
        # other stage starts with a PATH, the base image's or the default one
        if stage.base_stage is not None:
            return self.stages[stage.base_stage].end.copy()
        if stage.base.lower() == "scratch" or self.base_config is None:
            state = StepState()
        else:
            state = _initial_state(self.base_config(stage.base))
        state.env.setdefault("PATH", DEFAULT_PATH)
        return state

    def stage_by_reference(self, reference: str, current: int) -> Optional[int]:
        """``COPY --from``: a stage by index or name (the last stage so named, earlier
        or later: only a cycle is refused, after every stage is read), None for an image."""
        if re.match(r"\A[0-9]+\Z", reference):
            index = int(reference)
            if index >= len(self.names):
                raise _Bad("--from=%s: there is no stage %d (stages are numbered 0 to %d)"
                           % (reference, index, len(self.names) - 1))
        else:
            found = [i for i, name in enumerate(self.names) if name == reference.lower()]
            if not found:
                return None
            index = found[-1]
        if index == current:
            raise _Bad("--from=%s names this stage itself (a circular dependency)" % reference)
        return index

    def _target_index(self) -> int:
        if self.target is None:
            return len(self.stages) - 1
        for stage in reversed(self.stages):
            if stage.name is not None and stage.name == self.target.lower():
                return stage.index
        names = ", ".join(stage.name for stage in self.stages if stage.name) or "none"
        raise InvalidInput("target stage %r is not in the spec (named stages: %s)"
                           % (self.target, names))


def _unknown_instruction(keyword: str, text: str) -> str:
    hint = difflib.get_close_matches(keyword.upper(), KEYWORDS, n=1)
    return 'unknown instruction "%s"%s' % (_shown(text),
                                           " (did you mean %s?)" % hint[0] if hint else "")


def _declared_name(command: _Command) -> Optional[str]:
    words = _WHITESPACE_RE.split(command.rest) if command.rest else []
    return words[2].lower() if len(words) == 3 else None


class _StageWork:
    """The stage being read: its state, and one handler per instruction returning the
    payload and the history string."""

    def __init__(self, compiler: _Compiler, stage: Stage) -> None:
        self.compiler = compiler
        self.stage = stage
        self.escape = compiler.escape
        self.state = stage.start.copy()
        self.cmd_set = False

    def dispatch(self, command: _Command) -> Instruction:
        before = self.state.copy()
        handler = getattr(self, "_" + command.keyword.lower())
        if command.flags and command.keyword not in _FLAGGED:
            raise _Bad(_unknown_flag(command.keyword,
                                     command.flags[0][2:].partition("=")[0], {}))
        payload, created_by = handler(command)
        return Instruction(line=command.line, keyword=command.keyword,
                           original=command.original, args=payload, created_by=created_by,
                           state=before)

    def expand(self, text: str) -> str:
        return _expand(text, self.state.variables(), self.escape)

    def nop(self, text: str) -> str:
        # Docker records config-only steps as the shell plus "#(nop) " and the text as
        # separate words, hence the two spaces.
        return " ".join(self.state.shell + ["#(nop) ", text])

    def _text(self, command: _Command) -> str:
        if not command.rest:
            raise _Bad("%s needs an argument" % command.keyword)
        return command.rest

    # -- RUN, CMD, ENTRYPOINT, SHELL -------------------------------------------------

    def _run(self, command: _Command) -> Tuple[Run, str]:
        mounts = [w[len("--mount="):] for w in command.flags if w.startswith("--mount=")]
        if "--mount" in command.flags:
            raise _Bad("missing a value on flag --mount")
        others = [w for w in command.flags if not w.startswith("--mount=")]
        flags = _parse_flags(others, {"network": _FLAG_STRING, "mount": _FLAG_STRING}, "RUN")
        run = self._run_payload(command)
        try:
            if "network" in flags:
                run.network = network_mode(self.expand(str(flags["network"])))
            run.mounts = parse_mounts([self.expand(m) for m in mounts])
        except MountError as exc:
            raise _Bad(str(exc)) from None
        for mount in run.mounts:
            self._mount_from(mount)
        prefix = self.state.history_args()
        head = ["|%d" % len(prefix)] + prefix if prefix else []
        return run, " ".join(head + run.argv)

    def _mount_from(self, mount: Mount) -> None:
        if mount.from_ref:
            mount.from_stage = self.compiler.stage_by_reference(mount.from_ref, self.stage.index)
            mount.from_image = mount.from_ref if mount.from_stage is None else None

    def _run_payload(self, command: _Command) -> Run:
        exec_form = _json_array(command.rest)
        if exec_form is not None:
            # RUN [] is read (BuildKit only refuses it when the stage is built)
            return Run(command=exec_form, shell_form=False, heredocs=[], argv=list(exec_form))
        return self._shell_run(command)

    def _shell_run(self, command: _Command) -> Run:
        if not command.rest:
            raise _Bad("RUN needs a command")
        argv, files = _run_argv(command.rest, command.heredocs, self.state.shell)
        return Run(command=command.rest, shell_form=True, heredocs=list(command.heredocs),
                   argv=argv, files=files)

    def _command_argv(self, command: _Command) -> Tuple[List[str], bool]:
        exec_form = _json_array(command.rest)
        if exec_form is not None:
            return exec_form, False
        return self.state.shell + [self._text(command)], True

    def _cmd(self, command: _Command) -> Tuple[Command, str]:
        argv, shell_form = self._command_argv(command)
        self.cmd_set = True
        return Command(argv, shell_form), self.nop("CMD " + _go_strings(argv))

    def _entrypoint(self, command: _Command) -> Tuple[Entrypoint, str]:
        argv, shell_form = self._command_argv(command)
        payload = Entrypoint(argv, shell_form, clears_cmd=not self.cmd_set)
        return payload, self.nop("ENTRYPOINT " + _go_strings(argv))

    def _shell(self, command: _Command) -> Tuple[Shell, str]:
        argv = _json_array(command.rest)
        if argv is None:
            raise _Bad('SHELL takes the JSON form, e.g. SHELL ["/bin/bash", "-c"]')
        if not argv:
            raise _Bad("SHELL needs at least one argument")
        self.state.shell = list(argv)
        return Shell(list(argv)), self.nop("SHELL [%s]" % " ".join(argv))

    # -- COPY and ADD ------------------------------------------------------------------

    def _copy(self, command: _Command) -> Tuple[Copy, str]:
        allowed = {"from": _FLAG_STRING, "chown": _FLAG_STRING, "chmod": _FLAG_STRING,
                   "link": _FLAG_BOOL, "parents": _FLAG_BOOL, "exclude": _FLAG_STRINGS}
        return self._transfer(command, _parse_flags(command.flags, allowed, "COPY"))

    def _add(self, command: _Command) -> Tuple[Copy, str]:
        allowed = {"chown": _FLAG_STRING, "chmod": _FLAG_STRING, "link": _FLAG_BOOL,
                   "exclude": _FLAG_STRINGS, "checksum": _FLAG_STRING,
                   "keep-git-dir": _FLAG_BOOL}
        flags = _parse_flags(command.flags, allowed, "ADD")
        payload, created_by = self._transfer(command, flags)
        if payload.remote is None and ("checksum" in flags or "keep-git-dir" in flags):
            raise _Bad("ADD --%s is for a URL or git source" % (
                "checksum" if "checksum" in flags else "keep-git-dir"))
        if payload.remote is not None:
            try:
                payload.remote = remote_source(
                    payload.remote.url, self.expand(str(flags.get("checksum") or "")),
                    bool(flags.get("keep-git-dir")))
            except RemoteError as exc:
                raise _Bad(str(exc)) from None
        return payload, created_by

    def _transfer(self, command: _Command, flags: Dict[str, Any]) -> Tuple[Copy, str]:
        words = self._transfer_words(command)
        if len(words) < 2:
            raise _Bad("%s needs at least one source and a destination" % command.keyword)
        if _heredoc_word(words[-1]) is not None:
            raise _Bad("a heredoc cannot be the destination of %s" % command.keyword)
        payload = Copy(sources=[], dest=self.expand(words[-1]), dest_path="",
                       is_add=command.keyword == "ADD", link=bool(flags.get("link")))
        payload.dest_path = _dest_path(self.state.workdir, payload.dest)
        self._transfer_sources(command, words[:-1], payload)
        self._transfer_flags(flags, payload)
        return payload, self._transfer_history(command.keyword, payload)

    def _transfer_words(self, command: _Command) -> List[str]:
        exec_form = _json_array(command.rest)
        if exec_form is not None:
            return exec_form
        words = _WHITESPACE_RE.split(command.rest) if command.rest else []
        return _join_bare_heredocs(words) if command.heredocs else words

    def _transfer_sources(self, command: _Command, words: List[str], payload: Copy) -> None:
        bodies = {heredoc.name: heredoc for heredoc in command.heredocs}
        for word in words:
            heredoc = _heredoc_word(word) if command.heredocs else None
            if heredoc is not None and heredoc.name in bodies:
                payload.heredoc_files.append(self._inline_file(bodies[heredoc.name]))
                continue
            source = self.expand(word)
            if source.startswith(_URL_PREFIXES):
                if command.keyword != "ADD":
                    raise _Bad("COPY takes no URL (%s): use ADD" % source)
                if len(words) != 1:
                    raise _Bad("ADD of a URL or git repository takes it as the only source")
                payload.remote = Remote(url=source)
                continue
            payload.sources.append(source)

    def _inline_file(self, heredoc: Heredoc) -> InlineFile:
        content = heredoc.body()
        if heredoc.expand:
            content = _expand_heredoc(content, self.state.variables())
        return InlineFile(name=heredoc.name, content=content)

    def _transfer_flags(self, flags: Dict[str, Any], payload: Copy) -> None:
        # BuildKit expands --chown and --chmod (an empty result means "not given"),
        # never --from or --exclude
        chown = self.expand(str(flags.get("chown") or ""))
        payload.chown = _checked_chown(chown) if chown else None
        chmod = self.expand(str(flags.get("chmod") or ""))
        payload.chmod = _checked_chmod(chmod) if chmod else None
        payload.parents = bool(flags.get("parents"))
        payload.excludes = [_checked_exclude(item) for item in flags.get("exclude") or []]
        if "from" in flags:
            reference = str(flags["from"])
            if not reference:
                raise _Bad("--from is empty")
            if "$" in reference:
                raise _Bad("--from=%s: variables are not expanded in --from (as in BuildKit); "
                           "name a stage built FROM the image that the variable gives"
                           % reference)
            payload.from_stage = self.compiler.stage_by_reference(reference, self.stage.index)
            payload.from_image = reference if payload.from_stage is None else None

    def _transfer_history(self, keyword: str, payload: Copy) -> str:
        # The classic builder writes "--chown=X" straight against the source hash, with
        # no space between them, and ends the comment with a space; docker history
        # shows exactly that.
        chown = "--chown=%s" % payload.chown if payload.chown else ""
        chmod = "--chmod=%s " % payload.chmod if payload.chmod else ""
        chmod = ("--parents " if payload.parents else "") + chmod
        chmod += "".join("--exclude=%s " % item for item in payload.excludes)
        comment = "%s %s%s%s in %s " % (keyword, chmod, chown, SOURCE_PLACEHOLDER, payload.dest)
        return " ".join(self.state.shell + ["#(nop) " + comment])

    # -- ENV, ARG, LABEL ---------------------------------------------------------------

    def _env(self, command: _Command) -> Tuple[Env, str]:
        pairs = self._expanded_pairs(_name_values(command.rest, "ENV", self.escape), "ENV")
        # Every value is substituted with the variables from before the instruction:
        # ENV a=1 b=$a sees the old a, as Docker does.
        for key, value in pairs:
            self.state.set_env(key, value)
        return Env(pairs), self.nop("ENV " + " ".join("%s=%s" % pair for pair in pairs))

    def _label(self, command: _Command) -> Tuple[Label, str]:
        pairs = self._expanded_pairs(_name_values(command.rest, "LABEL", self.escape), "LABEL")
        return Label(pairs), self.nop("LABEL " + " ".join("%s=%s" % pair for pair in pairs))

    def _expanded_pairs(self, pairs: List[Tuple[str, str]], keyword: str) -> List[Tuple[str, str]]:
        expanded = [(self.expand(key), self.expand(value)) for key, value in pairs]
        if not all(key for key, value in expanded):
            raise _Bad("%s names must not be empty" % keyword)
        return expanded

    def _arg(self, command: _Command) -> Tuple[Arg, str]:
        resolved: List[Tuple[str, Optional[str]]] = []
        # Unlike ENV, each ARG sees the ones before it on the same line (BuildKit).
        for key, default in _arg_pairs(command.rest, self.escape):
            value = _resolve_arg(key, default, self.state.variables(),
                                 self.compiler.build_args, self.compiler.global_args,
                                 self.escape)
            self.state.set_arg(key, value)
            self.compiler.declared.add(key)
            resolved.append((key, value))
        text = " ".join(key if value is None else "%s=%s" % (key, value)
                        for key, value in resolved)
        return Arg(resolved), self.nop("ARG " + text)

    # -- WORKDIR, USER, EXPOSE, VOLUME, STOPSIGNAL ---------------------------------------

    def _workdir(self, command: _Command) -> Tuple[Workdir, str]:
        path = self.expand(self._text(command))
        if not path:
            raise _Bad("WORKDIR is empty after substitution")
        self.state.workdir = _clean(path if path.startswith("/")
                                    else self.state.workdir + "/" + path)
        return Workdir(self.state.workdir), self.nop("WORKDIR " + self.state.workdir)

    def _user(self, command: _Command) -> Tuple[User, str]:
        user = self.expand(self._text(command))
        if not user:
            raise _Bad("USER is empty after substitution")
        self.state.user = user
        return User(user), self.nop("USER " + user)

    def _expose(self, command: _Command) -> Tuple[Expose, str]:
        words: List[str] = []
        for word in _WHITESPACE_RE.split(self._text(command)):
            words.extend(_expand_words(word, self.state.variables(), self.escape))
        ports: List[str] = []
        for word in words:
            ports.extend(port for port in _exposed_ports(word) if port not in ports)
        if not ports:
            raise _Bad("EXPOSE names no port after substitution")
        return Expose(ports), self.nop("EXPOSE " + " ".join(words))

    def _volume(self, command: _Command) -> Tuple[Volume, str]:
        exec_form = _json_array(command.rest)
        words = exec_form if exec_form is not None else _WHITESPACE_RE.split(self._text(command))
        paths = [self.expand(word) for word in words]
        if not paths or not all(paths):
            raise _Bad("VOLUME needs non-empty paths")
        return Volume(paths), self.nop("VOLUME [%s]" % " ".join(paths))

    def _stopsignal(self, command: _Command) -> Tuple[StopSignal, str]:
        signal = self.expand(self._text(command))
        _check_signal(signal)
        return StopSignal(signal), self.nop("STOPSIGNAL " + signal)

    # -- HEALTHCHECK, ONBUILD, MAINTAINER ------------------------------------------------

    def _healthcheck(self, command: _Command) -> Tuple[Healthcheck, str]:
        parts = _WHITESPACE_RE.split(self._text(command), 1)
        kind, rest = parts[0].upper(), parts[1] if len(parts) > 1 else ""
        if kind == "NONE":
            if rest.strip() or command.flags:
                raise _Bad("HEALTHCHECK NONE takes no arguments")
            check = Healthcheck(test=["NONE"])
        elif kind == "CMD":
            check = _health_options(command.flags)
            check.test = self._health_test(rest.strip())
        else:
            raise _Bad("unknown HEALTHCHECK type %r: use CMD or NONE" % kind)
        return check, self.nop("HEALTHCHECK " + _go_health(check))

    def _health_test(self, rest: str) -> List[str]:
        exec_form = _json_array(rest)
        if exec_form is not None and exec_form:
            return ["CMD"] + exec_form
        if not rest or exec_form is not None:
            raise _Bad("HEALTHCHECK CMD needs a command")
        return ["CMD-SHELL", rest]

    def _onbuild(self, command: _Command) -> Tuple[Onbuild, str]:
        trigger = self._text(command)
        keyword = _split_command(trigger)[0].upper()
        if keyword in ("ONBUILD", "FROM", "MAINTAINER"):
            raise _Bad("%s is not allowed as an ONBUILD trigger" % keyword)
        if keyword not in KEYWORDS:
            raise _Bad("ONBUILD trigger %r is not an instruction" % keyword)
        expression = re.sub(r"(?i)\A\s*ONBUILD\s*", "", command.original)
        # as BuildKit stores it: the trigger line, then each heredoc's body and end
        expression += "".join("\n" + heredoc.content + heredoc.name
                              for heredoc in command.heredocs)
        return Onbuild(expression), self.nop("ONBUILD " + expression)

    def _maintainer(self, command: _Command) -> Tuple[Maintainer, str]:
        author = self._text(command)
        return Maintainer(author), self.nop("MAINTAINER " + author)


_FLAGGED = frozenset(("RUN", "COPY", "ADD", "HEALTHCHECK"))


def _run_argv(command: str, heredocs: List[Heredoc],
              shell: List[str]) -> Tuple[List[str], Dict[str, str]]:
    """What BuildKit runs for a shell-form RUN with heredocs."""
    if not heredocs:
        return shell + [command], {}
    if _heredoc_word(command) is not None:
        body = heredocs[0].body()
        if not body.startswith("#!"):
            return shell + [body], {}
        path = posixpath.normpath(posixpath.join(PIPES_DIR, heredocs[0].name))
        if posixpath.dirname(path) != PIPES_DIR:
            raise _Bad("heredoc name %r cannot name a script file" % heredocs[0].name)
        return [path], {path: body}
    # Otherwise the shell itself reads the heredocs: hand it the whole text.
    full = command + "".join("\n" + heredoc.content + heredoc.name for heredoc in heredocs)
    return shell + [full], {}


def _checked_chown(value: str) -> str:
    parts = value.split(":")
    if not value or len(parts) > 2 or not all(parts):
        raise _Bad("--chown=%s is not user, user:group, uid or uid:gid" % value)
    return value


def _checked_chmod(value: str) -> str:
    if re.match(r"\A[0-9]+\Z", value):
        if not re.match(r"\A[0-7]+\Z", value) or int(value, 8) > 0o7777:
            raise _Bad("--chmod=%s is not an octal mode between 0 and 7777" % value)
        return value
    try:
        chmod_mode(value, 0o644, False)
    except ValueError as exc:
        raise _Bad("--chmod=%s is neither an octal mode nor a symbolic one such as u+x or "
                   "go-w (%s)" % (value, exc)) from None
    return value


_CHMOD_CLAUSE_RE = re.compile(r"\A([ugoa]*)((?:[-+=](?:[rwxXst]*|[ugo]))+)\Z")
_CHMOD_BITS = {"r": 0o444, "w": 0o222, "x": 0o111, "s": 0o6000, "t": 0o1000}
_CHMOD_WHO = {"u": 0o4700, "g": 0o2070, "o": 0o1007, "a": 0o7777}


def chmod_mode(spec: str, mode: int, is_dir: bool) -> int:
    """The permission bits ``mode`` gets from a ``--chmod`` value: octal, or symbolic
    as chmod(1) reads it with a zero umask (``u+x``, ``go-w``, ``a=rX``, ``g=u``).
    Raises ValueError for a value that is neither."""
    if re.match(r"\A[0-7]+\Z", spec):
        return int(spec, 8)
    mode &= 0o7777
    for clause in spec.split(","):
        match = _CHMOD_CLAUSE_RE.match(clause)
        if not match:
            raise ValueError("cannot read %r" % clause)
        who = 0
        for char in match.group(1) or "a":
            who |= _CHMOD_WHO[char]
        for op, perms in re.findall(r"([-+=])([rwxXstugo]*)", match.group(2)):
            mode = _chmod_action(mode, who, op, _chmod_bits(perms, mode, is_dir))
    return mode


def _chmod_bits(perms: str, mode: int, is_dir: bool) -> int:
    if perms in ("u", "g", "o"):
        # copy the permissions of one class to every class
        shift = {"u": 6, "g": 3, "o": 0}[perms]
        part = (mode >> shift) & 0o7
        return part << 6 | part << 3 | part
    bits = 0
    for char in perms:
        if char == "X":
            bits |= 0o111 if is_dir or mode & 0o111 else 0
        else:
            bits |= _CHMOD_BITS[char]
    return bits


def _chmod_action(mode: int, who: int, op: str, bits: int) -> int:
    if op == "+":
        return mode | (bits & who)
    if op == "-":
        return mode & ~(bits & who)
    return (mode & ~who) | (bits & who)


def _checked_exclude(pattern: str) -> str:
    if not pattern:
        raise _Bad("--exclude needs a pattern")
    try:
        _ignore_pattern(pattern, 1, "--exclude")
    except InvalidInput as exc:
        raise _Bad("--exclude=%s is not a valid pattern (%s)" % (pattern, exc)) from None
    return pattern


_RANGE_RE = re.compile(r"\A(\d{1,5})(?:-(\d{1,5}))?\Z")


def _exposed_ports(word: str) -> List[str]:
    """Docker's port spec: ``[[ip:]host-port:]port[-port][/proto]``; only the container
    port counts (BuildKit lints an address or host port, and exposes the port)."""
    parts = word.split(":")
    spec, protocol = parts[-1].partition("/")[::2]
    protocol = (protocol or "tcp").lower()
    if protocol not in ("tcp", "udp", "sctp"):
        raise _Bad("EXPOSE port %r has an unknown protocol (tcp, udp or sctp)" % word)
    if len(parts) > 2 and not _port_address(":".join(parts[:-2])):
        raise _Bad("EXPOSE port %r has an invalid IP address" % word)
    if len(parts) > 1 and parts[-2] and _port_range(parts[-2]) is None:
        raise _Bad("EXPOSE port %r has an invalid host port" % word)
    found = _port_range(spec)
    if found is None:
        raise _Bad("EXPOSE port %r is not [[ip:]host:]port[-port][/tcp|udp|sctp] with ports "
                   "0-65535, low-high" % word)
    return ["%d/%s" % (port, protocol) for port in range(found[0], found[1] + 1)]


def _port_range(text: str) -> Optional[Tuple[int, int]]:
    match = _RANGE_RE.match(text)
    if not match:
        return None
    first, last = int(match.group(1)), int(match.group(2) or match.group(1))
    return (first, last) if first <= last <= 65535 else None


def _port_address(text: str) -> bool:
    text = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_SIGNALS = frozenset(
    "ABRT ALRM BUS CHLD CLD CONT FPE HUP ILL INT IO IOT KILL PIPE POLL PROF PWR QUIT SEGV "
    "STKFLT STOP SYS TERM TRAP TSTP TTIN TTOU URG USR1 USR2 VTALRM WINCH XCPU XFSZ RTMIN "
    "RTMAX".split())


def _check_signal(value: str) -> None:
    if value.isdigit() and 1 <= int(value) <= 64:
        return
    name = value.upper()
    name = name[3:] if name.startswith("SIG") else name
    realtime = re.match(r"\ARTMIN\+(\d+)\Z|\ARTMAX-(\d+)\Z", name)
    if name in _SIGNALS or (realtime and 1 <= int(realtime.group(1) or realtime.group(2)) <= 15):
        return
    raise _Bad("STOPSIGNAL %r is not a signal (a name such as SIGTERM, or 1-64)" % value)


# ---------------------------------------------------------------------------------------
# HEALTHCHECK options and Go formatting (the history strings are Go's %q and %v)
# ---------------------------------------------------------------------------------------

_DURATION_RE = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|µs|μs|ms|s|m|h)")
_NANOSECONDS = {"ns": 1, "us": 10 ** 3, "µs": 10 ** 3, "μs": 10 ** 3, "ms": 10 ** 6,
                "s": 10 ** 9, "m": 60 * 10 ** 9, "h": 3600 * 10 ** 9}
_HEALTH_FLAGS = {"interval": _FLAG_STRING, "timeout": _FLAG_STRING,
                 "start-period": _FLAG_STRING, "start-interval": _FLAG_STRING,
                 "retries": _FLAG_STRING}


def _health_options(words: List[str]) -> Healthcheck:
    flags = _parse_flags(words, _HEALTH_FLAGS, "HEALTHCHECK")
    check = Healthcheck(test=[])
    for name in ("interval", "timeout", "start-period", "start-interval"):
        if flags.get(name):
            setattr(check, name.replace("-", "_"), _health_duration(name, str(flags[name])))
    if flags.get("retries"):
        check.retries = _health_retries(str(flags["retries"]))
    return check


def _health_duration(name: str, text: str) -> int:
    value = parse_duration(text)
    if value != 0 and value < 10 ** 6:
        raise _Bad("--%s=%s cannot be less than 1ms" % (name, text))
    return value


def _health_retries(text: str) -> int:
    if not re.match(r"\A[+-]?\d+\Z", text) or abs(int(text)) > 2 ** 31 - 1:
        raise _Bad("--retries=%s is not a whole number" % text)
    if int(text) < 0:
        raise _Bad("--retries cannot be negative (%s)" % text)
    return int(text)


def parse_duration(text: str) -> int:
    """Go's ``time.ParseDuration`` in nanoseconds ("1m30s", "1.5h", "300ms")."""
    sign, body = (-1, text[1:]) if text.startswith("-") else (1, text[1:] if text[:1] == "+" else text)
    if body == "0":
        return 0
    parts = _duration_parts(body)
    if not parts:
        raise _Bad("invalid duration %r (write it as 30s, 1m30s, 500ms...)" % text)
    return sign * int(sum(Decimal(number) * _NANOSECONDS[unit] for number, unit in parts))


def _duration_parts(body: str) -> List[Tuple[str, str]]:
    parts, pos = [], 0
    while pos < len(body):
        match = _DURATION_RE.match(body, pos)
        if not match or match.group(1) in ("", "."):
            return []
        parts.append((match.group(1), match.group(2)))
        pos = match.end()
    return parts


def go_duration(nanoseconds: int) -> str:
    """Go's ``time.Duration.String``."""
    if nanoseconds == 0:
        return "0s"
    sign, value = ("-" if nanoseconds < 0 else ""), abs(nanoseconds)
    if value < 10 ** 3:
        return "%s%dns" % (sign, value)
    if value < 10 ** 6:
        return sign + _decimal(value, 10 ** 3) + "µs"
    if value < 10 ** 9:
        return sign + _decimal(value, 10 ** 6) + "ms"
    minutes, rest = divmod(value, 60 * 10 ** 9)
    text = _decimal(rest, 10 ** 9) + "s"
    if minutes:
        hours, minutes = divmod(minutes, 60)
        text = "%dm%s" % (minutes, text)
        text = "%dh%s" % (hours, text) if hours else text
    return sign + text


def _decimal(value: int, unit: int) -> str:
    whole, fraction = divmod(value, unit)
    if not fraction:
        return str(whole)
    digits = str(fraction).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return "%d.%s" % (whole, digits)


_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t",
               "\v": "\\v", "\\": "\\\\"}


def go_quote(text: str, quote: str = '"') -> str:
    """Go's ``strconv.Quote`` (``quote="'"``: ``strconv.QuoteRune`` of one character)."""
    out = [quote]
    for char in text:
        point = ord(char)
        if char == quote:
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif point < 0x20 or point == 0x7F:
            out.append("\\x%02x" % point)
        elif 0xD800 <= point <= 0xDFFF:
            out.append("\\ufffd")
        else:
            out.append("\\u%04x" % point if point < 0x10000 else "\\U%08x" % point)
    out.append(quote)
    return "".join(out)


def _go_strings(items: Sequence[str]) -> str:
    """``fmt.Sprintf("%q", []string{...})``."""
    return "[%s]" % " ".join(go_quote(item) for item in items)


def _go_health(check: Healthcheck) -> str:
    """``fmt.Sprintf("%q", &container.HealthConfig{...})``, as the history shows it."""
    durations = [check.interval, check.timeout, check.start_period, check.start_interval]
    retries = chr(check.retries) if check.retries <= 0x10FFFF else "\ufffd"
    return "&{%s %s %s}" % (_go_strings(check.test),
                            " ".join(go_quote(go_duration(value)) for value in durations),
                            go_quote(retries, "'"))


# ---------------------------------------------------------------------------------------
# The image config an instruction leaves behind
# ---------------------------------------------------------------------------------------

def apply_config(image: Mapping[str, Any], instruction: Instruction) -> Dict[str, Any]:
    """A copy of the image config JSON (``{"config": {...}, "author": ...}``) with the
    configuration change of ``instruction`` applied; RUN, COPY, ADD and ARG change
    nothing here."""
    # copy-on-write: every change below puts new objects in place of the ones it
    # changes, so shallow copies keep the input intact without copying the history
    # (a deep copy per step made a long build quadratic)
    result = dict(image)
    result["config"] = dict(result["config"]) if isinstance(result.get("config"), dict) else {}
    change = _CONFIG_CHANGES.get(type(instruction.args))
    if change is not None:
        change(result, instruction.args)
    return result


def _set_env(image: Dict[str, Any], payload: Env) -> None:
    env = list(image["config"].get("Env") or [])
    for key, value in payload.pairs:
        entry = "%s=%s" % (key, value)
        positions = [i for i, item in enumerate(env) if item.partition("=")[0] == key]
        if positions:
            env[positions[0]] = entry
        else:
            env.append(entry)
    image["config"]["Env"] = env


def _set_labels(image: Dict[str, Any], payload: Label) -> None:
    labels = dict(image["config"].get("Labels") or {})
    labels.update(payload.pairs)
    image["config"]["Labels"] = labels


def _set_entrypoint(image: Dict[str, Any], payload: Entrypoint) -> None:
    image["config"]["Entrypoint"] = list(payload.argv)
    if payload.clears_cmd:
        image["config"]["Cmd"] = None


def _add_keys(name: str, values: Callable[[Any], List[str]]) -> Callable[[Dict[str, Any], Any], None]:
    def apply(image: Dict[str, Any], payload: Any) -> None:
        found = dict(image["config"].get(name) or {})
        found.update((value, {}) for value in values(payload))
        image["config"][name] = found
    return apply


def _set_health(image: Dict[str, Any], payload: Healthcheck) -> None:
    health: Dict[str, Any] = {"Test": list(payload.test)}
    for key, value in (("Interval", payload.interval), ("Timeout", payload.timeout),
                       ("StartPeriod", payload.start_period),
                       ("StartInterval", payload.start_interval),
                       ("Retries", payload.retries)):
        if value:
            health[key] = value
    image["config"]["Healthcheck"] = health


def _set(name: str, value: Callable[[Any], Any]) -> Callable[[Dict[str, Any], Any], None]:
    def apply(image: Dict[str, Any], payload: Any) -> None:
        image["config"][name] = value(payload)
    return apply


def _add_onbuild(image: Dict[str, Any], payload: Onbuild) -> None:
    image["config"]["OnBuild"] = list(image["config"].get("OnBuild") or []) + [payload.expression]


def _set_author(image: Dict[str, Any], payload: Maintainer) -> None:
    image["author"] = payload.author


_CONFIG_CHANGES: Dict[type, Callable[[Dict[str, Any], Any], None]] = {
    Env: _set_env,
    Label: _set_labels,
    Command: _set("Cmd", lambda payload: list(payload.argv)),
    Entrypoint: _set_entrypoint,
    Workdir: _set("WorkingDir", lambda payload: payload.path),
    User: _set("User", lambda payload: payload.user),
    Expose: _add_keys("ExposedPorts", lambda payload: payload.ports),
    Volume: _add_keys("Volumes", lambda payload: payload.paths),
    StopSignal: _set("StopSignal", lambda payload: payload.signal),
    Shell: _set("Shell", lambda payload: list(payload.argv)),
    Healthcheck: _set_health,
    Onbuild: _add_onbuild,
    Maintainer: _set_author,
}


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------

def parse(text: str, build_args: Optional[Mapping[str, Any]] = None,
          target: Optional[str] = None, source: str = "Dockerfile",
          base_config: Optional[BaseConfig] = None) -> Spec:
    """Read Dockerfile ``text`` into a ``Spec``.

    ``build_args`` are the values for ``ARG``; ``target`` names the stage to build
    (default: the last); ``source`` is how messages name the text; ``base_config(ref)``
    returns the ``config`` object of a base image (its ``Env``, ``WorkingDir``, ``User``,
    ``Shell``) or None: substitution then sees the base image's ENV (``$PATH``...), as
    Docker's does.  It is called for the base of every stage built FROM an image.
    """
    if not isinstance(text, str):
        raise InvalidInput("%s: the spec must be text, not %s" % (source, type(text).__name__))
    reader = _Reader(text, lambda number: "%s line %d" % (source, number))
    logicals = reader.read()
    compiler = _Compiler(logicals, reader.escape, source,
                         lambda number: "%s line %d" % (source, number),
                         build_args, target, base_config)
    return compiler.compile()


def from_instructions(items: Sequence[Any], build_args: Optional[Mapping[str, Any]] = None,
                      target: Optional[str] = None,
                      base_config: Optional[BaseConfig] = None) -> Spec:
    """Read the YAML form (a list of one-key ``{INSTRUCTION: value}`` mappings) into the
    ``Spec`` the equivalent Dockerfile gives; line numbers are item numbers (from 1).

    A string value is the rest of the Dockerfile line (a heredoc body may follow on the
    next lines); a multi-line RUN string without a heredoc is run as one shell script;
    lists are the JSON form; mappings are described in the collection's schema
    ``schemas/image_build.instructions.json``.
    """
    if not isinstance(items, (list, tuple)):
        raise InvalidInput("instructions must be a list of {INSTRUCTION: value} items")
    logicals = []
    for number, item in enumerate(items, 1):
        logicals.append(_item_logical(item, number))
    compiler = _Compiler(logicals, "\\", "instructions", _item_where, build_args, target,
                         base_config)
    return compiler.compile()


def _item_where(number: int) -> str:
    return "instructions item %d" % number


def _item_logical(item: Any, number: int) -> _Logical:
    try:
        text = _render_item(item)
    except _Bad as exc:
        raise InvalidInput("%s: %s" % (_item_where(number), exc), line=number) from None
    found = _Reader(text, _item_where, fixed_line=number).read()
    if len(found) != 1:
        raise InvalidInput("%s holds %d instructions (%s): give one instruction per item"
                           % (_item_where(number), len(found), _shown(text)), line=number)
    return found[0]


# ---------------------------------------------------------------------------------------
# The YAML form, rendered to the Dockerfile line it stands for
# ---------------------------------------------------------------------------------------

_JSON_FORM = frozenset(("RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME"))
_NUMBER_FORM = frozenset(("EXPOSE", "USER", "STOPSIGNAL"))


def _render_item(item: Any) -> str:
    if not isinstance(item, Mapping) or len(item) != 1:
        raise _Bad("each item is a mapping with one key, the instruction, e.g. {RUN: make}")
    key, value = next(iter(item.items()))
    if not isinstance(key, str) or key.upper() not in KEYWORDS:
        raise _Bad(_unknown_instruction(str(key), str(key)))
    keyword = key.upper()
    if isinstance(value, str):
        return _render_text(keyword, value)
    if isinstance(value, (list, tuple)):
        return _render_list(keyword, list(value))
    if isinstance(value, Mapping):
        return _render_mapping(keyword, value)
    if isinstance(value, int) and not isinstance(value, bool) and keyword in _NUMBER_FORM:
        return "%s %d" % (keyword, value)
    raise _Bad("%s takes a string%s, not %s" % (
        keyword, ", a list or a mapping" if keyword in _MAPPED else "", type(value).__name__))


def _render_text(keyword: str, value: str) -> str:
    value = value[:-1] if value.endswith("\n") else value
    lines = value.split("\n")
    continued = all(line.rstrip().endswith("\\") for line in lines[:-1])
    if keyword == "RUN" and len(lines) > 1 and not continued and not _opens_heredoc(lines[0]):
        return "RUN " + _heredoc_text(value + "\n")
    return "%s %s" % (keyword, value)


def _opens_heredoc(line: str) -> bool:
    try:
        return bool(_heredocs_in(line))
    except _Bad:
        return True


def _heredoc_text(content: str, destination: str = "", quoted: bool = False) -> str:
    delimiter = "EOF"
    lines = content.split("\n")
    while delimiter in lines:
        delimiter += "_"
    opener = "<<'%s'" % delimiter if quoted else "<<" + delimiter
    return "%s%s\n%s%s" % (opener, " " + destination if destination else "", content, delimiter)


def _render_list(keyword: str, values: List[Any]) -> str:
    if keyword == "EXPOSE":
        return "EXPOSE " + " ".join(_scalar(value, "EXPOSE") for value in values)
    if keyword not in _JSON_FORM:
        raise _Bad("%s does not take a list" % keyword)
    if not all(isinstance(value, str) for value in values):
        raise _Bad("the %s list must hold strings only" % keyword)
    return "%s %s" % (keyword, json.dumps(values))


def _scalar(value: Any, keyword: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise _Bad("%s values must be strings or numbers, not %s" % (keyword, type(value).__name__))


def _quoted(value: Any, keyword: str, name: str) -> str:
    text = _scalar(value, keyword)
    if "\n" in text:
        raise _Bad("the %s value of %s spans lines; a Dockerfile value cannot" % (keyword, name))
    # Double quotes keep blanks; $ stays live so that "$PATH:/x" works as in a Dockerfile.
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def _plain(value: Any, what: str) -> str:
    text = _scalar(value, what)
    if not text or any(char.isspace() for char in text) or any(c in text for c in "\"'\\"):
        raise _Bad("%s must be one word without quotes or backslashes, not %r" % (what, text))
    return text


def _render_pairs(keyword: str, value: Mapping[str, Any]) -> str:
    if not value:
        raise _Bad("%s needs at least one name" % keyword)
    parts = []
    for name, item in value.items():
        key = _plain(name, "%s name" % keyword)
        if "=" in key:
            raise _Bad("%s name %r must not contain '='" % (keyword, key))
        if keyword == "ARG" and item is None:
            parts.append(key)
        else:
            parts.append("%s=%s" % (key, _quoted(item, keyword, key)))
    return "%s %s" % (keyword, " ".join(parts))


def _flags_text(value: Mapping[str, Any], names: Sequence[str]) -> str:
    flags = []
    for name in names:
        item = value.get(name.replace("-", "_"))
        if item is None or item is False:
            continue
        flags.append("--%s" % name if item is True else "--%s=%s" % (name, _plain(item, name)))
    return "".join(flag + " " for flag in flags)


def _check_keys(keyword: str, value: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(str(key) for key in value if key not in allowed)
    if unknown:
        raise _Bad("%s does not take %s (it takes %s)"
                   % (keyword, ", ".join(unknown), ", ".join(allowed)))


def _render_from(keyword: str, value: Mapping[str, Any]) -> str:
    _check_keys(keyword, value, ("image", "as", "platform"))
    text = "FROM %s%s" % (_flags_text(value, ("platform",)), _plain(value.get("image"), "image"))
    return text + (" AS %s" % _plain(value["as"], "as") if value.get("as") else "")


def _render_transfer(keyword: str, value: Mapping[str, Any]) -> str:
    names = ["src", "content", "dest", "chown", "chmod", "link", "exclude"]
    names += ["from", "parents"] if keyword == "COPY" else []
    _check_keys(keyword, value, names)
    flags = _flags_text(value, ("from", "chown", "chmod", "link", "parents"))
    excludes = value.get("exclude") or []
    for pattern in [excludes] if isinstance(excludes, str) else excludes:
        flags += "--exclude=%s " % _plain(pattern, "exclude")
    if not isinstance(value.get("dest"), str) or not value["dest"]:
        raise _Bad("%s needs dest" % keyword)
    if ("src" in value) == ("content" in value):
        raise _Bad("%s takes either src (paths) or content (an inline file)" % keyword)
    if "content" in value:
        content = str(value["content"])
        content = content if content.endswith("\n") or not content else content + "\n"
        inline = _heredoc_text(content, _plain(value["dest"], "dest"), quoted=True)
        return "%s %s%s" % (keyword, flags, inline)
    sources = value["src"] if isinstance(value["src"], list) else [value["src"]]
    if not sources or not all(isinstance(item, str) and item for item in sources):
        raise _Bad("%s src must be a path or a list of paths" % keyword)
    return "%s %s%s" % (keyword, flags, json.dumps(list(sources) + [value["dest"]]))


def _render_healthcheck(keyword: str, value: Mapping[str, Any]) -> str:
    _check_keys(keyword, value, ("cmd", "interval", "timeout", "start_period",
                                 "start_interval", "retries"))
    command = value.get("cmd")
    if isinstance(command, list) and all(isinstance(item, str) for item in command):
        command = json.dumps(command)
    if not isinstance(command, str) or not command or "\n" in command:
        raise _Bad("HEALTHCHECK needs cmd: a one-line command or a list of strings")
    flags = _flags_text(value, ("interval", "timeout", "start-period", "start-interval",
                                "retries"))
    return "HEALTHCHECK %sCMD %s" % (flags, command)


_MAPPED: Dict[str, Callable[[str, Mapping[str, Any]], str]] = {
    "FROM": _render_from,
    "COPY": _render_transfer,
    "ADD": _render_transfer,
    "ENV": _render_pairs,
    "LABEL": _render_pairs,
    "ARG": _render_pairs,
    "HEALTHCHECK": _render_healthcheck,
}


def _render_mapping(keyword: str, value: Mapping[str, Any]) -> str:
    render = _MAPPED.get(keyword)
    if render is None:
        raise _Bad("%s does not take a mapping" % keyword)
    return render(keyword, value)


# ---------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------

@dataclass
class IgnorePattern:
    text: str          # cleaned, without the leading "!"
    exclusion: bool    # a "!" line: matching paths are kept after all
    regex: Any         # has .match(path): a compiled regex, or a _PathAutomaton
    line: int


# Tokens of a translated pattern: a literal character, a character class, one
# character but "/", any run without "/" ("*"), any text ("**" at the end) and any
# run of whole directories ("**/", or "**" inside a pattern).
_LIT, _CLASS, _ONE, _STAR, _ALL, _DIRS = "lit", "class", "one", "star", "all", "dirs"
_TOKEN_REGEX = {_ONE: "[^/]", _STAR: "[^/]*", _ALL: ".*", _DIRS: "(?:.*/)?"}


def _ignore_tokens(pattern: str) -> List[Tuple[str, str]]:
    """Docker's (moby/patternmatcher) reading of a Go ``filepath.Match`` pattern with
    ``**``, as tokens."""
    out: List[Tuple[str, str]] = []
    pos = 0
    while pos < len(pattern):
        char = pattern[pos]
        pos += 1
        if char == "*" and pattern.startswith("*", pos):
            pos += 1
            pos += 1 if pattern.startswith("/", pos) else 0
            token = (_ALL if pos == len(pattern) else _DIRS, "")
            # "**/**/" is "**/": repeating it changes nothing but the matching cost
            if not (out and out[-1] == (_DIRS, "") and token[0] == _DIRS):
                out.append(token)
        elif char == "*":
            out.append((_STAR, ""))
        elif char == "?":
            out.append((_ONE, ""))
        elif char == "[":
            text, pos = _ignore_class(pattern, pos)
            out.append((_CLASS, text))
        elif char == "\\" and pos < len(pattern):
            out.append((_LIT, pattern[pos]))
            pos += 1
        else:
            out.append((_LIT, char))
    return out


def _ignore_regex(pattern: str) -> str:
    """The regular expression Docker matches ``pattern`` with."""
    return "\\A%s\\Z" % "".join(_token_regex(token) for token in _ignore_tokens(pattern))


def _token_regex(token: Tuple[str, str]) -> str:
    kind, text = token
    if kind == _LIT:
        return re.escape(text)
    return text if kind == _CLASS else _TOKEN_REGEX[kind]


def _ignore_matcher(pattern: str) -> Any:
    """A matcher whose time is linear in the path.  Python's regex engine backtracks, so
    it runs only patterns where backtracking stays linear: no ``**`` but at the very
    end, at most one ``*`` between slashes; a leading ``**/`` before such a rest is
    the rest matched against the path's last components.  Anything else
    (``**/a/**/b``, ``*a*a*a*``) runs as an automaton, one step per character."""
    tokens = _ignore_tokens(pattern)
    if _backtracks_linearly(tokens):
        return re.compile("\\A%s\\Z" % "".join(_token_regex(token) for token in tokens))
    if tokens[0] == (_DIRS, "") and _backtracks_linearly(tokens[1:]) and not any(
            kind == _ALL or kind == _CLASS and text.startswith("[^") for kind, text in tokens):
        return _SuffixMatcher(tokens[1:])
    return _PathAutomaton(tokens)


def _backtracks_linearly(tokens: Sequence[Tuple[str, str]]) -> bool:
    stars = 0
    for index, (kind, text) in enumerate(tokens):
        if kind == _DIRS or kind == _ALL and index != len(tokens) - 1:
            return False
        if kind == _STAR:
            stars += 1
            if stars > 1:
                return False
        elif kind == _LIT and text == "/":
            stars = 0
    return True


class _SuffixMatcher:
    """``**/rest`` where ``rest`` spans a fixed number of path components (no ``**``,
    no class that could match "/"): only the path's last components can match it."""

    def __init__(self, tokens: Sequence[Tuple[str, str]]) -> None:
        self.slashes = sum(1 for token in tokens if token == (_LIT, "/"))
        # no \\A: match() anchors at the position it is given, \\A at the string's start
        self.regex = re.compile("%s\\Z" % "".join(_token_regex(token) for token in tokens))

    def match(self, path: str) -> bool:
        start = len(path)
        for _count in range(self.slashes + 1):
            start = path.rfind("/", 0, start)
            if start < 0:
                break
        # the leading (?:.*/)? must cover path[:start]; its ".*" (Go's, like Python's)
        # stops at a newline, so a name with one there cannot match
        if start >= 0 and "\n" in path[:start]:
            return False
        return bool(self.regex.match(path, start + 1 if start >= 0 else 0))


class _PathAutomaton:
    """A pattern's tokens run as a lazily built DFA: one step per character of the path,
    whatever the pattern.  NFA state ``i`` waits for token ``i``; ``-1 - i`` is inside
    the ``.*`` of a ``(?:.*/)?`` token; ``len(tokens)`` accepts."""

    MAX_STATES = 4096   # past this, new DFA states are computed each time, not kept

    def __init__(self, tokens: List[Tuple[str, str]]) -> None:
        self.tokens = tokens
        self.classes = {i: re.compile(text) for i, (kind, text) in enumerate(tokens)
                        if kind == _CLASS}
        self.sets: List[FrozenSet[int]] = []
        self.ids: Dict[FrozenSet[int], int] = {}
        self.moves: List[Dict[str, int]] = []
        self.dead = self._id(frozenset())
        self.start = self._id(self._closure([0]))

    def match(self, path: str) -> bool:
        state = self.start
        moves = self.moves
        for char in path:
            nxt = moves[state].get(char)
            if nxt is None:
                nxt = self._id(self._step(self.sets[state], char))
                if len(self.sets) <= self.MAX_STATES:
                    moves[state][char] = nxt
            if nxt == self.dead:
                return False
            state = nxt
        return len(self.tokens) in self.sets[state]

    def _id(self, states: FrozenSet[int]) -> int:
        found = self.ids.get(states)
        if found is None:
            found = len(self.sets)
            self.sets.append(states)
            self.moves.append({})
            if len(self.sets) <= self.MAX_STATES:
                self.ids[states] = found
        return found

    def _closure(self, states: Sequence[int]) -> FrozenSet[int]:
        found: Set[int] = set()
        todo = list(states)
        while todo:
            state = todo.pop()
            if state in found:
                continue
            found.add(state)
            if 0 <= state < len(self.tokens):
                kind = self.tokens[state][0]
                if kind in (_STAR, _ALL, _DIRS):
                    todo.append(state + 1)     # zero characters
                if kind == _DIRS:
                    todo.append(-1 - state)    # or some directories
        return frozenset(found)

    def _step(self, states: FrozenSet[int], char: str) -> FrozenSet[int]:
        nxt: List[int] = []
        for state in states:
            if state < 0:
                if char != "\n":              # "." as Go's regexp reads it
                    nxt.append(state)          # still inside "(?:.*"
                if char == "/":
                    nxt.append(-state)         # "/)?" done: the next token
                continue
            if state == len(self.tokens):
                continue
            kind, text = self.tokens[state]
            if kind == _LIT and char == text or kind == _ONE and char != "/" or \
                    kind == _CLASS and self.classes[state].match(char):
                nxt.append(state + 1)
            elif kind == _STAR and char != "/" or kind == _ALL and char != "\n":
                nxt.append(state)
        return self._closure(nxt)


def _ignore_class(pattern: str, pos: int) -> Tuple[str, int]:
    """A ``[...]`` class from ``pos`` (after the ``[``): Go's rules (``^`` negates,
    ``\\`` escapes, ``lo-hi`` ranges, never empty), every character made literal."""
    negate = pattern.startswith("^", pos)
    pos += 1 if negate else 0
    members: List[Tuple[str, bool]] = []
    while pos < len(pattern) and pattern[pos] != "]":
        escaped = pattern[pos] == "\\" and pos + 1 < len(pattern)
        pos += 1 if escaped else 0
        members.append((pattern[pos], escaped))
        pos += 1
    if pos >= len(pattern) or not members:
        raise re.error("bad character class")
    return "[%s%s]" % ("^" if negate else "", _class_body(members)), pos + 1


def _class_body(members: List[Tuple[str, bool]]) -> str:
    out, index = [], 0
    while index < len(members):
        if index + 2 < len(members) and members[index + 1] == ("-", False):
            low, high = members[index][0], members[index + 2][0]
            if low > high:
                raise re.error("bad range %s-%s" % (low, high))
            out.append("%s-%s" % (re.escape(low), re.escape(high)))
            index += 3
        else:
            out.append(re.escape(members[index][0]))
            index += 1
    return "".join(out)


def _ignore_pattern(raw: str, number: int, source: str) -> Optional[IgnorePattern]:
    if raw.startswith("#"):
        return None
    text = raw.strip()
    if not text:
        return None
    exclusion = text.startswith("!")
    text = text[1:].strip() if exclusion else text
    if exclusion and not text:
        raise InvalidInput('%s line %d: illegal exclusion pattern "!"' % (source, number),
                           line=number)
    text = _clean(text)
    text = text[1:] if len(text) > 1 and text.startswith("/") else text
    try:
        regex = _ignore_matcher(text)
    except re.error as exc:
        raise InvalidInput("%s line %d: bad pattern %r: %s" % (source, number, raw.strip(), exc),
                           line=number) from exc
    return IgnorePattern(text=text, exclusion=exclusion, regex=regex, line=number)


class DockerIgnore:
    """``.dockerignore`` as Docker reads it: one pattern a line (Go ``filepath.Match``
    syntax plus ``**``), ``#`` comment lines, ``!`` exceptions, later lines win,
    patterns cleaned and a leading ``/`` dropped; a path is also ignored when one of
    its parent directories matches."""

    def __init__(self, text: str = "", source: str = ".dockerignore") -> None:
        self.patterns: List[IgnorePattern] = []
        # directory -> indexes of the patterns matching it or one of its parents; a
        # context walk asks about the same directories for every file in them.
        self._hits: Dict[str, FrozenSet[int]] = {"": frozenset()}
        lines = (text[1:] if text.startswith("\ufeff") else text).split("\n")
        for number, raw in enumerate(lines, 1):
            pattern = _ignore_pattern(raw[:-1] if raw.endswith("\r") else raw, number, source)
            if pattern is not None:
                self.patterns.append(pattern)

    @property
    def has_exceptions(self) -> bool:
        return any(pattern.exclusion for pattern in self.patterns)

    def matches(self, relpath: str) -> bool:
        """True when the context path (relative, ``/``-separated) is ignored."""
        path = _clean(relpath.lstrip("/"))
        parent_hits = self._directory_hits(posixpath.dirname(path))
        ignored = False
        for index, pattern in enumerate(self.patterns):
            # Only a pattern that could change the verdict is worth evaluating.
            if pattern.exclusion != ignored:
                continue
            if index in parent_hits or pattern.regex.match(path):
                ignored = not pattern.exclusion
        return ignored

    def _directory_hits(self, directory: str) -> FrozenSet[int]:
        missing = []
        while directory not in self._hits:
            missing.append(directory)
            directory = posixpath.dirname(directory)
        hits = self._hits[directory]
        for path in reversed(missing):
            own = {i for i, pattern in enumerate(self.patterns) if pattern.regex.match(path)}
            hits = self._hits[path] = hits | own
        return hits

    def may_reinclude(self, directory: str) -> bool:
        """Whether an exception could bring back something below an ignored directory
        (so a context walk must descend into it).  Errs towards True."""
        prefix = _clean(directory.lstrip("/")) + "/"
        for pattern in self.patterns:
            if not pattern.exclusion:
                continue
            text = pattern.text + "/"
            if text.startswith(prefix) or prefix.startswith(text) or \
                    any(char in pattern.text for char in "*?[\\"):
                return True
        return False
