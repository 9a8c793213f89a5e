# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every module shares: the store options and the error-to-fail_json boundary.

No ``AnsibleModule`` import here: ``run`` only calls the module object it is given.
"""
from __future__ import annotations

import traceback
from typing import Any, Callable, Dict

from ansible_collections.strata.layers.plugins.module_utils._errors import StoreError

STORE_OPTIONS: Dict[str, Dict[str, Any]] = {
    "data_root": {"type": "path", "default": "/var/lib/strata"},
    "lock_timeout": {"type": "float", "default": 300.0},
    "init": {"type": "str", "default": "new", "choices": ["new", "adopt"]},
}


REGISTRY_OPTIONS: Dict[str, Dict[str, Any]] = {
    "insecure": {"type": "bool", "default": False},
    "ca_path": {"type": "path"},
    "username": {"type": "str"},
    "password": {"type": "str", "no_log": True},
    "auth_file": {"type": "path"},
    "timeout": {"type": "int", "default": 60},
    "connect_timeout": {"type": "int", "default": 30},
    "blob_timeout": {"type": "int", "default": 3600},
}


def registry_spec(**options: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """The store options, the registry settings (image_pull, image_push), then ``options``."""
    spec = store_spec(**REGISTRY_OPTIONS)
    spec.update(options)
    return spec


def store_spec(**options: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    spec = dict(STORE_OPTIONS)
    spec.update(options)
    return spec


def run(module: Any, operation: Callable[..., Dict[str, Any]]) -> None:
    """Call ``operation(params, check_mode)`` and report through ``module``."""
    try:
        result = operation(module.params, check_mode=module.check_mode)
    except StoreError as exc:
        details = {k: v for k, v in exc.details.items() if k not in ("msg", "changed", "failed")}
        module.fail_json(msg=str(exc), error=type(exc).__name__, **details)
    except OSError as exc:
        # the host refused a system call (a full disk, a stray file where the store keeps a
        # directory...): say which call on which path, as a message; the traceback goes to
        # ``exception`` (shown with -vvv), not in place of the message
        where = " ".join(repr(os_path) for os_path in (exc.filename, exc.filename2)
                         if os_path is not None)
        module.fail_json(msg="%s%s: %s" % (type(exc).__name__, " on " + where if where else "",
                                           exc.strerror or exc),
                         error=type(exc).__name__, errno=exc.errno,
                         exception=traceback.format_exc())
    module.exit_json(**result)
