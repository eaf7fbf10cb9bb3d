"""What a gate decision rests on, and its hash: the one definition of "a candidate's files" for the evidence.

``current_evidence`` is read afresh from the store by the gate step and again just before promotion
(``pipeline.step_check_evidence``); an unchanged ``current_evidence_hash`` means nothing the decision rests on
was modified in between.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tl_core.artifacts import SnapshotManifest
from tl_core.runs import INT8_REPORT, RunContext

# Reports whose checksums are part of the evidence (when present).
EVIDENCE_REPORTS = ("evaluation/report.json", "audit/report.json", INT8_REPORT)


def evidence_hash(parts: dict[str, Any]) -> str:
    """sha256 over a canonical JSON of what the decision rests on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def current_evidence(ctx: RunContext) -> dict[str, Any]:
    """What a decision rests on, read afresh from the store (used again just before promotion): the checksums of
    the candidate's files (RunContext.candidate_files), the champion version and pointer etag, the snapshot content
    hash and the checksums of the reports."""
    from tl_core.registry import Registry, RegistryError

    files = ctx.candidate_files()
    registry = Registry.for_spec(ctx.spec)
    try:
        pointer, champion_error = registry.champion(), None
    except RegistryError as exc:  # an unreadable or unexplained pointer is evidence too: the gate fails closed
        pointer, champion_error = None, str(exc)
    snapshot = ctx.read_optional(SnapshotManifest)
    reports = {rel: ctx.store.etag(ctx.key(rel)) for rel in EVIDENCE_REPORTS if ctx.store.exists(ctx.key(rel))}
    return {
        "candidate_files": {k: ctx.store.etag(k) for k in files},
        "champion_version": pointer.version if pointer else None,
        "champion_etag": pointer.etag if pointer else None,
        **({"champion_error": champion_error} if champion_error else {}),
        "snapshot_hash": snapshot.content_hash if snapshot is not None else None,
        "reports": reports,
    }


def current_evidence_hash(ctx: RunContext) -> str:
    """sha256 of current_evidence(ctx): equal to the gate decision's evidence_hash while nothing changed."""
    return evidence_hash(current_evidence(ctx))
