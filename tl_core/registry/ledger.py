"""The ledger: append-only, gapless, create-only records of every registration and pointer move.

Every record has a ``record_id`` and an append is a no-op when a record with that id is already there, so a
repair racing the original append (or a retried task) never records a change twice.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from tl_core.errors import MetadataError, PreconditionFailed, RegistryError
from tl_core.registry.layout import POINTER_ACTIONS, Layout, now, sha256


class Ledger:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._records: dict[str, dict[str, Any]] = {}

    @property
    def model(self) -> str:
        return self.layout.model

    def records(self) -> list[dict[str, Any]]:
        return [self.record(k) for k in self.keys()]

    def keys(self) -> list[str]:
        """The ledger's keys in order; refuses a ledger with a gap (records are numbered 1..n)."""
        keys = sorted(self.layout.store.list(self.layout.key("ledger") + "/"))
        expected = [self.layout.key("ledger", f"{i:08d}.json") for i in range(1, len(keys) + 1)]
        if keys != expected:
            bad, want = next((k, e) for k, e in zip(keys, expected, strict=True) if k != e)
            raise RegistryError(f"{self.model}: the ledger is not gapless: found {bad}, expected {want}")
        return keys

    def record(self, key: str) -> dict[str, Any]:
        """A ledger record; cached, since records are create-only and never change."""
        if key not in self._records:
            record = self.layout.json(key, "a ledger record object")
            seq = int(key.rsplit("/", 1)[1].split(".")[0])
            if record.get("seq") != seq or not isinstance(record.get("action"), str):
                raise MetadataError(f"{self.model}: {key} is unreadable: 'seq' is {record.get('seq')!r} and "
                                    f"'action' is {record.get('action')!r}; expected seq {seq} and an action name")
            self._records[key] = record
        return self._records[key]

    def last_move(self, keys: list[str]) -> dict[str, Any] | None:
        """The newest promote/rollback record among ``keys``."""
        for key in reversed(keys):
            if self.record(key).get("action") in POINTER_ACTIONS:
                return self.record(key)
        return None

    def find(self, keys: list[str], record_id: str, generation: int | None) -> dict[str, Any] | None:
        """The record with ``record_id`` among ``keys``, searched newest first.

        Pointer moves carry a generation (the replaced champion's + 1) and reach the ledger in generation order:
        a move is only attempted once the champion it replaces is in the ledger. So the search for a move of
        generation g stops at the first move of a lower generation: if it was not found by then, it is missing.
        """
        for key in reversed(keys):
            rec = self.record(key)
            if rec.get("record_id") == record_id:
                return rec
            if (generation is not None and rec.get("action") in POINTER_ACTIONS
                    and isinstance(rec.get("generation"), int) and rec["generation"] < generation):
                return None
        return None

    def append(self, record: dict[str, Any], record_id: str | None = None) -> tuple[dict[str, Any], bool]:
        """Append with the next gapless sequence number (create-only, retried on conflict).

        Returns (the stored record with its ``seq``, whether it was appended now). Idempotent on ``record_id``:
        returns (that record, False) when it is already in the ledger. The check
        and the sequence number come from one listing, and the create-only write at ``len + 1`` only succeeds
        if nothing was appended since, so two appenders of the same record can never both succeed. Refuses to
        append behind a ledger tail it cannot read.
        """
        record = {"at": now(), **record, "model": self.model, "record_id": record_id or uuid.uuid4().hex}
        generation = record.get("generation") if record.get("action") in POINTER_ACTIONS else None
        for attempt in range(400):
            keys = self.keys()
            if keys:
                try:
                    self.record(keys[-1])
                except MetadataError as exc:
                    raise MetadataError(f"refusing to append to the ledger of {self.model} behind an unreadable "
                                        f"record: {exc}") from None
            if record_id is not None and (existing := self.find(keys, record_id, generation)) is not None:
                return existing, False
            seq = len(keys) + 1
            stored = {**record, "seq": seq}
            try:
                self.layout.store.put_bytes(self.layout.key("ledger", f"{seq:08d}.json"),
                                            json.dumps(stored, sort_keys=True).encode(), if_none_match="*")
                return stored, True
            except PreconditionFailed:
                time.sleep(min(0.05, 0.002 * (attempt + 1)))
        raise RegistryError(f"{self.model}: could not append to the ledger after 400 attempts")

    def record_rejection(self, run_id: str, reasons: list[str], actor: str, rejected: bool = True) -> int:
        """A 'reject' ledger record (idempotent for the same run and reasons, e.g. a retried task).

        ``rejected``: the gate or a person rejected the run, so the promotion policy refuses its version; False
        records a run that ended without a promotion for another reason (no answer in time, a failed task)."""
        text = "; ".join(str(r) for r in reasons)[:4000]
        rid = "reject-" + sha256(json.dumps([run_id, text]).encode())[:32]
        stored, _ = self.append({"action": "reject", "run_id": run_id, "actor": actor, "reason": text,
                                 "rejected": rejected}, record_id=rid)
        return int(stored["seq"])
