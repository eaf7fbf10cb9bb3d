"""Garbage collection: delete versions that are neither among the last ``keep`` champions, the champion, its
rollback target (what ``rollback`` without a target would restore), nor referenced by a pending run - marking
first, fencing pointer moves by compare-and-swap, deleting last."""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from tl_core.errors import ConflictError, PreconditionFailed
from tl_core.registry.layout import GC_MARKER, KEPT_AFTER_GC, POINTER_ACTIONS, Layout, now
from tl_core.registry.ledger import Ledger, rollback_target
from tl_core.registry.pointer import Champion, Pointer

logger = logging.getLogger(__name__)


class Collector:
    def __init__(self, layout: Layout, ledger: Ledger, pointer: Pointer) -> None:
        self.layout = layout
        self.ledger = ledger
        self.pointer = pointer
        self.model = layout.model

    def gc(self, keep: int, dry_run: bool = False, pending_runs: tuple[str, ...] = ()) -> dict[str, Any]:
        """See ``Registry.gc``."""
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"gc --keep must be an integer of at least 1, got {keep!r}")
        champion = self.pointer.champion()
        records = self.ledger.records() if dry_run else [self.ledger.record(k) for k in self.ledger.verify()]
        keys = self.layout.version_keys()
        complete = {v for v, rels in keys.items() if "manifest.json" in rels and GC_MARKER not in rels}
        target = rollback_target(records, champion.version if champion else None, complete)
        protected = self._protected(records, champion, keep, pending_runs) | ({target} if target else set())
        doomed = sorted(v for v, rels in keys.items() if v not in protected and set(rels) - KEPT_AFTER_GC)
        result: dict[str, Any] = {"would_delete" if dry_run else "deleted": doomed, "kept": sorted(protected),
                                  **({"rollback_target": target} if target else {})}
        if target:
            logger.info("%s: gc keeps %s: it is the rollback target of champion %s", self.model, target,
                        champion.version if champion else None)
        if dry_run or not doomed:
            return result
        marked = self._mark([v for v in doomed if GC_MARKER not in keys[v]], keep)
        if champion is not None:
            self._fence(champion, marked)
        for v in doomed:
            self._delete(v, keys[v])
        self.ledger.append({"action": "gc", "deleted": doomed, "kept": sorted(protected), "keep": keep,
                            "rollback_target": target, "actor": "gc", "reason": f"gc --keep {keep}"})
        return result

    def _protected(self, records: list[dict[str, Any]], champion: Champion | None, keep: int,
                   pending_runs: tuple[str, ...]) -> set[str]:
        """The last ``keep`` champions, the champion, and the versions of pending runs."""
        champions: list[str] = []
        for r in reversed(records):
            if r.get("action") in POINTER_ACTIONS and r.get("version") not in champions:
                champions.append(str(r.get("version")))
        protected = set(champions[:keep]) | ({champion.version} if champion else set())
        for run_id in pending_runs:
            pending = self.layout.version_of_run(run_id)
            if pending is not None:
                protected.add(pending)
        return protected

    def _mark(self, versions: list[str], keep: int) -> list[str]:
        """Write each version's gc marker (create-only); the versions this call marked."""
        marked = []
        for v in versions:
            with contextlib.suppress(PreconditionFailed):  # a concurrent gc marked it first
                self.layout.store.put_bytes(self.layout.version_key(v, GC_MARKER),
                                            json.dumps({"at": now(), "keep": keep}).encode(), if_none_match="*")
                marked.append(v)
        return marked

    def _fence(self, champion: Champion, marked: list[str]) -> None:
        """Rewrite the pointer unchanged with compare-and-swap: a promotion or rollback that read the pointer
        before the marks now fails its own swap, and one that swapped first makes this one fail (and unmark)."""
        try:
            self.layout.store.put_bytes(self.pointer.key, json.dumps(champion.record, sort_keys=True).encode(),
                                        if_match=champion.etag)
        except PreconditionFailed:
            for v in marked:
                self.layout.store.delete(self.layout.version_key(v, GC_MARKER))
            now_ = self.pointer.settled(champion)
            raise ConflictError(f"{self.model}: the champion moved while gc ran (from {champion.version} to "
                                f"{now_.version if now_ else 'none'}); nothing was deleted, re-run gc") from None

    def _delete(self, version: str, rels: list[str]) -> None:
        """Delete a marked version's files (manifest first: it stops being a version) and its run's link."""
        owner = self.layout.version_run(version)
        for rel in sorted(rels, key=lambda rel: rel != "manifest.json"):
            if rel not in KEPT_AFTER_GC:
                self.layout.store.delete(self.layout.version_key(version, rel))
        if owner and self.layout.version_of_run(owner) == version:
            self.layout.store.delete(self.layout.run_key(owner))
