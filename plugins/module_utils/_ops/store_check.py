# Copyright: strata.layers contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``strata.layers.store_check``: verify a store and, with ``repair``, repair it.

The check runs under the shared lock; the reason is a finding with a safe repair.
Without ``repair``, in check mode (which lists the planned repairs) or with nothing
repairable, that is all.  Otherwise the store is opened for writing (settling marks
and debris, reported as repairs), repaired round by round (``_check.repair_rounds``)
and checked once more.  The check, the repairs and the order of the runs: ``_check``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from ansible_collections.strata.layers.plugins.module_utils._check import (
    PLANS, Finding, Survey, check, recovered_items, repair_rounds)
from ansible_collections.strata.layers.plugins.module_utils._digest import ChainID, is_digest
from ansible_collections.strata.layers.plugins.module_utils._store import Store


def store_check(params: Dict[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Entry point of the module: returns the result dict (raises StoreError)."""
    store = Store.from_params(params)
    repair = bool(params.get("repair"))
    with store.read():
        survey, findings = check(store) if store.exists() else (None, [])
    verified = _verified(survey)
    fixable = [f for f in findings if f.fix]
    if not repair or check_mode or not fixable:
        plan = [_planned(f) for f in fixable] if repair else []
        return _result(findings, findings, plan, verified, changed=bool(check_mode and plan))
    # only these need their content re-verified under the exclusive lock
    flagged = {ChainID(f.object) for f in findings
               if f.kind in ("corrupt-layer", "bad-layer-record") and is_digest(f.object)}
    with store.write("store_check repair", init=False):
        repaired = recovered_items(store.root, store.recovered)
        failures: Dict[Tuple[str, str], str] = {}
        repaired += repair_rounds(store, flagged, failures)
        remaining = check(store, verify=flagged)[1]
    for finding in remaining:
        if finding.key in failures:
            finding.detail += " (repair failed: %s)" % failures[finding.key]
    return _result(findings, remaining, repaired, verified, changed=bool(repaired))


def _result(findings: List[Finding], remaining: List[Finding], repaired: List[Dict[str, str]],
            verified: Dict[str, int], changed: bool) -> Dict[str, Any]:
    return {"changed": changed, "ok": not remaining,
            "findings": [f.as_dict() for f in findings],
            "remaining": [f.as_dict() for f in remaining],
            "repaired": repaired, "verified": verified}


def _verified(survey: Optional[Survey]) -> Dict[str, int]:
    if survey is None:
        return {"layers": 0, "bytes": 0, "images": 0, "containers": 0}
    return dict(survey.verified, images=len(survey.images), containers=len(survey.containers))


def _planned(finding: Finding) -> Dict[str, str]:
    return {"kind": finding.kind, "object": finding.object, "action": PLANS[finding.fix or ""]}
