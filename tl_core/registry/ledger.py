"""The ledger: append-only, gapless, create-only records of every registration and pointer move.

Every record has a ``record_id`` and an append is a no-op when a record with that id is already there, so a
repair racing the original append (or a retried task) never records a change twice.

Records are hash-chained: each one appended carries ``prev_sha256``, the sha256 of the stored bytes of the record
before it, and every append first verifies the whole chain (:meth:`Ledger.verify`), so nothing is appended behind
a record that is unreadable or was changed after a later record was written. Records written before the chain
existed carry no link; the chain starts at the first record that does.

Only keys named like a record (``ledger/<8 digits>.json``) are records: a folder placeholder (``ledger/``, what
the S3 console's "Create folder" writes) is skipped, anything else is logged once as ignored.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from tl_core.errors import LedgerCorrupt, MetadataError, PreconditionFailed, RegistryError
from tl_core.registry.layout import POINTER_ACTIONS, Layout, now, parse_object, sha256

logger = logging.getLogger(__name__)

RECORD_NAME = re.compile(r"[0-9]{8,}\.json")
LINK = "prev_sha256"  # the sha256 of the previous record's stored bytes
LEDGER_FIELDS = ("seq", "model", LINK)  # what the ledger adds to a record (not part of a move's pointer body)
_IGNORED: set[tuple[str, str]] = set()  # (store, key) of non-record keys already logged: each is logged once


def rollback_target(records: list[dict[str, Any]], current: str | None, existing: set[str]) -> str | None:
    """The version a rollback without a target restores: the latest earlier champion in ``records`` that is in
    ``existing`` and was never rolled back from (None without a champion or such a version)."""
    if current is None:
        return None
    moves = [r for r in records if r.get("action") in POINTER_ACTIONS]
    rolled_back_from = {r.get("previous") for r in moves if r["action"] == "rollback"}
    for r in reversed(moves):
        v = r.get("version")
        if isinstance(v, str) and v != current and v not in rolled_back_from and v in existing:
            return v
    return None


class Ledger:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._records: dict[str, dict[str, Any]] = {}
        self._hashes: dict[str, str] = {}  # key -> sha256 of the record's stored bytes

    @property
    def model(self) -> str:
        return self.layout.model

    def records(self) -> list[dict[str, Any]]:
        return [self.record(k) for k in self.keys()]

    def keys(self) -> list[str]:
        """The ledger's keys in order; refuses a ledger with a gap (records are numbered 1..n)."""
        prefix = self.layout.key("ledger") + "/"
        keys = sorted(k for k in self.layout.store.list(prefix) if self._is_record(k, k[len(prefix):]))
        expected = [self.layout.key("ledger", f"{i:08d}.json") for i in range(1, len(keys) + 1)]
        if keys != expected:
            bad, want = next((k, e) for k, e in zip(keys, expected, strict=True) if k != e)
            raise RegistryError(f"{self.model}: the ledger is not gapless: found {bad}, expected {want}")
        return keys

    def _is_record(self, key: str, name: str) -> bool:
        """Whether ``key`` (``name`` inside the ledger folder) is a record; other keys are ignored."""
        if RECORD_NAME.fullmatch(name):
            return True
        if name and not name.endswith("/") and (self.layout.store.uri, key) not in _IGNORED:
            _IGNORED.add((self.layout.store.uri, key))  # a folder placeholder ("ledger/") is skipped silently
            logger.warning("%s: ignoring %s in the ledger folder: not a ledger record (records are named "
                           "NNNNNNNN.json)", self.model, key)
        return False

    def record(self, key: str) -> dict[str, Any]:
        """A ledger record; cached, since records are create-only and never change."""
        if key not in self._records:
            data = self.layout.store.get_bytes(key)
            record = parse_object(self.model, key, data, "a ledger record object")
            seq = int(key.rsplit("/", 1)[1].split(".")[0])
            if record.get("seq") != seq or not isinstance(record.get("action"), str):
                raise MetadataError(f"{self.model}: {key} is unreadable: 'seq' is {record.get('seq')!r} and "
                                    f"'action' is {record.get('action')!r}; expected seq {seq} and an action name")
            self._records[key], self._hashes[key] = record, sha256(data)
        return self._records[key]

    def verify(self, keys: list[str] | None = None) -> list[str]:
        """The ledger's keys, once every record reads and links to the one before it (LedgerCorrupt naming the
        first bad record and how to restore it otherwise). Records are read once per Ledger (create-only)."""
        keys = self.keys() if keys is None else keys
        chained = False
        for i, key in enumerate(keys):
            try:
                record = self.record(key)
            except MetadataError as exc:
                raise LedgerCorrupt(f"refusing to append to the ledger of {self.model} behind an unreadable record: "
                                    f"{exc}; {self._restore(keys, i)}") from None
            link = record.get(LINK)
            if link is None and chained:
                raise LedgerCorrupt(f"{self.model}: ledger record {key} has no '{LINK}' although the records before "
                                    f"it are chained; refusing to append; {self._restore(keys, i)}")
            if link is not None and i > 0 and link != self._hashes[keys[i - 1]]:
                prev = keys[i - 1]
                raise LedgerCorrupt(f"{self.model}: ledger record {prev} changed after {key} was appended: its "
                                    f"sha256 is {self._hashes[prev]}, {key} recorded {link}; restore {prev} from a "
                                    "backup or the store's object versions; refusing to append")
            chained = chained or link is not None
        return keys

    def _restore(self, keys: list[str], i: int) -> str:
        """How to repair the bad record ``keys[i]``: restore it, to the bytes the next record's link names."""
        how = f"restore {keys[i]} from a backup or the store's object versions"
        try:
            link = self.record(keys[i + 1]).get(LINK) if i + 1 < len(keys) else None
        except MetadataError:
            link = None
        return f"{how} (the bytes whose sha256 is {link}, as {keys[i + 1]} recorded)" if link else how

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
        append behind a record it cannot read or whose hash no longer matches the chain (see :meth:`verify`).
        """
        record = {"at": now(), **record, "model": self.model, "record_id": record_id or uuid.uuid4().hex}
        generation = record.get("generation") if record.get("action") in POINTER_ACTIONS else None
        for attempt in range(400):
            keys = self.verify()
            if record_id is not None and (existing := self.find(keys, record_id, generation)) is not None:
                return existing, False
            seq = len(keys) + 1
            stored = {**record, "seq": seq, **({LINK: self._hashes[keys[-1]]} if keys else {})}
            key, data = self.layout.key("ledger", f"{seq:08d}.json"), json.dumps(stored, sort_keys=True).encode()
            try:
                self.layout.store.put_bytes(key, data, if_none_match="*")
                self._records[key], self._hashes[key] = stored, sha256(data)
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
