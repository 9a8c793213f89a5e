# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.container``: run a container from the store on an OCI runtime.

A container is made as ``docker create`` makes it: its writable layer over an init
layer (``_initlayer``) over the image, and a run config (``_runtime_spec.run_config``)
recorded with it; every start runs that config.  Options that would change it on an
existing container are refused (remove it first), as the image is.

Starting: the root filesystem is mounted (``mounts/<id>`` unless mounted already), the
user resolved against the container's own passwd and group, the command looked up in
its PATH (a missing one fails before the runtime is involved), the bundle written
(``containers/<id>/bundle``: ``config.json``, ``hostname``, ``hosts``,
``resolv.conf``), then the runtime run detached under a monitor or, ``detach: false``,
in the foreground *without* the store lock (a long run must not block the store),
the exit then recorded under the lock again.  A failed start unmounts what it
mounted and removes a container it created: the store is as it was.

Stopping: the image's StopSignal, SIGKILL after ``stop_timeout``, the exit recorded,
the root filesystem unmounted if the start mounted it.  Removing a running container
needs ``force``.
"""
from __future__ import annotations

import json
import os
import signal
import stat
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ansible_collections.strata.layers.plugins.module_utils import _containers as containers
from ansible_collections.strata.layers.plugins.module_utils import _runtime as runtime
from ansible_collections.strata.layers.plugins.module_utils import _runtime_spec as spec
from ansible_collections.strata.layers.plugins.module_utils._atomic import (
    makedirs, read_json, write_json)
from ansible_collections.strata.layers.plugins.module_utils._containers import (
    ContainerDB, ContainerRecord)
from ansible_collections.strata.layers.plugins.module_utils._crash import crash_point
from ansible_collections.strata.layers.plugins.module_utils._errors import (
    AlreadyExists, Busy, InvalidInput, NotFound)
from ansible_collections.strata.layers.plugins.module_utils._passwd import ExecUser, resolve_user
from ansible_collections.strata.layers.plugins.module_utils._safepath import (
    NotBeneath, resolve_beneath)
from ansible_collections.strata.layers.plugins.module_utils._store import Store

STATES = ("started", "stopped", "absent")
# the options a container's run config is made of (fixed at creation)
RUN_OPTIONS = ("command", "entrypoint", "env", "workdir", "user", "hostname", "network",
               "volumes", "read_only")


@dataclass
class Plan:
    record: Optional[ContainerRecord]
    image_id: Optional[str]
    reason: Optional[str]       # create | run | start | stop | remove | None


@dataclass
class Foreground:
    """A ``detach: false`` run prepared under the lock, to run without it."""

    record: ContainerRecord
    rt: runtime.Runtime
    bundle: str
    mounted_here: bool


def container(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    _validate(params)
    store = Store.from_params(params)
    with store.read():
        plan = _plan(store, params)
        if check_mode or plan.reason is None:
            return _result(store, plan.record, plan.reason)
    with store.write("container %s (%s)" % (params["name"], params.get("state") or "started")):
        plan = _plan(store, params)
        if plan.reason is None:
            return _result(store, plan.record, None)
        outcome = _apply(store, params, plan)
        if not isinstance(outcome, Foreground):
            return outcome
    return _finish_foreground(store, params, outcome)


def _validate(params: Dict[str, Any]) -> None:
    name = params.get("name")
    if not isinstance(name, str) or not containers._NAME_RE.match(name):
        raise InvalidInput("container name %r is not valid: letters, digits, _ . - (not first), "
                           "at most 128" % (name,))
    if (params.get("state") or "started") not in STATES:
        raise InvalidInput("state %r is not one of %s" % (params.get("state"), ", ".join(STATES)))
    if params.get("auto_remove") and (params.get("detach") is not False or
                                      (params.get("state") or "started") != "started"):
        raise InvalidInput("auto_remove needs state: started and detach: false (the container "
                           "is removed when its process exits, as docker run --rm)")
    timeout = params.get("stop_timeout")
    if timeout is not None and (not isinstance(timeout, int) or timeout < 0):
        raise InvalidInput("stop_timeout %r must be a whole number of seconds, 0 or more"
                           % (timeout,))


# ---------------------------------------------------------------------- the plan

def _plan(store: Store, params: Dict[str, Any]) -> Plan:
    state = params.get("state") or "started"
    record = ContainerDB(store.root).by_name(params["name"]) if store.exists() else None
    if state == "absent":
        if record is not None and _status(store, record) == "running" and not params.get("force"):
            raise Busy("container %r is running; stop it first (state: stopped) or set force: "
                       "true to stop and remove it" % record.name)
        return Plan(record, None, "remove" if record is not None else None)
    image_id = _image_id(store, params, record)
    if state == "started":
        runtime.find_runtime(params.get("runtime") or "runc")
    if record is None:
        return Plan(None, image_id, "run" if state == "started" else "create")
    _refuse_changed_config(store, params, record)
    status = _status(store, record)
    if state == "stopped":
        return Plan(record, image_id, "stop" if status == "running" else None)
    if status != "running":
        return Plan(record, image_id, "start")
    if params.get("detach") is False:
        raise Busy("container %r is already running; detach: false runs a container to "
                   "completion: stop it first (state: stopped)" % record.name)
    return Plan(record, image_id, None)


def _image_id(store: Store, params: Dict[str, Any], record: Optional[ContainerRecord]
              ) -> Optional[str]:
    ref = params.get("image")
    if not ref:
        if record is None:
            raise InvalidInput("container %r does not exist: image is required to create it"
                               % params["name"])
        return record.image_id
    if not store.exists():
        raise NotFound("image %r is not in the store (the store %s is empty); import or pull "
                       "it first" % (ref, store.root))
    image_id = store.images.resolve(ref)
    if record is not None and record.image_id != image_id:
        raise AlreadyExists("container %r already exists on image %s, not on %s; remove it "
                            "first (state: absent) or choose another name"
                            % (record.name, record.image_id[7:19], image_id[7:19]))
    return image_id


def _refuse_changed_config(store: Store, params: Dict[str, Any], record: ContainerRecord) -> None:
    """An option given for an existing container must match what it was created with."""
    given = [k for k in RUN_OPTIONS if params.get(k) not in (None, [], {}, False)]
    if not given or record.run is None:
        return
    wanted = spec.run_config(_image_config(store, record.image_id), params, record.id)
    differ = [k for k in ("args", "env", "cwd", "user", "hostname", "network", "volumes",
                          "read_only") if wanted[k] != record.run.get(k)]
    if differ:
        raise AlreadyExists("container %r exists with another %s; its run configuration is fixed "
                            "when it is created: remove it first (state: absent, force: true)"
                            % (record.name, " and ".join(differ)))


def _image_config(store: Store, image_id: str) -> Dict[str, Any]:
    config = store.images.get(image_id).config.data.get("config") or {}
    return config if isinstance(config, dict) else {}


def _status(store: Store, record: ContainerRecord) -> str:
    return runtime.read_state(ContainerDB(store.root).path(record.id))["status"]


# ---------------------------------------------------------------------- doing it

def _apply(store: Store, params: Dict[str, Any], plan: Plan) -> Any:
    if plan.reason == "remove" and plan.record is not None:
        _remove(store, params, plan.record)
        result = _removed_result(plan.record, "remove")
        del result["mounted"], result["mount_point"]
        return result
    if plan.reason == "stop" and plan.record is not None:
        _stop(store, plan.record, params)
        return _result(store, plan.record, plan.reason)
    record, created = plan.record, False
    if record is None:
        record, created = _create(store, params, str(plan.image_id)), True
    if plan.reason == "create":
        return _result(store, record, plan.reason)
    outcome = _start(store, params, record, created)
    return outcome if isinstance(outcome, Foreground) else _result(store, record, plan.reason)


def _create(store: Store, params: Dict[str, Any], image_id: str) -> ContainerRecord:
    image = store.images.get(image_id)
    cid = os.urandom(32).hex()
    run = spec.run_config(_image_config(store, image_id), params, cid)
    return containers.create(store, params["name"], image, cid=cid,
                             init=spec.init_entries(run), run=run)


def _start(store: Store, params: Dict[str, Any], record: ContainerRecord, created: bool) -> Any:
    rt = runtime.Runtime(params.get("runtime") or "runc", os.path.join(store.root, "runtime"))
    record_dir = ContainerDB(store.root).path(record.id)
    mounted_here = False
    previous = runtime._read(os.path.join(record_dir, runtime.STATE_FILE)) or {}
    try:
        mounted_here = _mount(store, record)
        if not mounted_here and previous.get("mounted_for_run"):
            # the mount a previous run made and nobody unmounted (its monitor was killed):
            # still this run's to unmount when it ends, or it stays forever
            mounted_here = True
        run = record.run or _legacy_run(store, record, params)
        user = resolve_user(str(record.mount_point), run["user"])
        _check_executable(str(record.mount_point), run, user)
        bundle = _write_bundle(record_dir, record, run, user)
        rt.delete(record.id)   # a run that ended without its monitor left runtime state
        if params.get("detach") is False:
            _save_state(record_dir, {"status": "running", "monitor": os.getpid(),
                                     "monitor_ticks": runtime.pid_start_ticks(os.getpid()),
                                     "runtime": rt.name, "mounted_for_run": mounted_here,
                                     "log_path": os.path.join(record_dir, "stdout")})
            return Foreground(record, rt, bundle, mounted_here)
        _start_detached(rt, record_dir, record, bundle, params, mounted_here)
    except BaseException:
        _undo_start(store, record, mounted_here, created)
        if not created:
            _restore_state(record_dir, previous)
        raise
    return None


def _restore_state(record_dir: str, previous: Dict[str, Any]) -> None:
    """A failed start leaves the container's run state as it was."""
    path = os.path.join(record_dir, runtime.STATE_FILE)
    if previous:
        write_json(path, previous)
    elif os.path.exists(path):
        os.unlink(path)


def _start_detached(rt: runtime.Runtime, record_dir: str, record: ContainerRecord, bundle: str,
                    params: Dict[str, Any], mounted_here: bool) -> None:
    log = os.path.join(record_dir, "container.log")
    # written ahead: a module killed once the container runs but before its pid is
    # recorded leaves a run the next module adopts (pid from the runtime's pid file)
    # rather than a "created" container whose next start kills the orphan under a
    # monitor that then unmounts the new run's root filesystem
    _save_state(record_dir, {"status": "running", "detached": True, "runtime": rt.name,
                             "monitor": os.getpid(),
                             "monitor_ticks": runtime.pid_start_ticks(os.getpid()),
                             "mounted_for_run": mounted_here, "log_path": log})
    stdin = None
    if params.get("interactive"):
        stdin = os.path.join(bundle, "stdin")
        if not os.path.exists(stdin):
            os.mkfifo(stdin, 0o600)
    pid = rt.start_detached(record.id, bundle, log, stdin,
                            os.path.join(record_dir, runtime.EXIT_FILE),
                            unmount=str(record.mount_point) if mounted_here else None)
    crash_point("container-start.launched")
    _save_state(record_dir, {"status": "running", "detached": True, "pid": pid,
                             "ticks": runtime.pid_start_ticks(pid), "runtime": rt.name,
                             "shim": rt.monitor,
                             "shim_ticks": runtime.pid_start_ticks(rt.monitor)
                             if rt.monitor else None,
                             "mounted_for_run": mounted_here, "log_path": log})


def _save_state(record_dir: str, state: Dict[str, Any]) -> None:
    state.setdefault("started_at", runtime.timestamp())
    state.setdefault("finished_at", None)
    state.setdefault("exit_code", None)
    write_json(os.path.join(record_dir, runtime.STATE_FILE), state)


def _undo_start(store: Store, record: ContainerRecord, mounted_here: bool, created: bool) -> None:
    """A failed start leaves the store as it was: unmounted if this run mounted it, no
    container if this run created it."""
    if created:
        containers.remove(store, ContainerDB(store.root).get(record.id))
    elif mounted_here:
        containers.unmount(store, ContainerDB(store.root).get(record.id))


def _mount(store: Store, record: ContainerRecord) -> bool:
    """Mount the root filesystem for the runtime; whether this call mounted it."""
    target = record.mount_point or containers.default_mount_point(store, record.id)
    if record.mount_point and store.driver.is_mounted(record.mount_point):
        return False
    containers.mount(store, record, target)
    return True


def _legacy_run(store: Store, record: ContainerRecord, params: Dict[str, Any]) -> Dict[str, Any]:
    """A container made by container_layer has no run config: it runs the options given
    now (and the runtime's mount points land in its writable layer: no init layer)."""
    return spec.run_config(_image_config(store, record.image_id), params, record.id)


def _check_executable(rootfs: str, run: Dict[str, Any], user: ExecUser) -> None:
    """Fail before the runtime does, with the container's PATH in the message."""
    argv0 = run["args"][0]
    env = dict(item.partition("=")[::2] for item in spec.environment(run, user))
    if "/" in argv0:
        candidates = [os.path.join(run["cwd"], argv0)]
    else:
        candidates = [os.path.join(d or ".", argv0) for d in env.get("PATH", "").split(":")]
    for candidate in candidates:
        try:
            path = resolve_beneath(os.fsencode(rootfs), os.fsencode(candidate.lstrip("/")))
        except NotBeneath:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return
    where = "" if "/" in argv0 else " (PATH=%s)" % env.get("PATH", "")
    raise InvalidInput("command %r: executable %r not found in the container%s; check command "
                       "and entrypoint" % (run["args"], argv0, where))


def _write_bundle(record_dir: str, record: ContainerRecord, run: Dict[str, Any],
                  user: ExecUser) -> str:
    """The bundle of this start.  Not durable on purpose (no fsync): every start writes
    it again, and after a crash nothing reads it, so flushing it is start-up time lost."""
    bundle = os.path.join(record_dir, "bundle")
    makedirs(bundle, 0o700)
    files = spec.bundle_files(run)
    files["config.json"] = json.dumps(
        spec.runtime_spec(run, str(record.mount_point), bundle, user, record.id),
        indent=1).encode()
    for name, data in files.items():
        _write_plain(os.path.join(bundle, name), data)
    return bundle


def _write_plain(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _finish_foreground(store: Store, params: Dict[str, Any], run: Foreground) -> Dict[str, Any]:
    """Run without the lock; record the exit (or, ``auto_remove``, remove) with it."""
    record_dir = ContainerDB(store.root).path(run.record.id)
    rc, out, err = -1, "", ""
    remove = bool(params.get("auto_remove"))
    try:
        rc, out, err = run.rt.run_foreground(run.record.id, run.bundle,
                                             os.path.join(record_dir, "stdout"),
                                             os.path.join(record_dir, "stderr"))
    finally:
        doing = "removed" if remove else "exited"
        with store.write("container %s (%s)" % (run.record.name, doing)):
            if not _still_there(store, run.record):
                # removed while it ran (state: absent, force: true elsewhere), as docker
                # rm -f ends a docker run: the exit is reported, there is nothing to record
                result = _removed_result(run.record, "run")
            else:
                if not remove:
                    _record_exit(store, run.record, rc, run.mounted_here)
                result = _result(store, run.record, "run")
                if remove:
                    _remove(store, params, run.record)
                    result.update(status="removed", mounted=False, mount_point=None)
    result.update(rc=rc, stdout=out, stderr=err)
    if rc != 0:
        # Ansible fails a result with a non-zero rc (as command, and docker_container with
        # detach: false, do); the message says why
        result["msg"] = "the container's process exited with %d%s" % (
            rc, ": " + err.strip().splitlines()[-1][:500] if err.strip() else "")
    return result


def _still_there(store: Store, record: ContainerRecord) -> bool:
    try:
        return ContainerDB(store.root).get(record.id).id == record.id
    except NotFound:
        return False


def _removed_result(record: ContainerRecord, reason: str) -> Dict[str, Any]:
    return {"changed": True, "id": record.id, "name": record.name,
            "image_id": record.image_id, "status": "removed", "action": reason,
            "mounted": False, "mount_point": None}


def _record_exit(store: Store, record: ContainerRecord, code: int, mounted_here: bool) -> None:
    db = ContainerDB(store.root)
    try:
        current = db.get(record.id)
    except NotFound:
        return
    path = os.path.join(db.path(record.id), runtime.STATE_FILE)
    state = runtime._read(path) or {}
    state.update(status="exited", exit_code=code, finished_at=runtime.timestamp())
    write_json(path, state)
    if mounted_here:
        containers.unmount(store, current)


def _stop(store: Store, record: ContainerRecord, params: Dict[str, Any]) -> None:
    record_dir = ContainerDB(store.root).path(record.id)
    state = read_json(os.path.join(record_dir, runtime.STATE_FILE))
    pid, ticks = runtime.container_pid(record_dir, state)
    signum = spec.parse_signal((record.run or {}).get("stop_signal") or "SIGTERM")
    timeout = params.get("stop_timeout")
    timeout = 10 if timeout is None else int(timeout)
    code = None
    if pid:
        _signal(pid, ticks, signum)
        if not runtime.wait_gone(pid, ticks, timeout):
            _signal(pid, ticks, signal.SIGKILL)
            runtime.wait_gone(pid, ticks, 60)
            code = 128 + signal.SIGKILL
    # the monitor writes exit.json once it has reaped and unmounted; one that is gone
    # (killed) never will: no wait then
    if "shim" in state:
        waits = runtime.alive(state.get("shim"), state.get("shim_ticks"))
    else:   # a record from before monitors were recorded, or a start killed mid-way
        waits = bool(state.get("pid") or state.get("detached"))
    ended = runtime.wait_file(os.path.join(record_dir, runtime.EXIT_FILE),
                              runtime.EXIT_RECORD_WAIT if waits else 0)
    if ended is not None:
        code = ended.get("exit_code", code)
    if not state.get("detached") and runtime.alive(state.get("monitor"),
                                                   state.get("monitor_ticks")):
        return   # a foreground run elsewhere records its own exit (a killed one cannot)
    _record_exit(store, record, 128 + signum if code is None else code,
                 bool(state.get("mounted_for_run")))
    try:
        runtime.Runtime(state.get("runtime") or "runc", os.path.join(store.root, "runtime")
                        ).delete(record.id)
    except (InvalidInput, runtime.Unsupported):
        pass


def _signal(pid: int, ticks: Optional[int], signum: int) -> None:
    if runtime.alive(pid, ticks):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def _remove(store: Store, params: Dict[str, Any], record: ContainerRecord) -> None:
    if _status(store, record) == "running":
        _stop(store, record, params)
    state = runtime._read(os.path.join(ContainerDB(store.root).path(record.id),
                                       runtime.STATE_FILE)) or {}
    try:
        runtime.Runtime(state.get("runtime") or "runc", os.path.join(store.root, "runtime")
                        ).delete(record.id)
    except (InvalidInput, runtime.Unsupported):
        pass
    containers.remove(store, ContainerDB(store.root).get(record.id))


# ---------------------------------------------------------------------- the result

def _result(store: Store, record: Optional[ContainerRecord], reason: Optional[str]
            ) -> Dict[str, Any]:
    changed = reason is not None
    if record is None:
        return {"changed": changed, "id": None, "name": None, "image_id": None,
                "status": None, "pid": None, "exit_code": None, "bundle": None, "size": 0,
                "virtual_size": 0, "action": reason}
    record = ContainerDB(store.root).get(record.id) if store.exists() else record
    row = containers.container_row(store, record)
    row.pop("chain")
    record_dir = ContainerDB(store.root).path(record.id)
    row.update(runtime.read_state(record_dir))
    row.update(changed=changed, action=reason, bundle=os.path.join(record_dir, "bundle"),
               run=record.run)
    return row
