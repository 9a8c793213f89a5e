#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: image_build
short_description: Build an image from a Dockerfile-like spec, with a build cache
version_added: 0.1.0
description:
  - Builds an image in the store at O(data_root) from a Dockerfile in O(context), an inline
    O(spec), or the same spec as YAML O(instructions) (validated on the controller against
    the collection's JSON schema).
  - Every filesystem-changing instruction (C(RUN), C(COPY), C(ADD), and C(WORKDIR) when
    its directory is missing, as BuildKit creates it) makes a layer; the others change the
    config only and leave an C(empty_layer) history entry, as C(docker history) shows.
  - The Dockerfile is read as BuildKit reads it (its own parser test files pass) -
    C(${VAR#p}), C(${VAR%p}), C(${VAR/a/b}) and the other variable forms, C(COPY --parents),
    C(--exclude), symbolic C(--chmod=u+x), heredocs in C(ONBUILD), ARGs inherited by a stage
    built C(FROM) another, the later of C(ENV) and C(ARG) winning, a default C(PATH) in
    every stage; the Dockerfile and C(.dockerignore) are resolved inside the context (a
    symlink out of it means the context's own path), read only when regular files of at
    most 8 MiB, and must be UTF-8.
  - C(RUN) executes in the build container's root filesystem, isolated as container
    runtimes do it - new mount, PID, UTS and IPC namespaces (and network, see O(network)),
    C(pivot_root) into the container (the host's filesystem is unmounted from the step's
    view), a fresh C(/proc) with Docker's masked and read-only paths, a minimal C(/dev),
    device nodes elsewhere in the image not openable, and a capability bounding set of
    Docker's defaults without C(CAP_MKNOD) - as the stage's C(USER) (with the
    supplementary groups the image's C(/etc/group) gives it), in its C(WORKDIR), with its
    C(ENV). A failing step reports its exit code and last output lines and leaves no build
    container, partial layer or tag; a command not found in the image exits 127. The steps
    that completed before it stay as (untagged) cache images, as with C(docker build), so
    the next run resumes from there; C(strata.layers.store_prune) removes them.
  - A step is reused from the build cache when its parent image, its instruction after
    substitution and, for C(COPY)/C(ADD), the content, modes and ownership of its sources
    are unchanged. A re-run with nothing changed gives the same image id and C(changed=false).
  - Base images come from the store (import, pull or build them first).
  - "C(ADD) of a URL (C(http://), C(https://)) downloads the file (never extracted), mode
    0600 unless C(--chmod), its mtime from C(Last-Modified); C(--checksum=sha256:...) is
    checked. The step is cached by the checksum (no request at all), else by a
    conditional request on the ETag/Last-Modified seen last time. C(ADD) of a git
    repository (C(git://), C(ssh://), C(git@), or an C(http(s)) URL ending in C(.git);
    C(#ref[:subdir])) resolves the ref with the host's C(git), caches by commit, and copies
    the tree without C(.git) unless C(--keep-git-dir). Redirects from https to http are
    refused."
  - "C(RUN --mount) as BuildKit: C(type=cache) (a directory kept in the store per C(id),
    default the target, across builds; C(sharing=shared|private|locked), C(uid), C(gid),
    C(mode); never in a layer; removed by M(strata.layers.store_prune) with
    C(build_cache=true)), C(type=bind) (C(source) from the context, or C(from) a stage or
    image; read-only unless C(rw), whose writes are discarded; from the context it shows
    what C(.dockerignore) keeps, through a copy when that file excludes anything),
    C(type=tmpfs),
    C(type=secret) (see O(secrets)), C(type=ssh) (see O(ssh)). Mount points the step
    needed are removed afterwards, so they stay out of the layer. An unknown type or key
    fails with the line, before anything is built."
  - "A C(RUN) step's environment is Docker's: C(HOSTNAME), C(HOME) from the user's passwd
    entry (C(/root) for root), the default C(PATH) when the image sets none, and the
    user's supplementary groups with its primary group (C(id) prints C(groups=0(root))).
    Its whole output goes to a file C(strata-run-ID-*.log) (mode 0600) in the host's
    temporary directory, never the store; a failing step's message holds the last lines
    and names that file (a successful step's is removed). Only the last 256 KiB are
    kept in memory."
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.attributes.action_plugin
  - strata.layers.store
attributes:
  action:
    details: Validates O(instructions) against the JSON schema on the controller.
  check_mode:
    details: Reports which steps would run (C(cached) in RV(history)); builds nothing.
options:
  context:
    description: The build context directory on the managed host (C(.dockerignore) in it applies).
    type: path
  dockerfile:
    description: The Dockerfile, relative to O(context).
    type: str
    default: Dockerfile
  spec:
    description: Inline Dockerfile text, instead of O(dockerfile).
    type: str
  instructions:
    description:
      - "The spec as YAML, one C({INSTRUCTION: value}) item a step, instead of O(dockerfile)."
      - Validated against C(schemas/image_build.instructions.json) on the controller.
    type: list
    elements: raw
  tag:
    description: Tags (C(NAME[:TAG])) for the result, set once the whole build succeeded.
    type: list
    elements: str
    default: []
  build_args:
    description: Values for C(ARG).
    type: dict
    default: {}
  target:
    description: The stage to build in a multi-stage spec (its name or index); the last by default.
    type: str
  no_cache:
    description: Rebuild every step.
    type: bool
    default: false
  network:
    description:
      - The network of C(RUN) steps that do not say C(--network). V(host) (or V(default)) is
        the build host's network, as Docker's and buildah's builders give C(RUN) network
        access (with the host's C(/etc/resolv.conf) and an C(/etc/hosts) naming localhost
        and the step's hostname, both kept out of the layer); V(none) gives each step its
        own network namespace with only C(lo).
      - Not part of the build cache key, as in BuildKit.
    type: str
    choices: [host, default, none]
    default: host
  secrets:
    description:
      - "Secrets for C(RUN --mount=type=secret,id=ID): C({ID: {src: PATH}}) (a file on the
        managed host) or C({ID: {env: NAME}}) (an environment variable of the module)."
      - A secret is mounted from memory at C(/run/secrets/ID) (or C(target)) and/or put in
        the variable C(env); it is never written to the store, a layer, the history or the
        cache key. A step asking for an ID not given here fails, unless it says
        C(required=false).
    type: dict
    default: {}
  ssh:
    description:
      - The SSH agent socket (a path on the managed host) C(RUN --mount=type=ssh) mounts
        (only the id C(default)); C(SSH_AUTH_SOCK) points at it in the step.
    type: path
  step_timeout:
    description:
      - Seconds a C(RUN) step may take; a step still running then is killed with every
        process it started, and the build fails naming its line. No limit by default.
    type: float
  allow_user_namespaces:
    description:
      - Let C(RUN) steps create user namespaces (for a step that runs a rootless container
        tool, say). By default a small seccomp filter refuses C(unshare)/C(clone) with
        C(CLONE_NEWUSER) (EPERM) and C(clone3) (ENOSYS, so the C library falls back to
        C(clone)), as Docker's default seccomp profile does for a container without
        C(CAP_SYS_ADMIN); inside a user namespace a step could mount filesystems.
        Nothing else is filtered. The filter exists for x86_64 (with its i386 and x32
        ABIs), aarch64 (with arm), riscv64 and loongarch64; elsewhere there is none.
    type: bool
    default: false
notes:
  - RUN steps need root and util-linux C(unshare) on the managed host; the module's Python
    interpreter runs the small init program that sets up each step. A step runs in its
    own session keyring. Killing the module kills the step with every process it started.
  - There is no user namespace and no seccomp filter, so root in a step is uid 0 on the
    host, as with Docker's default daemon; but without C(CAP_SYS_ADMIN), C(CAP_MKNOD),
    C(CAP_SYS_MODULE) and the other capabilities outside Docker's default set it cannot
    mount, create devices, load kernel modules or leave its root. Only build specs you
    trust should run; nothing limits a step's CPU, memory or disk use.
"""

EXAMPLES = r"""
- name: docker build -t acme/my-base-image:1.0 -f Dockerfile.base .
  strata.layers.image_build:
    context: /srv/cow-test
    dockerfile: Dockerfile.base
    tag: [acme/my-base-image:1.0]

- name: The same kind of spec, inline
  strata.layers.image_build:
    spec: |
      FROM acme/my-base-image:1.0
      CMD /app/hello.sh
    tag: [acme/my-final-image:1.0]

- name: As YAML
  strata.layers.image_build:
    context: /srv/app
    instructions:
      - FROM: busybox:1.36
      - COPY: {src: [app/], dest: /app/}
      - RUN: chmod +x /app/run.sh
      - CMD: [/app/run.sh]
    tag: [acme/app:1]

- name: BuildKit mounts, a secret and the host's network (RUN's default)
  strata.layers.image_build:
    context: /srv/app
    spec: |
      FROM debian:bookworm
      ADD --checksum=sha256:5e1c2f7a0b8d4e3c9a6f1b2d7e8c0a4f3b9d6e1c2a7f8b0d4e3c9a6f1b2d7e8c \
          https://downloads.example.com/tool-1.2.tar.gz /opt/
      RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \
          --mount=type=secret,id=netrc,target=/root/.netrc \
          apt-get update && apt-get install -y build-essential
      RUN --mount=type=bind,source=src,target=/src make -C /src install
    secrets:
      netrc: {src: /root/.netrc}
    tag: [acme/tool:1.2]

- name: The same flags in the YAML form, and a git source
  strata.layers.image_build:
    instructions:
      - FROM: alpine:3.20
      - ADD: "https://git.example.com/acme/lib.git#v2.1:include /usr/local/include/lib/"
      - RUN: "--mount=type=cache,target=/root/.cache/pip --network=host pip install lib"
    tag: [acme/lib:2.1]

- name: Empty the build's cache mounts too
  strata.layers.store_prune:
    build_cache: true
"""

RETURN = r"""
image_id:
  description: Id of the built image (null in check mode when a step would run).
  returned: always
  type: str
tags:
  description: Tags pointing at it.
  returned: always
  type: list
  elements: str
layers:
  description: Its diff ids, bottom to top.
  returned: always
  type: list
  elements: str
history:
  description: Oldest first (C(docker history) shows it reversed); the base image's entries first.
  returned: always
  type: list
  elements: dict
  contains:
    created_by: {description: The instruction as Docker records it., type: str}
    size: {description: Bytes of the layer it made (0 for config-only steps)., type: int}
    empty_layer: {description: True when it changed the config only., type: bool}
    cached: {description: True when it came from the build cache (or the base image)., type: bool}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.image_build import image_build


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            context=dict(type="path"),
            dockerfile=dict(type="str", default="Dockerfile"),
            spec=dict(type="str"),
            instructions=dict(type="list", elements="raw"),
            tag=dict(type="list", elements="str", default=[]),
            build_args=dict(type="dict", default={}),
            target=dict(type="str"),
            no_cache=dict(type="bool", default=False),
            network=dict(type="str", default="host", choices=["host", "default", "none"]),
            secrets=dict(type="dict", default={}, no_log=True),
            ssh=dict(type="path"),
            step_timeout=dict(type="float"),
            allow_user_namespaces=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("spec", "instructions")],
        required_one_of=[("context", "spec", "instructions")],
        supports_check_mode=True,
    )
    run(module, image_build)


if __name__ == "__main__":
    main()
