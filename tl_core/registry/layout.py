"""Where a model's registry lives in the object store, and how its metadata objects are read.

    registry/<model>/versions/<version>/...           immutable, create-only; manifest.json written last
    registry/<model>/versions/<version>/claim.json    first write: reserves the version number (kept by gc)
    registry/<model>/versions/<version>/gc.json       written first when gc collects the version (kept by gc)
    registry/<model>/by-run/<run_id>.json             which version a run registered as (idempotency)
    registry/<model>/champion.json                    the pointer; changed only by compare-and-swap
    registry/<model>/intents/<record_id>.json         create-only: a move's record, written before its swap
    registry/<model>/ledger/<seq>.json                append-only, gapless, create-only
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

from tl_core.errors import MetadataError, NoSuchKey
from tl_core.registry.names import VERSION_PATTERN, check_model_name
from tl_core.store import ObjectStore, join_key, key_safe

POINTER_ACTIONS = ("promote", "rollback")
GC_MARKER = "gc.json"  # written first when gc collects a version; with claim.json it stays, so numbers never recur
KEPT_AFTER_GC = {"claim.json", GC_MARKER}
RUN_LINK_SHAPE = '{"version": ..., "run_id": ...}'


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_object(model: str, key: str, data: bytes, expected: str) -> dict[str, Any]:
    """A JSON object read from ``key``; MetadataError names the key and what was expected."""
    try:
        value = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MetadataError(f"{model}: {key} is unreadable: not valid JSON ({exc}); expected {expected}") from None
    if not isinstance(value, dict):
        raise MetadataError(f"{model}: {key} is unreadable: it holds a JSON {type(value).__name__}; expected "
                            f"{expected}")
    return value


class Layout:
    """One model's registry keys in one store, and the reads every part of the registry shares."""

    def __init__(self, store: ObjectStore, model: str) -> None:
        self.model = check_model_name(model)
        self.store = store
        self.prefix = join_key("registry", model)

    def key(self, *parts: str) -> str:
        return join_key(self.prefix, *parts)

    def version_key(self, version: str, rel: str) -> str:
        return self.key("versions", version, rel)

    def run_key(self, run_id: str) -> str:
        """The by-run link of a run (run ids are made key-safe the way RunContext does)."""
        return self.key("by-run", f"{key_safe(run_id)}.json")

    def json(self, key: str, expected: str = "a JSON object") -> dict[str, Any]:
        """A registry metadata object; MetadataError names the key and what was expected."""
        return parse_object(self.model, key, self.store.get_bytes(key), expected)

    def version_field(self, key: str, doc: dict[str, Any]) -> str:
        version = doc.get("version")
        if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
            raise MetadataError(f"{self.model}: {key}: 'version' is {version!r}; expected a version such as v0001")
        return version

    def version_keys(self) -> dict[str, list[str]]:
        """Every version number in use, with the files (relative to the version) it holds."""
        base = self.key("versions") + "/"
        out: dict[str, list[str]] = {}
        for key in self.store.list(base):
            version, _, rest = key[len(base):].partition("/")
            if VERSION_PATTERN.fullmatch(version) and rest:
                out.setdefault(version, []).append(rest)
        return out

    def collected(self, version: str) -> bool:
        """Whether gc collected (or started collecting) ``version``."""
        return self.store.exists(self.version_key(version, GC_MARKER))

    def version_run(self, version: str) -> str | None:
        """The run that claimed ``version`` (None when its claim is missing or unreadable)."""
        try:
            return str(self.json(self.version_key(version, "claim.json"))["run_id"])
        except (NoSuchKey, KeyError, MetadataError):
            return None

    def version_of_run(self, run_id: str) -> str | None:
        """The version a run registered as."""
        key = self.run_key(run_id)
        if not self.store.exists(key):
            return None
        return self.version_field(key, self.json(key, RUN_LINK_SHAPE))
