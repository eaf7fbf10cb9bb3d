"""The champion pointer: reading it, and trusting it only when the ledger explains it.

The pointer carries the whole ledger record it commits, and the mover writes the same record as an intent
before it swaps, so a crash between the pointer write and the ledger append is repaired by the next registry
call from the intent: what the mover wrote, never what the pointer claims.

The pointer is trusted only when the ledger explains it (see :meth:`Pointer.reconcile`): it is the ledger's
latest move, or the next move (previous = the ledger's champion, next generation) with a matching intent and a
version that verifies. Anything else - a hand-edited or restored champion.json - is refused with
:class:`UnexplainedPointer` naming the file, by readers (serving fails closed) and writers alike.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tl_core.errors import AccessDenied, ConflictError, MetadataError, NoSuchKey, RegistryError, UnexplainedPointer
from tl_core.registry.integrity import Integrity
from tl_core.registry.layout import POINTER_ACTIONS, Layout, parse_object
from tl_core.registry.ledger import LEDGER_FIELDS, Ledger
from tl_core.registry.names import RECORD_ID_PATTERN, is_version

logger = logging.getLogger(__name__)

CHAMPION_SHAPE = "the champion record (version, previous, action, generation, record_id)"
# How a pointer the ledger does not explain is put right (see tl_core.registry.repair).
REPAIR_COMMAND = "`tl registry repair --from-ledger` (a dry run; add --apply to write it)"


@dataclass(frozen=True)
class Champion:
    """The champion pointer as read, with the etag a compare-and-swap must match."""

    version: str
    etag: str
    promoted_at: str | None
    actor: str | None
    previous: str | None
    action: str | None
    record: dict[str, Any] = field(repr=False)

    @classmethod
    def from_record(cls, record: dict[str, Any], etag: str) -> Champion:
        return cls(version=record["version"], etag=etag, promoted_at=record.get("at"), actor=record.get("actor"),
                   previous=record.get("previous"), action=record.get("action"), record=record)


def pointer_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with a champion pointer's fields (empty when it is well-formed)."""
    checks: tuple[tuple[str, Any, str], ...] = (
        ("version", is_version, "a version such as v0001"),
        ("previous", lambda x: x is None or is_version(x), "null or a version"),
        ("action", lambda x: x in POINTER_ACTIONS, " or ".join(map(repr, POINTER_ACTIONS))),
        ("generation", lambda x: isinstance(x, int) and not isinstance(x, bool) and x >= 1, "an integer >= 1"),
        ("record_id", lambda x: isinstance(x, str) and RECORD_ID_PATTERN.fullmatch(x) is not None,
         "32 hex digits"),
    )
    out = []
    for name, ok, expected in checks:
        if name not in record:
            out.append(f"'{name}' is missing (expected {expected})")
        elif not ok(record[name]):
            out.append(f"'{name}' is {record[name]!r} (expected {expected})")
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields (ledger bookkeeping aside) in which two move records differ."""
    return sorted(k for k in (set(a) | set(b)) - set(LEDGER_FIELDS) if a.get(k) != b.get(k))


def same_etag(a: Champion | None, b: Champion | None) -> bool:
    return (a.etag if a else None) == (b.etag if b else None)


class Pointer:
    def __init__(self, layout: Layout, ledger: Ledger, integrity: Integrity) -> None:
        self.layout = layout
        self.ledger = ledger
        self.integrity = integrity
        self.model = layout.model
        self.key = layout.key("champion.json")

    def read(self) -> Champion | None:
        """The pointer as stored (well-formed, but not yet explained by the ledger)."""
        try:
            data, etag = self.layout.store.get_with_etag(self.key)
        except NoSuchKey:
            return None
        return self.parse(data, etag)

    def parse(self, data: bytes, etag: str) -> Champion:
        """The pointer's bytes as a well-formed champion; MetadataError names the key, the problem and the fix."""
        try:
            record = parse_object(self.model, self.key, data, CHAMPION_SHAPE)
        except MetadataError as exc:
            raise MetadataError(f"{exc}; restore it from the ledger with {REPAIR_COMMAND}") from None
        problems = pointer_problems(record)
        if problems:
            raise MetadataError(f"{self.model}: {self.key} is not a valid champion pointer: {'; '.join(problems)}; "
                                f"restore it from the ledger with {REPAIR_COMMAND}")
        return Champion.from_record(record, etag)

    def champion(self, repair: bool = True) -> Champion | None:
        """The champion, once the ledger explains the pointer (UnexplainedPointer otherwise: fail closed)."""
        return self.reconciled(self.read(), repair)[0]

    def reconcile(self, champion: Champion | None = None, repair: bool = True) -> dict[str, Any] | None:
        """The ledger record that made the current pointer champion (None with no champion)."""
        return self.reconciled(champion or self.read(), repair)[1]

    def settled(self, before: Champion | None, wait_s: float = 30.0) -> Champion | None:
        """The champion after a lost swap: the winner's write may still be landing (the file backend's swap is
        claimed before it is written), so wait until the pointer differs from ``before``. Usually milliseconds;
        the bound is generous because a loaded machine can deschedule the winner between claim and write, and
        the loser's error must name the new champion."""
        deadline = time.monotonic() + wait_s
        now = self.read()
        while same_etag(now, before) and time.monotonic() < deadline:
            time.sleep(0.01)
            now = self.read()
        return now

    def reconciled(self, champion: Champion | None, repair: bool) -> tuple[Champion | None, dict[str, Any] | None]:
        """(the champion, its ledger record), re-checked when the pointer or the ledger moved during the check."""
        for _ in range(20):
            keys = self.ledger.keys()
            try:
                return champion, self._explain(champion, keys, repair)
            except UnexplainedPointer:
                now = self.read()
                if same_etag(now, champion) and len(self.ledger.keys()) == len(keys):
                    raise
                champion = now
        raise ConflictError(f"{self.model}: the champion pointer kept moving while it was checked; retry")

    def _explain(self, champ: Champion | None, keys: list[str], repair: bool) -> dict[str, Any] | None:
        """The ledger record of ``champ``: the ledger's latest move, or the crashed next move (appended now)."""
        last = self.ledger.last_move(keys)
        latest = (f"the ledger's latest move (seq {last['seq']}) made {last.get('version')} champion" if last
                  else "the ledger records no promotion yet")
        fix = (f"; restore the pointer from ledger record {last['seq']} with {REPAIR_COMMAND}, or investigate who "
               "wrote it" if last else "; investigate who wrote it")
        if champ is None:
            if last is not None:
                raise UnexplainedPointer(f"{self.model}: {self.key} is missing, but {latest}{fix}")
            return None
        rid = champ.record["record_id"]
        what = f"{self.key} (champion {champ.version}, record {rid})"
        if last is not None and last.get("record_id") == rid:
            if diff := differences(champ.record, last):
                raise UnexplainedPointer(f"{self.model}: {what} differs from its ledger record {last['seq']} in "
                                         f"{', '.join(diff)}{fix}")
            return last
        if any(self.ledger.record(k).get("record_id") == rid for k in keys):
            raise UnexplainedPointer(f"{self.model}: {what} names an earlier ledger record, but {latest}{fix}")
        intent_key = self.layout.key("intents", f"{rid}.json")
        problems = self._crash_problems(champ, last, intent_key)
        if problems:
            raise UnexplainedPointer(f"{self.model}: {what} is not in the ledger and cannot be the record of an "
                                     f"interrupted move: {'; '.join(problems)} ({latest}){fix}")
        return self._repair(champ, self.layout.json(intent_key), repair)

    def _repair(self, champ: Champion, intent: dict[str, Any], repair: bool) -> dict[str, Any]:
        """Append the record of a move that crashed after its swap, from its intent (unless a reader)."""
        if not repair:
            return intent
        try:
            stored, appended = self.ledger.append(intent, record_id=champ.record["record_id"])
        except AccessDenied:  # a read-only reader (e.g. the webserver) leaves the repair to the next writer
            logger.warning("%s: the ledger lacks the record of champion %s and this reader may not write it",
                           self.model, champ.version)
            return intent
        if appended:
            logger.warning("%s: repaired the ledger with the record of champion %s from its intent %s", self.model,
                           champ.version, self.layout.key("intents", f"{champ.record['record_id']}.json"))
        return stored

    def _crash_problems(self, champ: Champion, last: dict[str, Any] | None, intent_key: str) -> list[str]:
        """Why ``champ`` is not the next move of the ledger, witnessed by its intent and a version that verifies."""
        problems = []
        previous = last.get("version") if last else None
        generation = int(last.get("generation") or 0) + 1 if last else 1
        if champ.previous != previous:
            problems.append(f"its previous champion is {champ.previous or 'none'}, expected {previous or 'none'}")
        if champ.record["generation"] != generation:
            problems.append(f"its generation is {champ.record['generation']}, expected {generation}")
        try:
            intent: dict[str, Any] | None = self.layout.json(intent_key, "the intent record of a move")
        except NoSuchKey:
            intent = None
        if intent is None:
            problems.append(f"no intent {intent_key} witnessed it (tl writes one before every move)")
        elif diff := differences(champ.record, intent):
            problems.append(f"it differs from its intent {intent_key} in {', '.join(diff)}")
        if not problems:
            try:
                self.integrity.verify(champ.version)
            except RegistryError as exc:
                problems.append(f"its version does not verify: {exc}")
        return problems
