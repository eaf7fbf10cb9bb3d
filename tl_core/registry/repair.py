"""Restoring the champion pointer from the ledger (`tl registry repair --from-ledger`).

A pointer the ledger does not explain (unreadable, hand-edited, an old copy put back, deleted) is refused by every
reader and writer (see :mod:`tl_core.registry.pointer`); rollback cannot help, as it starts from the champion.
Repair rewrites the pointer as the ledger's latest move record says - byte for byte what that move's mover wrote -
with the mechanics of a move: a create-only intent first (the ``repair`` record, naming who and the sha256 of the
pointer bytes it replaces), then the pointer's compare-and-swap against the bytes it inspected, then the ledger
record. A repair interrupted after its swap is completed from its intent by the next repair.

Nothing is written without ``apply``; a pointer the ledger explains is left alone ("nothing to repair").
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from tl_core.errors import MetadataError, NoSuchKey, PreconditionFailed, RegistryError, UnexplainedPointer
from tl_core.registry.layout import Layout, sha256
from tl_core.registry.ledger import LEDGER_FIELDS, Ledger
from tl_core.registry.pointer import Pointer

logger = logging.getLogger(__name__)

INTENT_PREFIX = "repair-"


def pointer_body(record: dict[str, Any]) -> bytes:
    """The pointer a move's mover wrote: its ledger record without what the ledger added."""
    return json.dumps({k: v for k, v in record.items() if k not in LEDGER_FIELDS}, sort_keys=True).encode()


class Repairer:
    def __init__(self, layout: Layout, ledger: Ledger, pointer: Pointer) -> None:
        self.layout = layout
        self.ledger = ledger
        self.pointer = pointer
        self.model = layout.model

    def repair(self, apply: bool, actor: str) -> dict[str, Any]:
        """What is wrong with the pointer and what the ledger says it must be; with ``apply``, write that."""
        keys = self.ledger.verify()  # the ledger is what the pointer is restored from: it must be sound
        raw = self._raw()
        problem, explained = self._problem(raw)
        last = self.ledger.last_move(keys)
        if problem is None:
            if apply:
                self._complete_interrupted(keys, raw)
            return {"status": "consistent", "pointer": self.pointer.key,
                    "champion": explained.get("version") if explained else None,
                    "seq": explained.get("seq") if explained else None}
        if last is None:
            raise RegistryError(f"{self.model}: {self.pointer.key} is wrong ({problem}), but the ledger records no "
                                "promotion, so there is no pointer to restore; delete it by hand once you know who "
                                "wrote it")
        previous = sha256(raw[0]) if raw is not None else None
        plan = {"status": "would_repair", "pointer": self.pointer.key, "problem": problem, "seq": last["seq"],
                "champion": last["version"], "write": pointer_body(last).decode(),
                "previous_pointer_sha256": previous}
        if not apply:
            return plan
        record = {"action": "repair", "actor": actor, "version": last["version"], "restored_seq": last["seq"],
                  "restored_record_id": last["record_id"], "previous_pointer_sha256": previous,
                  "problem": problem[:2000],
                  "reason": f"restored {self.pointer.key} from ledger record {last['seq']}"}
        rid = INTENT_PREFIX + sha256(json.dumps([previous, last["record_id"], last["seq"]]).encode())[:32]
        stored = self._write(record, rid, pointer_body(last), raw)
        logger.warning("%s: %s restored from ledger record %s (champion %s) by %s; ledger record %s records it",
                       self.model, self.pointer.key, last["seq"], last["version"], actor, stored["seq"])
        return {**plan, "status": "repaired", "repair_seq": stored["seq"]}

    def _raw(self) -> tuple[bytes, str] | None:
        """The pointer's bytes and etag as stored (None: there is none)."""
        try:
            return self.layout.store.get_with_etag(self.pointer.key)
        except NoSuchKey:
            return None

    def _problem(self, raw: tuple[bytes, str] | None) -> tuple[str | None, dict[str, Any] | None]:
        """(why the ledger does not explain the pointer ``raw``, None when it does; the record explaining it: the
        ledger's, or a crashed move's intent that the next registry call appends, None without a champion)."""
        try:
            champion = self.pointer.parse(*raw) if raw is not None else None
            return None, self.pointer.reconciled(champion, repair=False)[1]
        except (UnexplainedPointer, MetadataError) as exc:  # the ledger was verified: these are the pointer's
            return str(exc), None

    def _write(self, record: dict[str, Any], rid: str, body: bytes, raw: tuple[bytes, str] | None) -> dict[str, Any]:
        """Intent, compare-and-swap against the inspected bytes, ledger record; the stored ledger record."""
        intent = json.dumps({**record, "record_id": rid}, sort_keys=True).encode()
        with contextlib.suppress(PreconditionFailed):  # a retried repair of the same pointer: its intent stands
            self.layout.store.put_bytes(self.layout.key("intents", f"{rid}.json"), intent, if_none_match="*")
        try:
            if raw is None:
                self.layout.store.put_bytes(self.pointer.key, body, if_none_match="*")
            else:
                self.layout.store.put_bytes(self.pointer.key, body, if_match=raw[1])
        except PreconditionFailed:
            raise RegistryError(f"{self.model}: {self.pointer.key} changed while it was repaired (it was "
                                f"{'missing' if raw is None else 'sha256 ' + sha256(raw[0])}); nothing was "
                                "written to it: run `tl registry repair --from-ledger` again") from None
        stored, _ = self.ledger.append(record, record_id=rid)
        return stored

    def _complete_interrupted(self, keys: list[str], raw: tuple[bytes, str] | None) -> None:
        """Append the record of a repair that swapped the pointer but died before its ledger record."""
        if raw is None:
            return
        known = {self.ledger.record(k).get("record_id") for k in keys}
        for key in self.layout.store.list(self.layout.key("intents", INTENT_PREFIX)):
            rid = key.rsplit("/", 1)[1].removesuffix(".json")
            if rid in known:
                continue
            intent = self.layout.json(key, "the intent record of a repair")
            restored = next((self.ledger.record(k) for k in keys
                             if self.ledger.record(k).get("record_id") == intent.get("restored_record_id")), None)
            if restored is not None and pointer_body(restored) == raw[0]:  # its swap happened: record it
                stored, _ = self.ledger.append({k: v for k, v in intent.items() if k != "record_id"}, record_id=rid)
                logger.warning("%s: recorded the interrupted repair %s as ledger record %s", self.model, rid,
                               stored["seq"])
