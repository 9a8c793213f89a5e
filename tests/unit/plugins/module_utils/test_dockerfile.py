"""The Dockerfile parser: every instruction and form, the errors, substitution,
continuations, heredocs, stages, the YAML form and its schema, .dockerignore."""
from __future__ import annotations

import json
import os

import jsonschema
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ansible_collections.strata.layers.plugins.module_utils._dockerfile import (
    DEFAULT_PATH, KEYWORDS, Arg, Command, Copy, DockerIgnore, Entrypoint, Env, Expose,
    Healthcheck, Heredoc, InlineFile, Label, Maintainer, Onbuild, Run, Shell, StopSignal, User,
    Volume, Workdir, apply_config, from_instructions, go_duration, go_quote, parse,
    parse_duration, substitute, substitute_words)
from ansible_collections.strata.layers.plugins.module_utils._errors import InvalidInput

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))))
SCHEMA_PATH = os.path.join(REPO, "schemas", "image_build.instructions.json")
SH = ["/bin/sh", "-c"]


def step(text, **options):
    """The last instruction of ``FROM scratch`` + text."""
    return parse("FROM scratch\n" + text, **options).stages[-1].instructions[-1]


def failure(text, **options):
    with pytest.raises(InvalidInput) as info:
        parse(text, **options)
    return info.value


# ---------------------------------------------------------------------------------------
# Every instruction and form
# ---------------------------------------------------------------------------------------

def run(command, argv, heredocs=(), files=None, shell_form=True, **fields):
    return Run(command=command, shell_form=shell_form, heredocs=list(heredocs), argv=argv,
               files=files or {}, **fields)


def copy(sources, dest, dest_path=None, **fields):
    return Copy(sources=sources, dest=dest, dest_path=dest_path or dest, **fields)


FORMS = [
    ("run-shell", "RUN make /app", run("make /app", SH + ["make /app"])),
    ("run-shell-spaces-kept", "RUN   echo  a   b  ", run("echo  a   b", SH + ["echo  a   b"])),
    ("run-shell-keeps-variables", "ENV A=1\nRUN echo $A ${B:-x}",
     run("echo $A ${B:-x}", SH + ["echo $A ${B:-x}"])),
    ("run-exec", 'RUN ["echo", "a b"]', run(["echo", "a b"], ["echo", "a b"], shell_form=False)),
    ("run-bad-json-is-shell", 'RUN ["echo", a]', run('["echo", a]', SH + ['["echo", a]'])),
    ("run-network-none", "RUN --network=none true", run("true", SH + ["true"], network="none")),
    ("run-lowercase-keyword", "run true", run("true", SH + ["true"])),
    ("run-after-shell", 'SHELL ["/bin/bash", "-o", "pipefail", "-c"]\nRUN a | b',
     run("a | b", ["/bin/bash", "-o", "pipefail", "-c", "a | b"])),
    ("run-heredoc-script", "RUN <<EOF\nset -e\necho $HOME\nEOF",
     run("<<EOF", SH + ["set -e\necho $HOME\n"],
         [Heredoc("EOF", "set -e\necho $HOME\n", chomp=False, expand=True)])),
    ("run-heredoc-shebang", "RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF",
     run("<<EOF", ["/dev/pipes/EOF"],
         [Heredoc("EOF", "#!/usr/bin/env python3\nprint(1)\n", False, True)],
         files={"/dev/pipes/EOF": "#!/usr/bin/env python3\nprint(1)\n"})),
    ("run-heredoc-chomp", "RUN <<-EOT\n\techo a\n\t\techo b\n\tEOT",
     run("<<-EOT", SH + ["echo a\necho b\n"],
         [Heredoc("EOT", "\techo a\n\t\techo b\n", chomp=True, expand=True)])),
    ("run-heredoc-as-argument", "RUN python3 <<'PY'\nprint('$x')\nPY",
     run("python3 <<'PY'", SH + ["python3 <<'PY'\nprint('$x')\nPY"],
         [Heredoc("PY", "print('$x')\n", chomp=False, expand=False)])),
    ("run-two-heredocs", "RUN cat <<A >a && cat <<\"B\" >b\n1\nA\n2\nB",
     run('cat <<A >a && cat <<"B" >b', SH + ['cat <<A >a && cat <<"B" >b\n1\nA\n2\nB'],
         [Heredoc("A", "1\n", False, True), Heredoc("B", "2\n", False, False)])),
    ("run-heredoc-after-space", "RUN cat << EOF\nx\nEOF",
     run("cat << EOF", SH + ["cat << EOF\nx\nEOF"], [Heredoc("EOF", "x\n", False, True)])),
    ("run-shift-is-not-heredoc", "RUN echo $((1 << 2))",
     run("echo $((1 << 2))", SH + ["echo $((1 << 2))"])),
    ("run-quoted-heredoc-marker", 'RUN echo "<<EOF"', run('echo "<<EOF"', SH + ['echo "<<EOF"'])),
    ("cmd-exec", 'CMD ["/bin/sh", "-c", "/app/hello.sh"]',
     Command(["/bin/sh", "-c", "/app/hello.sh"], shell_form=False)),
    ("cmd-shell", "CMD /app/hello.sh", Command(SH + ["/app/hello.sh"], shell_form=True)),
    ("cmd-empty-exec", "CMD []", Command([], shell_form=False)),
    ("entrypoint-clears-cmd", 'ENTRYPOINT ["/init"]', Entrypoint(["/init"], False, clears_cmd=True)),
    ("entrypoint-after-cmd", 'CMD ["x"]\nENTRYPOINT /init',
     Entrypoint(SH + ["/init"], True, clears_cmd=False)),
    ("shell", 'SHELL ["powershell", "-command"]', Shell(["powershell", "-command"])),
    ("copy", "COPY . /app", copy(["."], "/app")),
    ("copy-sources", "COPY a b* /dst/", copy(["a", "b*"], "/dst/")),
    ("copy-json", 'COPY ["a b", "c", "/d e/"]', copy(["a b", "c"], "/d e/")),
    ("copy-relative-dest", "WORKDIR /srv\nCOPY a rel", copy(["a"], "rel", "/srv/rel")),
    ("copy-dot-dest", "WORKDIR /srv\nCOPY a .", copy(["a"], ".", "/srv/")),
    ("copy-flags", "COPY --chown=app:staff --chmod=0640 --link a /b",
     copy(["a"], "/b", chown="app:staff", chmod="0640", link=True)),
    ("copy-flags-substituted", "ARG U=7\nARG SRC=x\nCOPY --chown=$U:${U} $SRC /$SRC",
     copy(["x"], "/x", chown="7:7")),
    ("copy-from-image", "COPY --from=busybox:1.36 /bin/sh /sh",
     copy(["/bin/sh"], "/sh", from_image="busybox:1.36")),
    ("copy-heredoc", 'ARG V=2\nCOPY <<EOF /etc/app.conf\nv=$V "kept" \\$V\nEOF',
     copy([], "/etc/app.conf", heredoc_files=[InlineFile("EOF", 'v=2 "kept" $V\n')])),
    ("copy-heredoc-quoted", "COPY <<'EOF' /x\nv=$V\nEOF",
     copy([], "/x", heredoc_files=[InlineFile("EOF", "v=$V\n")])),
    ("copy-heredocs-and-file", "COPY <<a.txt file <<-b.txt /dir/\n1\na.txt\n\t2\n\tb.txt",
     copy(["file"], "/dir/", heredoc_files=[InlineFile("a.txt", "1\n"),
                                            InlineFile("b.txt", "2\n")])),
    ("add", "ADD rootfs.tar.gz /", copy(["rootfs.tar.gz"], "/", is_add=True)),
    ("add-flags", "ADD --chown=1:1 --chmod=755 a /b", copy(["a"], "/b", is_add=True,
                                                           chown="1:1", chmod="755")),
    ("env-pairs", 'ENV A=1 B="two words" C=x\\ y', Env([("A", "1"), ("B", "two words"),
                                                        ("C", "x y")])),
    ("env-legacy", 'ENV GREETING hello  "big" world', Env([("GREETING", 'hello  big world')])),
    ("env-sees-old-values", "ENV a=hello\nENV a=bye b=$a", Env([("a", "bye"), ("b", "hello")])),
    ("env-single-quotes", "ENV A='$HOME'", Env([("A", "$HOME")])),
    ("arg-name", "ARG NAME", Arg([("NAME", None)])),
    ("arg-default", 'ARG A=1 B="${A}2"', Arg([("A", "1"), ("B", "12")])),
    ("label", 'LABEL "com.example.vendor"="ACME Inc" version=1.0 multi="a\\\nb"',
     Label([("com.example.vendor", "ACME Inc"), ("version", "1.0"), ("multi", "ab")])),
    ("label-legacy", "LABEL description This text", Label([("description", "This text")])),
    ("label-substituted", "ENV V=3\nLABEL v$V=${V}", Label([("v3", "3")])),
    ("workdir", "WORKDIR /a/b/../c/", Workdir("/a/c")),
    ("workdir-relative", "WORKDIR /a\nWORKDIR b\nWORKDIR c", Workdir("/a/b/c")),
    ("workdir-substituted", "ENV DIRPATH=/path\nWORKDIR $DIRPATH/$DIRNAME", Workdir("/path")),
    ("user", "USER app:staff", User("app:staff")),
    ("user-substituted", "ARG UID=1000\nUSER ${UID}", User("1000")),
    ("expose", "EXPOSE 80 443/udp 7000-7002/TCP",
     Expose(["80/tcp", "443/udp", "7000/tcp", "7001/tcp", "7002/tcp"])),
    ("expose-words-from-variable", 'ENV PORTS="80 81"\nEXPOSE $PORTS 80',
     Expose(["80/tcp", "81/tcp"])),
    ("volume-json", 'VOLUME ["/data", "/var/log x"]', Volume(["/data", "/var/log x"])),
    ("volume-words", "ENV D=/data\nVOLUME $D /logs", Volume(["/data", "/logs"])),
    ("stopsignal", "STOPSIGNAL SIGQUIT", StopSignal("SIGQUIT")),
    ("stopsignal-number", "STOPSIGNAL 9", StopSignal("9")),
    ("stopsignal-realtime", "ENV S=RTMIN+3\nSTOPSIGNAL $S", StopSignal("RTMIN+3")),
    ("healthcheck", "HEALTHCHECK --interval=5m --timeout=3s --start-period=1m30s "
                    "--start-interval=500ms --retries=3 CMD curl -f http://localhost/ || exit 1",
     Healthcheck(["CMD-SHELL", "curl -f http://localhost/ || exit 1"], 300 * 10 ** 9,
                 3 * 10 ** 9, 90 * 10 ** 9, 5 * 10 ** 8, 3)),
    ("healthcheck-exec", 'HEALTHCHECK cmd ["/bin/check", "-q"]',
     Healthcheck(["CMD", "/bin/check", "-q"])),
    ("healthcheck-none", "HEALTHCHECK NONE", Healthcheck(["NONE"])),
    ("onbuild", "ONBUILD  RUN echo $HOME", Onbuild("RUN echo $HOME")),
    ("onbuild-copy", "onbuild COPY . /src", Onbuild("COPY . /src")),
    ("maintainer", "MAINTAINER Jane Doe <jane@example.com>",
     Maintainer("Jane Doe <jane@example.com>")),
]


@pytest.mark.parametrize("text,expected", [case[1:] for case in FORMS],
                         ids=[case[0] for case in FORMS])
def test_every_instruction_and_form(text, expected):
    assert step(text).args == expected


def test_the_forms_table_covers_every_instruction():
    covered = {step(case[1]).keyword for case in FORMS}
    assert covered | {"FROM"} == set(KEYWORDS)


# ---------------------------------------------------------------------------------------
# History strings (docker history, classic builder)
# ---------------------------------------------------------------------------------------

HISTORY = [
    ('CMD ["/bin/sh", "-c", "/app/hello.sh"]', '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "/app/hello.sh"]'),
    ("CMD /app/hello.sh", '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "/app/hello.sh"]'),
    ('CMD ["/bin/bash"]', '/bin/sh -c #(nop)  CMD ["/bin/bash"]'),
    ("CMD echo \"$A\"\ttab", '/bin/sh -c #(nop)  CMD ["/bin/sh" "-c" "echo \\"$A\\"\\ttab"]'),
    ("ENTRYPOINT top -b", '/bin/sh -c #(nop)  ENTRYPOINT ["/bin/sh" "-c" "top -b"]'),
    ("RUN rm -rf /var/lib/apt/lists/*", "/bin/sh -c rm -rf /var/lib/apt/lists/*"),
    ('RUN ["echo", "hi"]', "echo hi"),
    ("ARG B=2\nARG A=1\nRUN make", "|2 A=1 B=2 /bin/sh -c make"),
    ('ARG A=1\nRUN ["echo", "hi"]', "|1 A=1 echo hi"),
    ("ARG A=1 UNSET\nENV A=env\nRUN make", "/bin/sh -c make"),
    ('SHELL ["/bin/bash", "-c"]', "/bin/bash -c #(nop)  SHELL [/bin/bash -c]"),
    ('SHELL ["/bin/bash", "-c"]\nRUN make', "/bin/bash -c make"),
    ("ENV A=1 B=two\\ words", "/bin/sh -c #(nop)  ENV A=1 B=two words"),
    ("ARG V=1 N", "/bin/sh -c #(nop)  ARG V=1 N"),
    ('LABEL a=b "c d"=e', "/bin/sh -c #(nop)  LABEL a=b c d=e"),
    ("WORKDIR /app\nWORKDIR sub", "/bin/sh -c #(nop)  WORKDIR /app/sub"),
    ("USER nobody", "/bin/sh -c #(nop)  USER nobody"),
    ("EXPOSE 80 443/udp", "/bin/sh -c #(nop)  EXPOSE 80 443/udp"),
    ("VOLUME /data /logs", "/bin/sh -c #(nop)  VOLUME [/data /logs]"),
    ("STOPSIGNAL SIGTERM", "/bin/sh -c #(nop)  STOPSIGNAL SIGTERM"),
    ("MAINTAINER me", "/bin/sh -c #(nop)  MAINTAINER me"),
    ("ONBUILD RUN make", "/bin/sh -c #(nop)  ONBUILD RUN make"),
    ("HEALTHCHECK --interval=5m --timeout=3s --retries=3 CMD curl -f http://localhost/",
     '/bin/sh -c #(nop)  HEALTHCHECK &{["CMD-SHELL" "curl -f http://localhost/"] "5m0s" "3s" '
     "\"0s\" \"0s\" '\\x03'}"),
    ("HEALTHCHECK NONE", '/bin/sh -c #(nop)  HEALTHCHECK &{["NONE"] "0s" "0s" "0s" "0s" \'\\x00\'}'),
    ("COPY . /app", "/bin/sh -c #(nop) COPY {source} in /app "),
    ("COPY --chown=1000:1000 a /b", "/bin/sh -c #(nop) COPY --chown=1000:1000{source} in /b "),
    ("ADD a.tar /", "/bin/sh -c #(nop) ADD {source} in / "),
]


@pytest.mark.parametrize("text,created_by", HISTORY)
def test_created_by_is_what_docker_history_shows(text, created_by):
    assert step(text).created_by == created_by


def test_copy_history_takes_the_source_hash():
    copy_step = step("COPY . /app")
    assert copy_step.history("dir:35a7eb158c1504e") == \
        "/bin/sh -c #(nop) COPY dir:35a7eb158c1504e in /app "
    assert copy_step.makes_layer and not step("CMD x").makes_layer


def test_go_formatting_helpers():
    assert go_quote('a"b\\c\n\x01\x7f é') == '"a\\"b\\\\c\\n\\x01\\x7f é"'
    assert go_quote("'", "'") == "'\\''"
    assert [go_duration(value) for value in (0, 999, 1500, 2 * 10 ** 6, 10 ** 9, 1500 * 10 ** 6,
                                             90 * 10 ** 9, 3600 * 10 ** 9, -10 ** 9)] == \
        ["0s", "999ns", "1.5µs", "2ms", "1s", "1.5s", "1m30s", "1h0m0s", "-1s"]
    assert [parse_duration(text) for text in ("0", "1h30m", "1.5s", ".5ms", "2us", "3µs", "+1s")] == \
        [0, 5400 * 10 ** 9, 1500 * 10 ** 6, 500000, 2000, 3000, 10 ** 9]


# ---------------------------------------------------------------------------------------
# Errors: before anything is built, with the line and the offending text
# ---------------------------------------------------------------------------------------

ERRORS = [
    ("unknown", "FROM x\nRUN a\n\nCOPYY /a /b", 4, 'Dockerfile line 4: unknown instruction "COPYY /a /b"'),
    ("unknown-hint", "FROM x\nRUNN make", 2, "did you mean RUN?"),
    ("before-from", "# comment\nRUN make\nFROM x", 2, "RUN before the first FROM"),
    ("no-from", "ARG A=1\n", None, "has no FROM"),
    ("empty", "# only a comment\n\n", None, "holds no instructions"),
    ("from-args", "FROM a b", 1, "FROM image [AS name]"),
    ("from-as", "FROM a OF b", 1, "FROM image [AS name]"),
    ("from-empty", "ARG IMG\nFROM $IMG", 2, "empty after substitution"),
    ("stage-name", "FROM a AS 1st", 1, "invalid stage name '1st'"),
    ("from-cycle", "FROM a AS x\nCOPY --from=y a b\nFROM b AS y\nCOPY --from=x a b", 1,
     "circular dependency"),
    ("from-base-cycle", "FROM a AS x\nCOPY --from=y a b\nFROM x AS y", 1, "circular dependency"),
    ("from-own", "FROM a AS x\nCOPY --from=x a b", 2, "names this stage itself"),
    ("from-own-index", "FROM a\nFROM b\nCOPY --from=1 a b", 3, "names this stage itself"),
    ("from-no-index", "FROM a\nCOPY --from=4 a b", 2, "there is no stage 4"),
    ("from-variable", "FROM a AS x\nFROM b\nARG S=x\nCOPY --from=$S a b", 4,
     "variables are not expanded in --from"),
    ("platform-undefined", "FROM --platform=$UNDEFINED a", 1, "empty after substitution"),
    ("empty-heredoc", "FROM a\nRUN cat <<", 2, "empty heredoc delimiter"),
    ("empty-quoted-heredoc", "FROM a\nRUN cat <<''\n", 2, "empty heredoc delimiter"),
    ("unterminated-heredoc", "FROM a\nRUN <<EOF\nnever ends\n", 2, "unterminated heredoc"),
    ("heredoc-dest", "FROM a\nCOPY a <<EOF\nx\nEOF", 2, "cannot be the destination"),
    ("bad-substitution", "FROM a\nENV A=${}", 2, "bad substitution"),
    ("missing-brace", "FROM a\nWORKDIR ${A", 2, "missing '}'"),
    ("bad-modifier", "FROM a\nUSER ${A^x}", 2, "unsupported modifier"),
    ("bad-trim-modifier", "FROM a\nUSER ${A:#x}", 2, "unsupported modifier (:#)"),
    ("bad-pattern-escape", "FROM a\nUSER ${A#\\.}", 2, "invalid escape"),
    ("required-variable", "FROM a\nARG V\nLABEL v=\"${V:?set V with build_args}\"", 3,
     "V: set V with build_args"),
    ("unclosed-quote", 'FROM a\nWORKDIR "/x', 2, "matching double-quote"),
    ("continued-line-number", "FROM a\nRUN true\nENV A=1 \\\n  B=${ \\\n  C=3", 3,
     "missing '}'"),
    ("after-heredoc-line-number", "FROM a\nRUN <<EOF\n1\n2\nEOF\nBAD x", 6, 'unknown instruction "BAD x"'),
    ("expose-range", "FROM a\nEXPOSE 99999", 2, "ports 0-65535"),
    ("expose-proto", "FROM a\nEXPOSE 80/icmp", 2, "unknown protocol"),
    ("expose-word", "FROM a\nEXPOSE http", 2, "'http'"),
    ("expose-reversed", "FROM a\nEXPOSE 90-80", 2, "low-high"),
    ("expose-address", "FROM a\nEXPOSE host:8080:80", 2, "invalid IP address"),
    ("expose-host-port", "FROM a\nEXPOSE x:80", 2, "invalid host port"),
    ("shell-not-json", "FROM a\nSHELL /bin/bash -c", 2, "SHELL takes the JSON form"),
    ("shell-empty", "FROM a\nSHELL []", 2, "at least one argument"),
    ("json-not-strings", 'FROM a\nCMD ["a", 1]', 2, "arrays must be comprised of strings only"),
    ("run-empty", "FROM a\nRUN", 2, "RUN needs a command"),
    ("cmd-empty", "FROM a\nCMD", 2, "CMD needs an argument"),
    ("run-flag", "FROM a\nRUN --mount=type=volume,target=/c make", 2, "not a mount type"),
    ("run-network", "FROM a\nRUN --network=bridge make", 2, "expecting default, none or host"),
    ("copy-flag", "FROM a\nCOPY --keep-git-dir a b", 2, "flag --keep-git-dir"),
    ("add-parents", "FROM a\nADD --parents a b", 2, "flag --parents"),
    ("exclude-empty", "FROM a\nCOPY --exclude= a b", 2, "--exclude needs a pattern"),
    ("exclude-bad", "FROM a\nCOPY --exclude=[ a b", 2, "not a valid pattern"),
    ("copy-flag-value", "FROM a\nCOPY --chown a b", 2, "missing a value on flag --chown"),
    ("copy-flag-twice", "FROM a\nCOPY --link --link a b", 2, "duplicate flag --link"),
    ("copy-one-arg", "FROM a\nCOPY a", 2, "at least one source and a destination"),
    ("copy-url", "FROM a\nCOPY https://example.com/x /x", 2, "COPY takes no URL"),
    ("add-url", "FROM a\nADD https://example.com/x.tar a.txt /", 2, "takes it as the only source"),
    ("add-git", "FROM a\nADD --checksum=sha256:%s git@github.com:moby/moby.git /src" % ("0" * 64),
     2, "not a git repository"),
    ("add-checksum", "FROM a\nADD --checksum=sha256:0 https://x/y /", 2, "not sha256:<64"),
    ("add-checksum-local", "FROM a\nADD --checksum=sha256:0 y /", 2, "for a URL or git source"),
    ("add-from", "FROM a AS b\nFROM c\nADD --from=b x y", 3, "flag --from"),
    ("chmod", "FROM a\nCOPY --chmod=u+q a b", 2, "neither an octal mode nor a symbolic"),
    ("chmod-octal", "FROM a\nCOPY --chmod=789 a b", 2, "not an octal mode"),
    ("chown", "FROM a\nCOPY --chown=a:b:c a b", 2, "--chown=a:b:c"),
    ("flag-on-env", "FROM a\nENV --x=1 A=1", 2, "ENV does not support the flag --x"),
    ("env-no-value", "FROM a\nENV A", 2, "has no value"),
    ("env-pair", "FROM a\nENV A=1 B", 2, "'B' is not name=value"),
    ("label-empty", "FROM a\nLABEL", 2, "LABEL needs at least one name=value"),
    ("arg-empty", "FROM a\nARG", 2, "ARG needs a name"),
    ("workdir-empty", "FROM a\nWORKDIR $NOTHING", 2, "empty after substitution"),
    ("volume-empty", 'FROM a\nVOLUME [""]', 2, "non-empty paths"),
    ("stopsignal", "FROM a\nSTOPSIGNAL SIGNOPE", 2, "is not a signal"),
    ("stopsignal-number", "FROM a\nSTOPSIGNAL 0", 2, "is not a signal"),
    ("health-type", "FROM a\nHEALTHCHECK RUN true", 2, "use CMD or NONE"),
    ("health-none-args", "FROM a\nHEALTHCHECK NONE x", 2, "NONE takes no arguments"),
    ("health-duration", "FROM a\nHEALTHCHECK --interval=5 CMD true", 2, "invalid duration '5'"),
    ("health-short", "FROM a\nHEALTHCHECK --timeout=10us CMD true", 2, "less than 1ms"),
    ("health-retries", "FROM a\nHEALTHCHECK --retries=-1 CMD true", 2, "cannot be negative"),
    ("health-cmd", "FROM a\nHEALTHCHECK CMD", 2, "HEALTHCHECK CMD needs a command"),
    ("onbuild-onbuild", "FROM a\nONBUILD ONBUILD RUN x", 2, "not allowed as an ONBUILD trigger"),
    ("onbuild-from", "FROM a\nONBUILD FROM x", 2, "not allowed as an ONBUILD trigger"),
    ("onbuild-unknown", "FROM a\nONBUILD RUNN x", 2, "is not an instruction"),
    ("escape-directive", "# escape=x\nFROM a", 1, "the escape directive takes"),
    ("directive-twice", "# escape=`\n# ESCAPE=\\\nFROM a", 2, "only one escape parser directive"),
]


@pytest.mark.parametrize("text,line,message", [case[1:] for case in ERRORS],
                         ids=[case[0] for case in ERRORS])
def test_errors_name_the_line_and_the_text(text, line, message):
    error = failure(text)
    assert error.line == line
    assert message in str(error)
    if line is not None:
        assert str(error).startswith("Dockerfile line %d: " % line)
        first = text.split("\n")[line - 1].rstrip("\\ ").strip()
        assert first[:20] in str(error)


EDGES = [
    ("quoted-flag-value", 'FROM a AS base\nFROM b\nCOPY --from="base" --chown=\'1:2\' x y',
     lambda last: (last.args.from_stage, last.args.chown) == (0, "1:2")),
    ("flag-escape", "FROM a\nCOPY --chown=a\\:b x y", lambda last: last.args.chown == "a:b"),
    ("link-false", "FROM a\nCOPY --link=FALSE x y", lambda last: last.args.link is False),
    ("double-dash-ends-flags", "FROM a\nRUN -- --version", lambda last: last.args.command == "--version"),
    ("json-nan-is-shell-form", "FROM a\nCMD [NaN]", lambda last: last.args.shell_form),
    ("unclosed-quote-no-heredoc", 'FROM a\nRUN echo "x <<EOF',
     lambda last: last.args.heredocs == []),
    ("escaped-delimiter", "FROM a\nRUN cat <<\\EOF\n$x\nEOF",
     lambda last: [h.name for h in last.args.heredocs] == ["EOF"]),
    ("workdir-above-root", "FROM a\nWORKDIR /../../x", lambda last: last.args.path == "/x"),
    ("special-parameter", "FROM a\nENV A=[$$][$@]", lambda last: last.args.pairs == [("A", "[][]")]),
    ("target-property", "FROM a AS one\nFROM b AS two\nCMD x",
     lambda last: last.keyword == "CMD"),
]


@pytest.mark.parametrize("text,check", [case[1:] for case in EDGES], ids=[c[0] for c in EDGES])
def test_edge_cases(text, check):
    spec = parse(text)
    assert spec.target is spec.stages[-1]
    assert check(spec.target.instructions[-1])


EDGE_ERRORS = [
    ("FROM a\nCOPY --link=maybe x y", 2, "expecting true or false for flag --link"),
    ("ARG --x=1 A\nFROM a", 1, "ARG does not support the flag --x"),
    ("FROM a\nHEALTHCHECK --retries=many CMD true", 2, "not a whole number"),
    ("FROM a\nARG =1", 2, "not a valid ARG name"),
    ("FROM a\nENV =1", 2, "ENV names must not be empty"),
    ('FROM a\nENV P=""\nEXPOSE $P', 3, "EXPOSE names no port"),
    ("FROM a\nUSER $NOBODY", 2, "USER is empty"),
    ("FROM a\nCOPY --from= x y", 2, "--from is empty"),
    ("FROM a\nRUN <<a/b\n#!/bin/sh\na/b", 2, "cannot name a script file"),
    ("FROM a\nWORKDIR ${ x}", 2, "bad substitution"),
]


@pytest.mark.parametrize("text,line,message", EDGE_ERRORS)
def test_edge_errors(text, line, message):
    error = failure(text)
    assert error.line == line and message in str(error)


def test_build_arg_names_must_be_strings():
    with pytest.raises(InvalidInput):
        parse("FROM a", build_args={1: "x"})


def test_substitute_words_reports_bad_syntax():
    with pytest.raises(InvalidInput):
        substitute_words("${", {})


def test_go_quote_escapes_what_go_escapes():
    assert go_quote("\u200b\U0001F600\u0085") == '"\\u200b\U0001F600\\u0085"'


def test_error_message_names_the_source():
    error = failure("FROM a\nNOPE", source="app/Dockerfile.base")
    assert str(error) == 'app/Dockerfile.base line 2: unknown instruction "NOPE"'
    assert error.details == {"line": 2}


def test_unknown_target():
    error = failure("FROM a AS build\nFROM b AS run", target="test")
    assert "target stage 'test'" in str(error) and "build, run" in str(error)


def test_text_must_be_text():
    with pytest.raises(InvalidInput):
        parse(b"FROM a")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# Substitution
# ---------------------------------------------------------------------------------------

SUBSTITUTIONS = [
    ("$A", "1"), ("${A}", "1"), ("a$A", "a1"), ("$Ab", ""), ("${A}b", "1b"), ("$", "$"),
    ("$ A", "$ A"), ("${A:-x}", "1"), ("${EMPTY:-x}", "x"), ("${EMPTY-x}", ""),
    ("${UNSET-x}", "x"), ("${UNSET:-x}", "x"), ("${A:+y}", "y"), ("${EMPTY:+y}", ""),
    ("${EMPTY+y}", "y"), ("${UNSET+y}", ""), ("${UNSET:-$A$A}", "11"),
    ("${UNSET:-${B:-deep}}", "deep"), ("\\$A", "$A"), ("\\${A}", "${A}"), ("'$A'", "$A"),
    ('"$A"', "1"), ('"\\$A"', "$A"), ('"a\\b"', "a\\b"), ('"a\\"b"', 'a"b'), ("a\\ b", "a b"),
    ("${SPACE}", "a b"), ('"${UNSET:-a b}"', "a b"), ("${A:?must}", "1"), ("$1", ""),
    ("${UNSET:-'q'}", "q"), ("x\\", "x"), ("${A}${A}", "11"), ("$_A", "u"),
]
VARIABLES = {"A": "1", "EMPTY": "", "B": "", "SPACE": "a b", "_A": "u"}


@pytest.mark.parametrize("word,expected", SUBSTITUTIONS)
def test_substitution(word, expected):
    assert substitute(word, VARIABLES) == expected


def test_substitution_with_backtick_escape():
    assert substitute("`$A\\x", VARIABLES, escape="`") == "$A\\x"


def test_words_split_expansions_not_quotes():
    assert substitute_words('$SPACE "$SPACE" c', VARIABLES) == ["a", "b", "a b", "c"]


@pytest.mark.parametrize("word", ["${", "${}", "${:x}", "${A", "${A:-x", "'open", '"open',
                                  "${UNSET:?}", "${EMPTY:?}", "${A%\\x}",
                                  "${A/x", "${A/x/y"])
def test_bad_substitution_syntax(word):
    with pytest.raises(InvalidInput):
        substitute(word, VARIABLES)


NAMES = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,12}\Z")
PLAIN = st.text(st.characters(blacklist_characters="$\\'\"", blacklist_categories=("Cs",)),
                max_size=40)
DEFAULTS = st.text(st.characters(blacklist_characters="$\\'\"}", blacklist_categories=("Cs",)),
                   max_size=20)
VALUES = st.one_of(st.none(), st.text(st.characters(blacklist_categories=("Cs",)), max_size=20))


@given(PLAIN)
def test_text_without_dollars_quotes_or_escapes_is_unchanged(text):
    assert substitute(text, VARIABLES) == text


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_escaping_every_character_keeps_it_literally(text):
    assert substitute("".join("\\" + char for char in text), VARIABLES) == text


@given(NAMES, VALUES, DEFAULTS)
def test_default_and_alternative_forms(name, value, word):
    env = {} if value is None else {name: value}
    assert substitute("${%s:-%s}" % (name, word), env) == (value if value else word)
    assert substitute("${%s-%s}" % (name, word), env) == (word if value is None else value)
    assert substitute("${%s:+%s}" % (name, word), env) == (word if value else "")
    assert substitute("${%s+%s}" % (name, word), env) == ("" if value is None else word)
    assert substitute("${%s}" % name, env) == (value or "")


@given(NAMES, VALUES)
def test_escaped_dollars_stay(name, value):
    env = {} if value is None else {name: value}
    assert substitute("\\$%s" % name, env) == "$" + name
    assert substitute("\\${%s}" % name, env) == "${%s}" % name


# ---------------------------------------------------------------------------------------
# Reading: directives, comments, continuations
# ---------------------------------------------------------------------------------------

def test_escape_directive_backtick_bom_and_crlf():
    text = "\ufeff# escape=`\r\nFROM scratch\r\nRUN dir c:\\ `\r\n  # a comment\r\n\r\n" \
           "  && echo `$HOME\r\nENV A=x`$y\r\n"
    steps = parse(text).stages[0].instructions
    assert [(i.line, i.keyword) for i in steps] == [(3, "RUN"), (7, "ENV")]
    assert steps[0].args.command == "dir c:\\   && echo `$HOME"
    assert steps[1].args == Env([("A", "x$y")])
    assert parse(text).escape == "`"


def test_syntax_directive_ignored_and_directives_only_at_top():
    spec = parse("# syntax=docker/dockerfile:1\n# check=skip=all\n\n# escape=`\nFROM a\n"
                 "RUN a \\\n b")
    assert spec.escape == "\\"
    assert spec.stages[0].instructions[0].args.command == "a  b"


def test_continuations_skip_comments_and_blank_lines():
    text = "FROM a\nRUN apt-get update && \\\n# why\n\n    apt-get install -y x \\\n  && rm -rf y\n" \
           "RUN next"
    steps = parse(text).stages[0].instructions
    assert steps[0].args.command == "apt-get update &&     apt-get install -y x   && rm -rf y"
    assert [(i.line, i.original.split()[0]) for i in steps] == [(2, "RUN"), (7, "RUN")]


def test_escaped_escape_at_end_is_not_a_continuation():
    steps = parse("FROM a\nRUN echo a\\\\\nRUN echo b \\\\\\\nENV X=1").stages[0].instructions
    assert [i.keyword for i in steps] == ["RUN", "RUN", "ENV"]


def test_comment_marks_only_at_line_start():
    assert step("RUN echo # not a comment").args.command == "echo # not a comment"


GAPS = [" ", "  ", "\t", " \\\n", " \\\n  ", "\\\n ", " \\\n# note\n  ", " \\\n\n  ",
        "\t\\  \n\t", " \\\n \\\n "]
# a first word starting with "--" is a RUN flag (as in Docker), not a command word
WORDS = st.lists(st.from_regex(r"\A[a-z0-9][a-z0-9&|;./=-]{0,7}\Z"), min_size=1, max_size=8)


@settings(max_examples=200)
@given(WORDS, st.data())
def test_where_a_line_breaks_within_whitespace_does_not_matter(words, data):
    pieces = [words[0]]
    for word in words[1:]:
        pieces += [data.draw(st.sampled_from(GAPS)), word]
    text = "FROM scratch\nRUN " + "".join(pieces) + "\nENV DONE=1\n"
    run_step, env_step = parse(text).stages[0].instructions
    assert run_step.args.command.split() == words
    assert run_step.line == 2
    assert env_step.line == text.count("\n")


@given(st.lists(st.tuples(NAMES, st.from_regex(r"\A[a-z0-9]{0,6}\Z")), min_size=1, max_size=5),
       st.data())
def test_env_pairs_do_not_depend_on_line_breaks(pairs, data):
    gaps = [data.draw(st.sampled_from(GAPS)) for pair in pairs]
    text = "FROM scratch\nENV" + "".join(gap + "%s=%s" % pair for gap, pair in zip(gaps, pairs))
    text = text.replace("ENV\\\n", "ENV \\\n")
    assert step(text.split("\n", 1)[1]).args == Env(list(pairs))


# ---------------------------------------------------------------------------------------
# Stages, ARG and ENV scoping, base images
# ---------------------------------------------------------------------------------------

def test_global_args_are_seen_by_from_lines_only():
    spec = parse("ARG TAG=1.36\nARG IMG=busybox:$TAG\nFROM $IMG AS base\nRUN echo\n"
                 "ENV SEEN=[$TAG]\nARG TAG\nENV NOW=[$TAG]")
    stage = spec.stages[0]
    assert stage.base == "busybox:1.36" and spec.global_args == {"TAG": "1.36",
                                                                 "IMG": "busybox:1.36"}
    assert stage.instructions[1].args == Env([("SEEN", "[]")])
    assert stage.instructions[3].args == Env([("NOW", "[1.36]")])


def test_build_args_override_defaults_and_are_not_substituted():
    spec = parse("ARG V=1\nFROM x:$V\nARG V\nARG W=2\nARG NONE\nRUN make",
                 build_args={"V": "$9", "W": 3, "EXTRA": True, "IGNORED": None})
    stage = spec.stages[0]
    assert stage.base == "x:$9"
    assert stage.instructions[-1].state.args == {"V": "$9", "W": "3", "NONE": None}
    assert stage.instructions[-1].created_by == "|2 V=$9 W=3 /bin/sh -c make"
    assert spec.unused_build_args == ["EXTRA"]


def test_arg_without_value_is_unset_not_empty():
    assert step("ARG X\nENV A=${X-unset}+${X:-empty}").args == Env([("A", "unset+empty")])
    assert step("ARG X=\nENV A=${X-unset}+${X:-empty}").args == Env([("A", "+empty")])


def test_the_later_of_env_and_arg_wins():
    # BuildKit keeps one environment: ENV over an earlier ARG, ARG over an earlier ENV
    spec = parse("FROM scratch\nARG V=arg\nENV V=env\nRUN one\nARG V=again\nRUN two\n"
                 "ARG V\nENV W=$V\nENV V=last\nRUN three")
    steps = spec.stages[0].instructions
    one, two, env_w, three = steps[2], steps[4], steps[6], steps[8]
    assert one.state.variables()["V"] == "env" and one.created_by == "/bin/sh -c one"
    assert two.state.run_env()["V"] == "again" and two.created_by == "|1 V=again /bin/sh -c two"
    assert env_w.args == Env([("W", "again")])  # ARG V without a value changes nothing
    assert three.state.run_env()["V"] == "last" and three.created_by == "/bin/sh -c three"
    config = {"config": {}}
    for item in spec.stages[0].instructions:
        config = apply_config(config, item)
    assert config["config"]["Env"] == ["V=last", "W=again"]


def test_scratch_has_the_default_path_for_substitution():
    last = step("ENV PATH=/opt/bin:$PATH")
    assert last.args == Env([("PATH", "/opt/bin:" + DEFAULT_PATH)])
    assert parse("FROM scratch\nENV P=$PATH", base_config=lambda ref: {}).stages[0] \
        .instructions[0].args == Env([("P", DEFAULT_PATH)])
    image = parse("FROM img\nENV P=$PATH", base_config=lambda ref: {"Env": ["A=1"]})
    assert image.stages[0].instructions[0].args == Env([("P", DEFAULT_PATH)])


def test_platform_args_are_predefined_before_from():
    spec = parse("FROM --platform=$BUILDPLATFORM busybox\nARG TARGETOS TARGETARCH\n"
                 "ENV P=$TARGETOS/$TARGETARCH")
    stage = spec.stages[0]
    assert stage.platform and stage.platform.startswith("linux/")
    assert stage.instructions[-1].args.pairs[0][1] == stage.platform
    assert spec.global_args == {}


def test_base_config_gives_env_workdir_user_and_shell():
    calls = []

    def base_config(reference):
        calls.append(reference)
        return {"Env": ["PATH=/usr/bin:/bin", "HOME=/root"], "WorkingDir": "/srv",
                "User": "app", "Shell": ["/bin/bash", "-c"]}

    spec = parse("FROM scratch AS a\nFROM img:1 AS b\nENV PATH=/opt/bin:$PATH\nWORKDIR data\n"
                 "COPY x y\nRUN make\nFROM b\nRUN again", base_config=base_config)
    assert calls == ["img:1"]
    assert spec.stages[0].start.env == {"PATH": DEFAULT_PATH}
    b_stage = spec.stages[1]
    assert b_stage.instructions[0].args == Env([("PATH", "/opt/bin:/usr/bin:/bin")])
    assert b_stage.instructions[1].args == Workdir("/srv/data")
    assert b_stage.instructions[2].args.dest_path == "/srv/data/y"
    run_step = b_stage.instructions[3]
    assert run_step.created_by == "/bin/bash -c make"
    assert run_step.state.user == "app" and run_step.state.workdir == "/srv/data"
    assert run_step.state.run_env() == {"PATH": "/opt/bin:/usr/bin:/bin", "HOME": "/root"}
    child = spec.stages[2]
    assert child.base_stage == 1 and child.instructions[0].state.workdir == "/srv/data"


def test_run_env_has_a_default_path_and_the_args():
    last = step("ARG A=1\nRUN env")
    assert last.state.run_env() == {"A": "1", "PATH": DEFAULT_PATH}


def test_stage_from_stage_keeps_env_and_args():
    # BuildKit: a stage built on another inherits its ARG values too
    spec = parse("FROM scratch AS one\nARG A=1\nENV E=2\nFROM one\nRUN x\nENV F=$A")
    state = spec.stages[1].instructions[0].state
    assert state.env == {"E": "2", "PATH": DEFAULT_PATH} and state.args == {"A": "1"}
    assert state.run_env()["A"] == "1" and spec.stages[1].instructions[0].created_by == \
        "|1 A=1 /bin/sh -c x"
    assert spec.stages[1].instructions[1].args == Env([("F", "1")])


def test_stages_by_name_and_index_and_needed_stages():
    spec = parse("FROM alpine AS Build\nRUN make\nFROM scratch AS tools\n"
                 "FROM build AS test\nCOPY --from=tools /t /t\nFROM debian AS unused\n"
                 "FROM scratch\nCOPY --from=0 /out /out\nCOPY --from=TEST /r /r")
    assert [(s.index, s.name, s.base, s.base_stage) for s in spec.stages] == [
        (0, "build", "alpine", None), (1, "tools", "scratch", None),
        (2, "test", "build", 0), (3, "unused", "debian", None), (4, None, "scratch", None)]
    assert spec.target_index == 4
    assert [s.index for s in spec.needed_stages()] == [0, 1, 2, 4]
    assert [s.index for s in parse(
        "FROM alpine AS Build\nFROM scratch AS tools\nFROM build AS test\nCOPY --from=tools a b",
        target="TEST").needed_stages()] == [0, 1, 2]
    assert spec.stages[4].instructions[1].args.from_stage == 2


def test_entrypoint_clears_cmd_only_without_cmd_in_the_stage():
    spec = parse("FROM a AS one\nCMD x\nFROM one\nENTRYPOINT y")
    assert spec.stages[1].instructions[0].args.clears_cmd


def test_arg_values_see_earlier_args_on_the_same_line():
    assert step('ARG A=1 B=$A C="${A}x"').args == Arg([("A", "1"), ("B", "1"), ("C", "1x")])


# ---------------------------------------------------------------------------------------
# The image config an instruction leaves behind
# ---------------------------------------------------------------------------------------

def test_apply_config_builds_the_docker_config():
    spec = parse("FROM scratch\nENV A=1 PATH=/x\nENV A=2\nLABEL l=v\nCMD c\nENTRYPOINT [\"e\"]\n"
                 "WORKDIR /w\nUSER u\nEXPOSE 80 53/udp\nVOLUME /v\nSTOPSIGNAL SIGINT\n"
                 'SHELL ["/bin/bash", "-c"]\nHEALTHCHECK --interval=30s CMD true\n'
                 "ONBUILD RUN x\nMAINTAINER me\nRUN make\nCOPY a b\nARG Z=1")
    image = {"config": {"Env": ["PATH=/usr/bin", "HOME=/"], "Cmd": ["base"]}, "author": ""}
    for instruction in spec.stages[0].instructions:
        image = apply_config(image, instruction)
    assert image == {"author": "me", "config": {
        "Env": ["PATH=/x", "HOME=/", "A=2"], "Labels": {"l": "v"},
        "Cmd": ["/bin/sh", "-c", "c"], "Entrypoint": ["e"], "WorkingDir": "/w", "User": "u",
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}}, "Volumes": {"/v": {}},
        "StopSignal": "SIGINT", "Shell": ["/bin/bash", "-c"],
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 30 * 10 ** 9},
        "OnBuild": ["RUN x"]}}


def test_entrypoint_without_cmd_drops_the_base_cmd():
    image = apply_config({"config": {"Cmd": ["base"]}}, step('ENTRYPOINT ["e"]'))
    assert image["config"] == {"Cmd": None, "Entrypoint": ["e"]}
    untouched = {"config": {"Cmd": ["base"]}}
    apply_config(untouched, step('ENTRYPOINT ["e"]'))
    assert untouched == {"config": {"Cmd": ["base"]}}


# ---------------------------------------------------------------------------------------
# The YAML form and its schema
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def validator():
    with open(SCHEMA_PATH, encoding="utf-8") as handle:
        schema = json.load(handle)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_schema_lists_every_instruction(validator):
    assert set(validator.schema["$defs"]["instruction"]["properties"]) == set(KEYWORDS)


EQUIVALENT = [
    ([{"ARG": "TAG=1"}, {"FROM": "busybox:$TAG AS base"}], "ARG TAG=1\nFROM busybox:$TAG AS base"),
    ([{"ARG": {"TAG": 1, "NONE": None}}, {"FROM": {"image": "b:$TAG", "as": "x",
                                                   "platform": "linux/amd64"}}],
     "ARG TAG=1 NONE\nFROM --platform=linux/amd64 b:$TAG AS x"),
    ([{"FROM": "scratch"}, {"RUN": "make /app"}, {"RUN": ["echo", "hi"]}],
     'FROM scratch\nRUN make /app\nRUN ["echo", "hi"]'),
    ([{"FROM": "scratch"}, {"RUN": "set -e\necho a\necho b\n"}],
     "FROM scratch\nRUN <<EOF\nset -e\necho a\necho b\nEOF"),
    ([{"FROM": "scratch"}, {"RUN": "apt-get update && \\\n  apt-get install x"}],
     "FROM scratch\nRUN apt-get update && \\\n  apt-get install x"),
    ([{"FROM": "scratch"}, {"RUN": "cat <<EOF > /f\nhi\nEOF"}],
     "FROM scratch\nRUN cat <<EOF > /f\nhi\nEOF"),
    ([{"FROM": "scratch"}, {"CMD": ["/bin/sh", "-c", "/app/hello.sh"]}, {"ENTRYPOINT": "top"},
      {"SHELL": ["/bin/bash", "-c"]}],
     'FROM scratch\nCMD ["/bin/sh", "-c", "/app/hello.sh"]\nENTRYPOINT top\n'
     'SHELL ["/bin/bash", "-c"]'),
    ([{"FROM": "scratch AS a"}, {"FROM": "scratch"},
      {"COPY": {"src": ["a b", "c"], "dest": "/d/", "from": "a", "chown": "1:2", "chmod": "644",
                "link": True}},
      {"COPY": {"src": "x", "dest": "/x", "from": 0}}, {"COPY": ". /app"},
      {"COPY": ["f", "/g"]}, {"ADD": {"src": "r.tar", "dest": "/"}}],
     'FROM scratch AS a\nFROM scratch\nCOPY --from=a --chown=1:2 --chmod=644 --link '
     '["a b", "c", "/d/"]\nCOPY --from=0 x /x\nCOPY . /app\nCOPY ["f", "/g"]\nADD r.tar /'),
    ([{"FROM": "scratch"}, {"COPY": {"content": "x=$X\n", "dest": "/etc/x"}}],
     "FROM scratch\nCOPY <<'EOF' /etc/x\nx=$X\nEOF"),
    ([{"FROM": "scratch"}, {"COPY": {"src": "app/*.c", "dest": "/p/", "parents": True,
                                     "exclude": ["*.md", "t*"], "chmod": "u+x,go-w"}},
      {"ADD": {"src": "a", "dest": "/a", "exclude": "b"}}],
     "FROM scratch\nCOPY --chmod=u+x,go-w --parents --exclude=*.md --exclude=t* "
     '["app/*.c", "/p/"]\nADD --exclude=b ["a", "/a"]'),
    ([{"FROM": "scratch"}, {"ENV": {"PATH": "/x:$PATH", "Q": 'say "hi" \\o/', "N": 5}},
      {"ENV": "A=1 B=2"}, {"LABEL": {"org.label": "a b", "flag": True}}],
     'FROM scratch\nENV PATH=/x:$PATH Q="say \\"hi\\" \\\\o/" N=5\nENV A=1 B=2\n'
     'LABEL org.label="a b" flag=true'),
    ([{"FROM": "scratch"}, {"WORKDIR": "/w"}, {"USER": 1000}, {"EXPOSE": [80, "53/udp"]},
      {"EXPOSE": 8080}, {"VOLUME": ["/v", "/w x"]}, {"VOLUME": "/a /b"}, {"STOPSIGNAL": 15},
      {"ONBUILD": "RUN make"}, {"MAINTAINER": "me"}],
     'FROM scratch\nWORKDIR /w\nUSER 1000\nEXPOSE 80 53/udp\nEXPOSE 8080\n'
     'VOLUME ["/v", "/w x"]\nVOLUME /a /b\nSTOPSIGNAL 15\nONBUILD RUN make\nMAINTAINER me'),
    ([{"FROM": "scratch"}, {"HEALTHCHECK": {"cmd": "curl -f http://x/", "interval": "30s",
                                            "start_period": "1m", "retries": 3}},
      {"HEALTHCHECK": {"cmd": ["check"]}}, {"HEALTHCHECK": "NONE"}],
     'FROM scratch\nHEALTHCHECK --interval=30s --start-period=1m --retries=3 CMD curl -f '
     'http://x/\nHEALTHCHECK CMD ["check"]\nHEALTHCHECK NONE'),
]


def summary(spec):
    return [(stage.name, stage.base, stage.base_stage, stage.platform,
             [(i.keyword, i.args, i.created_by, i.state) for i in stage.instructions])
            for stage in spec.stages], spec.global_args, spec.target_index


@pytest.mark.parametrize("items,text", EQUIVALENT)
def test_yaml_items_give_the_spec_of_the_equivalent_dockerfile(items, text, validator):
    assert not list(validator.iter_errors(items))
    from_yaml = from_instructions(items, build_args={"X": "1"})
    assert summary(from_yaml) == summary(parse(text, build_args={"X": "1"}))
    assert [i.line for s in from_yaml.stages for i in s.instructions] == \
        [n for n, item in enumerate(items, 1) if "FROM" not in item and
         not (from_yaml.stages and "ARG" in item and n < from_yaml.stages[0].line)]


def test_yaml_covers_every_instruction():
    used = {key for case in EQUIVALENT for item in case[0] for key in item}
    assert used == set(KEYWORDS)


SCHEMA_INVALID = [
    [], [{"FROM": "a", "RUN": "b"}], [{"RUNN": "x"}], [{"run": "x"}], [{"FROM": ""}],
    [{"RUN": 5}], [{"RUN": []}], [{"SHELL": "/bin/sh -c"}], [{"CMD": "a\nb"}],
    [{"COPY": {"src": "a"}}], [{"COPY": {"src": "a", "content": "b", "dest": "/c"}}],
    [{"COPY": {"dest": "/c"}}], [{"ADD": {"src": "a", "dest": "/b", "from": "x"}}],
    [{"COPY": {"src": "a", "dest": "/b", "chmod": "u+q"}}], [{"COPY": ["only-one"]}],
    [{"ENV": {"A B": "x"}}], [{"ENV": {"A": "x\ny"}}], [{"ENV": {"A": None}}],
    [{"EXPOSE": 70000}], [{"EXPOSE": []}], [{"HEALTHCHECK": {"interval": "30s"}}],
    [{"HEALTHCHECK": {"cmd": "x", "interval": "5"}}], [{"HEALTHCHECK": {"cmd": "x", "retries": -1}}],
    [{"FROM": {"image": "a b"}}], [{"FROM": {"image": "a", "as": "1x"}}], [{"WORKDIR": ["/a"]}],
]


@pytest.mark.parametrize("items", SCHEMA_INVALID)
def test_schema_refuses(items, validator):
    assert list(validator.iter_errors(items))


YAML_ERRORS = [
    ([{"FROM": "a"}, "RUN x"], 2, "each item is a mapping with one key"),
    ([{"FROM": "a"}, {"RUN": "a", "CMD": "b"}], 2, "each item is a mapping with one key"),
    ([{"FROM": "a"}, {"COPYY": "a b"}], 2, 'unknown instruction "COPYY" (did you mean COPY?)'),
    ([{"FROM": "a"}, {"RUN": 5}], 2, "RUN takes a string"),
    ([{"FROM": "a"}, {"WORKDIR": ["/a"]}], 2, "WORKDIR does not take a list"),
    ([{"FROM": "a"}, {"RUN": {"x": 1}}], 2, "RUN does not take a mapping"),
    ([{"FROM": "a"}, {"ENV": "A=1\nRUN x"}], 2, "holds 2 instructions"),
    ([{"FROM": "a"}, {"ENV": {"A": "x\ny"}}], 2, "spans lines"),
    ([{"FROM": "a"}, {"ENV": {"A": None}}], 2, "strings or numbers"),
    ([{"FROM": "a"}, {"ENV": "A=${"}], 2, "missing '}'"),
    ([{"FROM": "a"}, {"COPY": {"src": "a"}}], 2, "COPY needs dest"),
    ([{"FROM": "a"}, {"COPY": {"dest": "/a"}}], 2, "either src (paths) or content"),
    ([{"FROM": "a"}, {"ADD": {"src": "a", "dest": "/b", "from": "x"}}], 2, "ADD does not take from"),
    ([{"FROM": "a"}, {"COPY": "https://example.com/a /a"}], 2, "COPY takes no URL"),
    ([{"FROM": "a"}, {"FROM": {"image": "a b"}}], 2, "image must be one word"),
    ([{"FROM": "a"}, {"HEALTHCHECK": {"cmd": 5}}], 2, "HEALTHCHECK needs cmd"),
    ([{"RUN": "x"}], 1, "RUN before the first FROM"),
    ([], None, "instructions holds no instructions"),
]


@pytest.mark.parametrize("items,line,message", YAML_ERRORS)
def test_yaml_errors_name_the_item(items, line, message):
    with pytest.raises(InvalidInput) as info:
        from_instructions(items)
    assert info.value.line == line and message in str(info.value)
    if line is not None:
        assert str(info.value).startswith("instructions item %d" % line)


def test_yaml_script_delimiter_avoids_the_script_lines():
    spec = from_instructions([{"FROM": "a"}, {"RUN": "cat <<X\nEOF\nX\n"}, {"RUN": "echo\nEOF"}])
    assert spec.stages[0].instructions[1].args.heredocs[0].name == "EOF_"


@pytest.mark.parametrize("item,message", [
    ({"ENV": {}}, "ENV needs at least one name"), ({"ENV": {"A=B": "x"}}, "must not contain '='"),
    ({"RUN": ["a", 1]}, "must hold strings only"), ({"COPY": {"src": [], "dest": "/x"}}, "src must be"),
    ({"EXPOSE": [{"port": 1}]}, "strings or numbers")])
def test_yaml_value_errors(item, message):
    with pytest.raises(InvalidInput) as info:
        from_instructions([{"FROM": "a"}, item])
    assert info.value.line == 2 and message in str(info.value)


def test_apply_config_starts_a_missing_config():
    assert apply_config({"config": None}, step("USER u")) == {"config": {"User": "u"}}


def test_yaml_needs_a_list():
    with pytest.raises(InvalidInput):
        from_instructions({"FROM": "a"})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# .dockerignore
# ---------------------------------------------------------------------------------------

IGNORES = [
    ("*.md", "README.md", True), ("*.md", "docs/a.md", False), ("**/*.md", "docs/a.md", True),
    ("**/*.md", "a.md", True), ("docs", "docs/a/b.txt", True), ("docs", "docsx", False),
    ("docs/**", "docs/a", True), ("docs/**", "docs", False), ("a/**/b", "a/b", True),
    ("a/**/b", "a/x/y/b", True), ("a/**/b", "a/xb", False), ("**", "any/thing", True),
    ("/build", "build/x", True), ("./build/", "build/x", True), ("x/../build", "build", True),
    ("  spaced  ", "spaced", True), ("# comment", "# comment", False),
    (" # pattern", "# pattern", True), ("a?c", "abc", True), ("a?c", "a/c", False),
    ("[a-c]x", "bx", True), ("[a-c]x", "dx", False), ("[^a]x", "bx", True),
    ("[^a]x", "ax", False), ("a\\*b", "a*b", True), ("a\\*b", "axb", False),
    ("f.o", "fxo", False), ("a+b(c)", "a+b(c)", True), ("*\n!keep.md", "keep.md", False),
    ("*\n!keep.md", "other", True), ("*.md\n!README.md\nREADME.md", "README.md", True),
    ("dir\n!dir/keep", "dir/keep", False), ("dir\n!dir/keep", "dir/other", True),
    ("!x\nx", "x", True), (".git", ".git/HEAD", True), ("", "anything", False),
    ("\ufeff*.tmp\r\n", "a.tmp", True),
]


@pytest.mark.parametrize("patterns,path,ignored", IGNORES)
def test_dockerignore(patterns, path, ignored):
    assert DockerIgnore(patterns).matches(path) is ignored


@pytest.mark.parametrize("patterns,line", [("a\n!", 2), ("ok\n\n[z", 3)])
def test_dockerignore_refuses_bad_patterns(patterns, line):
    with pytest.raises(InvalidInput) as info:
        DockerIgnore(patterns)
    assert info.value.line == line and ".dockerignore line %d" % line in str(info.value)


def test_dockerignore_tells_when_to_walk_into_an_ignored_directory():
    ignore = DockerIgnore("node_modules\n!node_modules/keep\nbuild\n!**/*.keep")
    assert ignore.has_exceptions
    assert ignore.may_reinclude("node_modules") and ignore.may_reinclude("build")
    assert not DockerIgnore("build\n!src/x").may_reinclude("build")
    assert not DockerIgnore("build").has_exceptions


SEGMENTS = st.lists(st.from_regex(r"\A[a-z0-9_.-]{1,6}\Z").filter(lambda s: s not in (".", "..")),
                    min_size=1, max_size=4)


@given(SEGMENTS, st.integers(min_value=1, max_value=4))
def test_a_directory_pattern_ignores_everything_below_it(segments, depth):
    path = "/".join(segments)
    directory = "/".join(segments[:depth])
    ignore = DockerIgnore(directory)
    assert ignore.matches(path)
    assert not DockerIgnore(directory + "\n!" + path).matches(path)
    assert DockerIgnore("!" + path + "\n" + directory).matches(path)


# ---------------------------------------------------------------------------------------
# Robustness: whatever the text, a Spec or InvalidInput, nothing else
# ---------------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from(list(KEYWORDS) + [
    "FROM scratch", "FROM a AS b", " ", "\n", "\\\n", "\\", "`", "$", "${", "}", ":-", "<<",
    "<<-", "EOF", '"', "'", "[", "]", ",", "--from=", "--chown=", "=", "#", "# escape=`",
    "\t", "\r", "0", "/", "*", "-", "x", '["a"]', "1-2/tcp"])


@settings(max_examples=300, deadline=None)
@given(st.lists(FRAGMENTS, max_size=40).map("".join))
def test_any_text_gives_a_spec_or_invalid_input(text):
    for candidate in (text, "FROM scratch AS b\n" + text):
        try:
            parse(candidate, base_config=lambda reference: {"Env": ["A=1"]})
        except InvalidInput:
            pass
    try:
        DockerIgnore(text).matches("a/b")
    except InvalidInput:
        pass


@given(st.lists(SEGMENTS.map("/".join), min_size=1, max_size=8),
       st.lists(st.sampled_from(["a*", "**/b", "!a/b", "c", "!**/c", "[a-c]?", "*/*"]), max_size=5))
def test_a_reused_matcher_answers_like_a_fresh_one(paths, patterns):
    text = "\n".join(patterns)
    shared = DockerIgnore(text)
    assert [shared.matches(path) for path in paths] == \
        [DockerIgnore(text).matches(path) for path in paths]


PATTERN_PIECES = st.sampled_from(["*", "**", "**/", "?", "a", "b", "/", "[ab]", "[^a]", "\\*",
                                  "."])
PATH_CHARS = st.text(st.sampled_from("ab/.*x\n"), max_size=14)


@settings(max_examples=200, deadline=None)
@given(st.lists(PATTERN_PIECES, min_size=1, max_size=8).map("".join), PATH_CHARS)
@example(pattern="***", path="\n/")          # found by a newer hypothesis: "**" stops at \n
@example(pattern="**/a", path="x\ny/a")
def test_the_linear_matcher_agrees_with_dockers_regex(pattern, path):
    # the automaton must answer exactly as the regular expression Docker builds
    import re as regex_module
    from ansible_collections.strata.layers.plugins.module_utils import _dockerfile as module
    try:
        expected = bool(regex_module.match(module._ignore_regex(pattern), path))
    except regex_module.error:
        return
    tokens = module._ignore_tokens(pattern)
    assert module._PathAutomaton(tokens).match(path) == expected
    assert bool(module._ignore_matcher(pattern).match(path)) == expected


def test_repeated_double_stars_match_in_linear_steps():
    # 60 "**/" and a 28-deep path: backtracking would never end; the automaton takes
    # one step per character (issue 18's hostile .dockerignore line)
    from ansible_collections.strata.layers.plugins.module_utils import _dockerfile as module
    ignore = DockerIgnore("**/" * 60 + "x/**/y/**/z/**/never\n" + "a*a*a*a*a*a*a*a*b\n")
    deep = "/".join(["x", "y", "z"] * 9 + ["file"])
    assert not ignore.matches(deep)
    assert not ignore.matches("a" * 4000)
    automata = [p.regex for p in ignore.patterns if isinstance(p.regex, module._PathAutomaton)]
    assert len(automata) == 2
    # a DFA state per distinct set of pattern positions, never one per way to match
    assert all(len(automaton.sets) <= 200 for automaton in automata)
    assert DockerIgnore("**/" * 60 + "x/**/file\n").matches(deep)
