# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One error hierarchy for the whole engine.

Every failure the store reports is a ``StoreError``; modules turn it into
``fail_json(msg=...)``.  Categories let callers (and tests) react to a kind of
failure without parsing messages.  OS, tar and JSON errors are wrapped at the
boundary with ``raise ... from exc`` so the cause stays inspectable.
"""
from __future__ import annotations

from typing import Any, Dict, Optional


class StoreError(Exception):
    """Root of every error the store raises.

    ``msg`` says what went wrong and what to do next; ``details`` carries
    machine-readable context (returned to Ansible next to ``msg``).
    """

    def __init__(self, msg: str, **details: Any) -> None:
        super().__init__(msg)
        self.msg = msg
        self.details: Dict[str, Any] = details

    def __str__(self) -> str:
        return self.msg


class NotFound(StoreError):
    """An image, layer, container or file that the caller named does not exist."""


class AlreadyExists(StoreError):
    """A name the caller wants to create is taken by something else."""


class DigestMismatch(StoreError):
    """Content does not hash to the digest that names or announces it."""


class Corrupt(StoreError):
    """Stored data or an input stream is damaged (truncated, bad checksum, bad JSON)."""


class Locked(StoreError):
    """The store lock could not be taken within the timeout."""


class InvalidReference(StoreError):
    """An image reference, digest or name is not well formed."""


class InvalidInput(StoreError):
    """The caller's input is unacceptable (a hostile tar member, a bad spec line...).

    ``member`` names the tar member and ``line`` the spec line at fault, when known.
    """

    def __init__(self, msg: str, member: Optional[str] = None, line: Optional[int] = None,
                 **details: Any) -> None:
        if member is not None:
            details["member"] = member
        if line is not None:
            details["line"] = line
        super().__init__(msg, **details)
        self.member = member
        self.line = line


class Unsupported(StoreError):
    """This host cannot do what was asked (a driver it cannot run, with the reason)."""


class NoSpace(StoreError):
    """The filesystem under the store ran out of space; nothing was kept."""


class Busy(StoreError):
    """A mount or directory is in use by a process and cannot be released."""
