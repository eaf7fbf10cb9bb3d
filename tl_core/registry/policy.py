"""The registry's promotion policy: which version may become champion, decided where the versions live.

A version is promotable when its registered gate decision is PASS, it is not a shadow (backfill) version, the
ledger holds no rejection of its run, and the evidence the caller approved is the evidence registered with it.
Every path that moves the pointer forward (the DAGs, ``tl registry promote``, the Python API, a script) goes
through :meth:`tl_core.registry.Registry.promote`, which applies this policy; a refusal may be overridden only
by a :class:`~tl_core.artifacts.PromotionOverride` (actor and a reason of 10+ characters), which the ledger keeps
with the promotion. Rollback is not a promotion: it returns to a version that was champion before.
"""

from __future__ import annotations

from typing import Any

from tl_core.artifacts import PromotionOverride, VersionManifest
from tl_core.errors import PromotionRefused
from tl_core.store import key_safe

OVERRIDE_HINT = ("to promote it anyway, give an override with who and why (a reason of at least 10 characters): "
                 "`tl registry promote ... --override-reason TEXT`, or override_gate and override_reason in "
                 "promote_<model>; the ledger keeps it")


def rejection_of(records: list[dict[str, Any]], run_id: str) -> dict[str, Any] | None:
    """The newest ledger record that rejected ``run_id`` (a gate FAIL or an approver's Reject), or None.

    A run that only went unanswered (timed out, stopped) is recorded with ``rejected: false``: not promoted is
    not rejected."""
    # Ledger records keep the run id as given (Airflow's, e.g. with ':' and '+'); a version's, as its key.
    wanted = key_safe(run_id)
    for record in reversed(records):
        if (record.get("action") == "reject" and key_safe(str(record.get("run_id"))) == wanted
                and record.get("rejected", True)):
            return record
    return None


def promotion_problems(manifest: VersionManifest, rejection: dict[str, Any] | None,
                       evidence_hash: str | None) -> list[str]:
    """Why ``manifest``'s version may not become champion (empty: it may); each names what was observed."""
    problems = []
    gate = manifest.gate
    if gate.decision == "FAIL":
        shown = "; ".join(gate.reasons[:3]) or "no reasons recorded"
        problems.append(f"its gate decision is FAIL ({shown})")
    elif gate.decision != "PASS":
        problems.append("it has no gate decision (its run was registered before or without `tl gate`)")
    if manifest.shadow:
        problems.append(f"it is a shadow version (registered by backfill run {manifest.run_id})")
    if rejection is not None:
        problems.append(f"its run {manifest.run_id} was rejected by {rejection.get('actor')} at "
                        f"{rejection.get('at')} (ledger record {rejection.get('seq')}: "
                        f"{str(rejection.get('reason'))[:200]})")
    if evidence_hash is not None and evidence_hash != gate.evidence_hash:
        problems.append(f"the evidence approved (hash {evidence_hash[:12]}...) is not the evidence registered with "
                        f"it (hash {(gate.evidence_hash or 'none')[:12]}...): the run changed after its gate "
                        "decided, or the approval is for another run")
    return problems


def check_promotion(manifest: VersionManifest, rejection: dict[str, Any] | None, evidence_hash: str | None,
                    override: PromotionOverride | None) -> dict[str, Any] | None:
    """Apply the policy: PromotionRefused naming every problem, unless ``override`` is given; returns the override
    record for the ledger (who, why, what it overrode), None without an override."""
    problems = promotion_problems(manifest, rejection, evidence_hash)
    if problems and override is None:
        raise PromotionRefused(f"{manifest.model} {manifest.version} cannot be promoted: {'; '.join(problems)}. "
                               f"{OVERRIDE_HINT[0].upper()}{OVERRIDE_HINT[1:]}")
    if override is None:
        return None
    return {"by": override.actor, "reason": override.reason, "overrides": problems}
