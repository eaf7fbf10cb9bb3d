"""Moving the champion pointer: compare-and-swap with an intent written first, promotion (idempotent for the
same request) and rollback (to a version that still loads, by default the latest earlier champion).

A promotion or rollback happens when the pointer's compare-and-swap succeeds; its ledger record is appended
after, and repaired from the intent by the next registry call if the mover died in between.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

from tl_core.artifacts import PromotionOverride
from tl_core.errors import ConflictError, PreconditionFailed, RegistryError
from tl_core.registry.integrity import Integrity
from tl_core.registry.layout import now
from tl_core.registry.ledger import Ledger, rollback_target
from tl_core.registry.names import check_version
from tl_core.registry.pointer import Champion, Pointer
from tl_core.registry.policy import check_promotion, rejection_of
from tl_core.registry.versions import Versions

logger = logging.getLogger(__name__)


def promotion_of(champion: Champion) -> tuple[Any, ...]:
    """What makes two promotions the same request: version, action, expected champion, evidence."""
    return champion.version, champion.action, champion.previous, champion.record.get("evidence_hash")


class Moves:
    def __init__(self, pointer: Pointer, ledger: Ledger, versions: Versions, integrity: Integrity) -> None:
        self.pointer = pointer
        self.ledger = ledger
        self.versions = versions
        self.integrity = integrity
        self.layout = pointer.layout
        self.model = pointer.model

    def move(self, action: str, version: str, expect: str | None, actor: str, reason: str,
             extra: dict[str, Any]) -> dict[str, Any]:
        """Swap the pointer to ``version`` if the champion is still ``expect``; the appended ledger record."""
        # The champion we replace is in the ledger before our record can be (and is explained, or we refuse).
        current, _ = self.pointer.reconciled(self.pointer.read(), repair=True)
        current_version = current.version if current else None
        if current_version != expect:
            raise ConflictError(f"{self.model}: cannot {action} {version}: expected champion {expect or 'none'}, "
                                f"but the current champion is {current_version or 'none'}")
        if version == current_version:
            raise RegistryError(f"{self.model}: {version} is already the champion")
        if self.layout.collected(version):  # see gc: checked after reading the pointer
            raise RegistryError(f"{self.model}: version {version} was garbage-collected")
        self.ledger.verify()  # a ledger that refuses our record must refuse it before the pointer moves
        generation = int(current.record.get("generation") or 0) + 1 if current else 1
        record = {"action": action, "record_id": uuid.uuid4().hex, "version": version, "previous": current_version,
                  "generation": generation, "actor": actor, "reason": reason, "at": now(), **extra}
        body = json.dumps(record, sort_keys=True).encode()
        # The intent witnesses the move: with it the next reader can complete a swap whose ledger append crashed.
        self.layout.store.put_bytes(self.layout.key("intents", f"{record['record_id']}.json"), body,
                                    if_none_match="*")
        try:
            if current is None:
                self.layout.store.put_bytes(self.pointer.key, body, if_none_match="*")
            else:
                self.layout.store.put_bytes(self.pointer.key, body, if_match=current.etag)
        except PreconditionFailed as exc:
            self._lost_swap(exc, action, version, expect, current, record["record_id"])
        stored, _ = self.ledger.append(record, record_id=record["record_id"])
        return {**stored, "made_now": True}

    def _lost_swap(self, exc: PreconditionFailed, action: str, version: str, expect: str | None,
                   current: Champion | None, record_id: str) -> None:
        """Return when the refused swap was in fact ours (a retried request); ConflictError otherwise."""
        now_ = self.pointer.settled(current)
        if now_ is not None and now_.record.get("record_id") == record_id:
            logger.info("%s: the store refused a swap it had made (a retried request): %s", self.model, exc)
        elif now_ is not None and current is not None and now_.etag == current.etag:
            raise ConflictError(f"{self.model}: cannot {action} {version}: the store refused the compare-and-swap "
                                f"although the champion is still {current.version}: {exc}") from None
        else:
            raise ConflictError(f"{self.model}: cannot {action} {version}: the champion changed concurrently "
                                f"(expected {expect or 'none'}); the current champion is "
                                f"{now_.version if now_ else 'none'}") from None

    def promote(self, version: str, expect_champion: str | None, approval: dict[str, Any] | None, actor: str,
                reason: str = "", evidence_hash: str | None = None,
                override: PromotionOverride | None = None) -> dict[str, Any]:
        """Compare-and-swap the champion to ``version`` (verified first, then the promotion policy, see
        tl_core.registry.policy); see ``Registry.promote``."""
        check_version(version)
        if expect_champion is not None:
            check_version(expect_champion)
        if approval is not None and not isinstance(approval, dict):
            raise ValueError(f"approval must be a JSON object, got {type(approval).__name__}")
        if override is not None and not isinstance(override, PromotionOverride):
            raise ValueError(f"override must be a PromotionOverride, got {type(override).__name__}")
        manifest = self.integrity.verify(version)
        overridden = check_promotion(manifest, rejection_of(self.ledger.records(), manifest.run_id), evidence_hash,
                                     override)
        evidence_hash = evidence_hash or manifest.gate.evidence_hash  # what the promotion rests on, in the ledger
        same = (version, "promote", expect_champion, evidence_hash)
        current, record = self.pointer.reconciled(self.pointer.read(), repair=True)
        if current is not None and record is not None and promotion_of(current) == same:
            return self._already_made(record)
        try:
            return self.move("promote", version, expect_champion, actor, reason or "approved promotion",
                             {"approval": approval or {}, "evidence_hash": evidence_hash,
                              **({"override": overridden} if overridden is not None else {})})
        except ConflictError:  # lost to an identical promotion: that one is the answer, not a conflict
            current, record = self.pointer.reconciled(self.pointer.read(), repair=True)
            if current is not None and record is not None and promotion_of(current) == same:
                return self._already_made(record)
            raise

    def _already_made(self, record: dict[str, Any]) -> dict[str, Any]:
        logger.info("%s: %s was already promoted by ledger record %s (%s at %s); nothing changed", self.model,
                    record.get("version"), record.get("seq"), record.get("actor"), record.get("at"))
        return {**record, "made_now": False}

    def default_rollback_target(self) -> str | None:
        """The latest earlier champion that still exists and was never rolled back from."""
        current = self.pointer.champion()
        if current is None:
            return None
        return rollback_target(self.ledger.records(), current.version, set(self.versions.list_versions()))

    def rollback(self, to: str | None, reason: str, actor: str) -> dict[str, Any]:
        """Point the champion at ``to`` (default: the previous champion) after checking that it loads."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"rollback needs a reason (--reason TEXT), got {reason!r}")
        if to is not None:
            check_version(to)
        current = self.pointer.champion()
        if current is None:
            raise RegistryError(f"{self.model}: there is no champion to roll back")
        target = to or self.default_rollback_target()
        if target is None:
            raise RegistryError(f"{self.model}: champion {current.version} has no earlier champion to roll back "
                                "to; pass --to VERSION")
        if target == current.version:
            raise RegistryError(f"{self.model}: {target} is already the champion")
        self.integrity.check_loadable(target)
        return self.move("rollback", target, current.version, actor, reason, {})
