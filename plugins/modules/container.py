#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
from __future__ import annotations

DOCUMENTATION = r"""
module: container
short_description: Run containers from the store on an OCI runtime (runc, crun)
version_added: 0.1.0
description:
  - Creates, starts, stops and removes a container of the store at O(data_root), as
    C(docker run), C(docker stop) and C(docker rm) do, on an OCI runtime.
  - A new container gets its writable layer over an init layer (the mount points the
    runtime needs, as Docker's C(<id>-init)) over the image, so nothing the runtime needs
    counts in its size or lands in a commit.
  - The process is made from the image config by the OCI image-spec conversion rules
    (Entrypoint and Cmd, Env, WorkingDir, User resolved against the container's own
    C(/etc/passwd) and C(/etc/group), Labels, StopSignal) with Docker's defaults
    (mounts, namespaces, default capabilities, masked and read-only paths).
  - The run configuration is fixed when the container is created; giving different
    options for an existing container fails (remove it first).
  - Docker's default seccomp and AppArmor profiles and cgroup limits are not applied.
author:
  - strata.layers developers (@strata-layers)
extends_documentation_fragment:
  - strata.layers.attributes
  - strata.layers.store
options:
  name:
    description: Container name, unique per store. Created from O(image) when absent.
    type: str
    required: true
  image:
    description:
      - Image reference (C(NAME[:TAG]), id, or 12+ digit id prefix). Required to create
        the container; an existing container on another image is an error.
    type: str
  state:
    description:
      - V(started) the container runs (created first when absent; an exited one is started
        again). V(stopped) it is not running (created, not started, when absent).
        V(absent) it is removed with its layers (a running one needs O(force)).
    type: str
    default: started
    choices: [started, stopped, absent]
  detach:
    description:
      - V(true) the process runs in the background, as C(docker run -d); a running
        container is left alone (not changed).
      - V(false) runs it to completion and returns RV(rc), RV(stdout) and RV(stderr)
        (their last 256 KiB each); the store lock is not held while it runs. A non-zero
        RV(rc) fails the task, as with M(ansible.builtin.command).
    type: bool
    default: true
  auto_remove:
    description:
      - With O(detach=false), remove the container once its process has exited, as
        C(docker run --rm) (its result is still returned).
    type: bool
    default: false
  interactive:
    description:
      - Keep the process's standard input open (a FIFO in the bundle), as
        C(docker run -i); without it standard input is C(/dev/null), and a shell
        exits at once.
    type: bool
    default: false
  command:
    description: Replaces the image's Cmd.
    type: list
    elements: str
  entrypoint:
    description: Replaces the image's Entrypoint (the image's Cmd is then dropped, as
      C(docker run --entrypoint) does).
    type: list
    elements: str
  env:
    description: Added to the image's Env (replacing variables of the same name).
    type: dict
    default: {}
  workdir:
    description: Working directory (default the image's WorkingDir, else C(/)); created in
      the init layer when missing.
    type: str
  user:
    description: C(name), C(uid), C(name:group) or C(uid:gid), resolved against the
      container's own C(/etc/passwd) and C(/etc/group) (default the image's User).
    type: str
  hostname:
    description:
      - Host name (default the first 12 digits of the id).
      - At most 64 letters, digits, C(.), C(-) or C(_), not starting with C(.) or C(-).
    type: str
  network:
    description:
      - V(none) (when not given) a network namespace of its own with only C(lo); V(host)
        the host's.
    type: str
    choices: [none, host]
  volumes:
    description: Bind mounts C(SRC:DST[:ro]); C(SRC) must exist on the host (it is never
      created).
    type: list
    elements: str
    default: []
  read_only:
    description: Mount the root filesystem read-only.
    type: bool
    default: false
  stop_timeout:
    description: Seconds between the StopSignal and SIGKILL.
    type: int
    default: 10
  runtime:
    description: The OCI runtime to run it with (its package must be installed).
    type: str
    default: runc
    choices: [runc, crun]
  force:
    description: With O(state=absent), stop a running container first.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Five containers in the background (docker run -dit ... sh)
  strata.layers.container:
    name: "my_container_{{ item }}"
    image: acme/my-final-image:1.0
    command: [sh]
    interactive: true
  loop: [1, 2, 3, 4, 5]

- name: Run a command to completion
  strata.layers.container:
    name: once
    image: acme/my-final-image:1.0
    command: [sh, -c, "cat /etc/os-release"]
    detach: false
  register: once

- name: Stop one, remove another
  strata.layers.container:
    name: my_container_4
    state: stopped

- name: Remove a running container
  strata.layers.container:
    name: my_container_5
    state: absent
    force: true
"""

RETURN = r"""
id:
  description: Container id (64 hex digits).
  returned: when the container exists
  type: str
name:
  description: Container name.
  returned: when the container exists
  type: str
image_id:
  description: Id of its image.
  returned: when the container exists
  type: str
status:
  description: V(created), V(running) or V(exited) (V(removed) after O(state=absent)).
  returned: always
  type: str
pid:
  description: Host pid of the container's process while it runs.
  returned: always
  type: int
exit_code:
  description: Exit code of the last run (128 + signal when killed; -1 when nobody saw it).
  returned: always
  type: int
started_at:
  description: When the last run started.
  returned: when the container exists
  type: str
finished_at:
  description: When the last run ended.
  returned: when the container exists
  type: str
log_path:
  description: The file the detached process's stdout and stderr go to.
  returned: when the container exists
  type: str
rc:
  description: Exit code of the process.
  returned: with O(detach=false)
  type: int
stdout:
  description: Its standard output (the last 256 KiB).
  returned: with O(detach=false)
  type: str
stderr:
  description: Its standard error (the last 256 KiB).
  returned: with O(detach=false)
  type: str
mounted:
  description: Whether its root filesystem is mounted now (while it runs, at C(<data_root>/mounts/<id>)).
  returned: when the container exists
  type: bool
run:
  description: Its run configuration, fixed at creation (C(args), C(env), C(cwd), C(user),
    C(hostname), C(network), C(volumes), C(read_only), C(stop_signal), C(annotations)).
  returned: when the container exists
  type: dict
bundle:
  description: The OCI runtime bundle directory (C(config.json)).
  returned: when the container exists
  type: str
size:
  description: Bytes of the files in the writable layer, as C(docker ps -s) counts them.
  returned: when the container exists
  type: int
virtual_size:
  description: RV(size) plus the size of the image.
  returned: when the container exists
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.strata.layers.plugins.module_utils._argspec import run, store_spec
from ansible_collections.strata.layers.plugins.module_utils._ops.container import container


def main() -> None:
    module = AnsibleModule(
        argument_spec=store_spec(
            name=dict(type="str", required=True),
            image=dict(type="str"),
            state=dict(type="str", default="started", choices=["started", "stopped", "absent"]),
            detach=dict(type="bool", default=True),
            auto_remove=dict(type="bool", default=False),
            interactive=dict(type="bool", default=False),
            command=dict(type="list", elements="str"),
            entrypoint=dict(type="list", elements="str"),
            env=dict(type="dict", default={}),
            workdir=dict(type="str"),
            user=dict(type="str"),
            hostname=dict(type="str"),
            network=dict(type="str", choices=["none", "host"]),
            volumes=dict(type="list", elements="str", default=[]),
            read_only=dict(type="bool", default=False),
            stop_timeout=dict(type="int", default=10),
            runtime=dict(type="str", default="runc", choices=["runc", "crun"]),
            force=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    run(module, container)


if __name__ == "__main__":
    main()
