"""The model registry on the object store (DESIGN.md "Registry"): a small :class:`Registry` facade over parts
with one concept each.

    names       model names, version numbers, the paths of files inside a version
    layout      the keys under registry/<model>/ and how metadata objects are read
    versions    claiming a number, copying a run in, the manifest (written last)
    integrity   checksums against the manifest, verified local copies, the golden ONNX check
    ledger      append-only, gapless, idempotent records
    pointer     the champion pointer, trusted only when the ledger (or a crashed move's intent) explains it
    moves       compare-and-swap of the pointer: promote, rollback
    gc          collecting old versions without ever corrupting one
    repair      restoring a champion pointer the ledger does not explain from the ledger's latest move

Commit points: a version exists once its manifest is written; a promotion or rollback happens when the
pointer's compare-and-swap succeeds (see :mod:`tl_core.registry.pointer` for how a crash in between is repaired).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tl_core.artifacts import PromotionOverride, VersionManifest
from tl_core.config import CACHE_DIR, ModelSpec
from tl_core.errors import (
    ConflictError,
    IntegrityError,
    MetadataError,
    PromotionRefused,
    RegistryError,
    UnexplainedPointer,
)
from tl_core.registry.gc import Collector
from tl_core.registry.integrity import GOLDEN_TOLERANCE, Integrity
from tl_core.registry.layout import GC_MARKER, KEPT_AFTER_GC, POINTER_ACTIONS, Layout
from tl_core.registry.ledger import Ledger
from tl_core.registry.moves import Moves
from tl_core.registry.names import (
    RECORD_ID_PATTERN,
    SAFE_SUFFIXES,
    SEGMENT_PATTERN,
    VERSION_PATTERN,
    check_model_name,
    check_relpath,
    check_version,
)
from tl_core.registry.pointer import Champion, Pointer
from tl_core.registry.policy import promotion_problems, rejection_of
from tl_core.registry.repair import Repairer
from tl_core.registry.versions import OPTIONAL_RUN_FILES, Versions
from tl_core.store import ObjectStore, open_store

if TYPE_CHECKING:
    from tl_core.runs import RunContext

__all__ = [
    "CACHE_DIR", "GC_MARKER", "GOLDEN_TOLERANCE", "KEPT_AFTER_GC", "OPTIONAL_RUN_FILES", "POINTER_ACTIONS",
    "RECORD_ID_PATTERN", "SAFE_SUFFIXES", "SEGMENT_PATTERN", "VERSION_PATTERN", "Champion",
    "ConflictError", "IntegrityError", "MetadataError", "PromotionOverride", "PromotionRefused", "Registry",
    "RegistryError", "UnexplainedPointer",
    "check_model_name", "check_relpath", "check_version",
]


def _default_cache_dir() -> Path:
    # This module's global, read at call time: tests monkeypatch tl_core.registry.CACHE_DIR.
    return CACHE_DIR / "registry"


class Registry:
    """One model's registry: the facade the CLI, the pipeline, serving and the plugin use."""

    def __init__(self, store_uri: str | ObjectStore, model: str, cache_dir: Path | None = None) -> None:
        check_model_name(model)  # before the store is opened, as a bad name is the caller's first mistake
        store = open_store(store_uri) if isinstance(store_uri, str) else store_uri
        self._layout = Layout(store, model)
        self._ledger = Ledger(self._layout)
        self._versions = Versions(self._layout, self._ledger)
        self._integrity = Integrity(self._layout, self._versions, cache_dir or _default_cache_dir())
        self._pointer = Pointer(self._layout, self._ledger, self._integrity)
        self._moves = Moves(self._pointer, self._ledger, self._versions, self._integrity)
        self._collector = Collector(self._layout, self._ledger, self._pointer)
        self._repairer = Repairer(self._layout, self._ledger, self._pointer)

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> Registry:
        return cls(spec.registry_root, spec.name)

    @property
    def model(self) -> str:
        return self._layout.model

    @property
    def store(self) -> ObjectStore:
        return self._layout.store

    @property
    def prefix(self) -> str:
        return self._layout.prefix

    @property
    def cache_dir(self) -> Path:
        return self._integrity.cache_dir

    @cache_dir.setter
    def cache_dir(self, value: Path) -> None:
        self._integrity.cache_dir = value

    # ---------------------------------------------------------------- versions
    def list_versions(self, include_incomplete: bool = False) -> list[str]:
        """Complete versions (a manifest, not collected); with include_incomplete every version number in use."""
        return self._versions.list_versions(include_incomplete)

    def show(self, version: str) -> dict[str, Any]:
        """The version's manifest as JSON (for display; code reads :meth:`manifest`)."""
        return self._versions.show(version)

    def manifest(self, version: str) -> VersionManifest:
        """The version's manifest, parsed (RegistryError when it does not exist or was collected)."""
        return self._versions.manifest(version)

    def model_card(self, version: str) -> str:
        """The version's MODEL_CARD.md (Hugging Face model-card layout), checked against its manifest."""
        return self._versions.model_card(version)

    def version_of_run(self, run_id: str) -> str | None:
        """The version a run registered as (run ids are made key-safe the way RunContext does)."""
        return self._layout.version_of_run(run_id)

    def register(self, run: RunContext, shadow: bool = False, actor: str = "tl") -> str:
        """Copy a run's selected model and evidence into a new immutable version (idempotent per run)."""
        return self._versions.register(run, shadow, actor)

    # ---------------------------------------------------------------- integrity
    def verify(self, version: str) -> dict[str, Any]:
        """Every file present in the store with its manifest checksum; IntegrityError names the first bad file."""
        return self._integrity.verify(version).model_dump(mode="json")

    def load_version(self, version: str, verify_store: bool = False) -> Path:
        """A verified local copy of a version (only safetensors, JSON, ONNX, npz, tokenizer files; no pickles).

        Local files whose checksum matches the manifest are reused unless ``verify_store``, which re-reads and
        checks every file in the store (the rollback precondition).
        """
        return self._integrity.load_version(version, verify_store)

    def check_loadable(self, version: str) -> None:
        """Rollback preconditions: checksums, the model files parse, the ONNX reproduces its golden logits."""
        self._integrity.check_loadable(version)

    # ---------------------------------------------------------------- champion + ledger
    def champion(self, repair: bool = True) -> Champion | None:
        """The champion, once the ledger explains the pointer (UnexplainedPointer otherwise: fail closed).

        ``repair=False`` never writes (a reader such as the webserver); the ledger record of a crashed move is
        then left for the next writer to append.
        """
        return self._pointer.champion(repair)

    def reconcile(self, champion: Champion | None = None, repair: bool = True) -> dict[str, Any] | None:
        """The ledger record that made the current pointer champion (None with no champion).

        A pointer the ledger does not explain raises UnexplainedPointer naming the file; a move whose process
        died between its swap and its ledger append is appended from its intent (unless ``repair`` is False).
        """
        return self._pointer.reconcile(champion, repair)

    def ledger(self) -> list[dict[str, Any]]:
        return self._ledger.records()

    def history(self, repair: bool = True) -> list[dict[str, Any]]:
        self.reconcile(repair=repair)
        return self.ledger()

    def record_rejection(self, run_id: str, reasons: list[str], actor: str, rejected: bool = True) -> int:
        """A 'reject' ledger record (idempotent for the same run and reasons, e.g. a retried task); ``rejected``
        False: the run ended without a promotion but nobody rejected it (its version stays promotable)."""
        return self._ledger.record_rejection(run_id, reasons, actor, rejected)

    def promotion_problems(self, version: str, evidence_hash: str | None = None) -> list[str]:
        """Why the promotion policy refuses ``version`` (empty: it would promote); see tl_core.registry.policy."""
        manifest = self._versions.manifest(version)
        return promotion_problems(manifest, rejection_of(self._ledger.records(), manifest.run_id), evidence_hash)

    def promote(self, version: str, expect_champion: str | None, approval: dict[str, Any] | None, actor: str,
                reason: str = "", evidence_hash: str | None = None,
                override: PromotionOverride | None = None) -> dict[str, Any]:
        """Compare-and-swap the champion to ``version`` (verified first); ConflictError names the champion.

        The promotion policy (tl_core.registry.policy) is applied first: a version whose gate did not PASS, a
        shadow or rejected version, or an ``evidence_hash`` other than the one registered with the version is
        refused (PromotionRefused naming each reason) unless ``override`` says who and why; the ledger keeps it.
        Without ``evidence_hash`` the registered one is what the promotion rests on.

        Returns the ledger record with ``made_now``: True when this call moved the pointer, False when the same
        promotion (version, expected champion, evidence) had already been made - by a retry's first attempt or a
        concurrent identical call - and the record returned is that earlier one.
        """
        return self._moves.promote(version, expect_champion, approval, actor, reason, evidence_hash, override)

    def default_rollback_target(self) -> str | None:
        """The latest earlier champion that still exists and was never rolled back from."""
        return self._moves.default_rollback_target()

    def rollback(self, to: str | None, reason: str, actor: str) -> dict[str, Any]:
        """Point the champion at ``to`` (default: the previous champion) after checking that it loads."""
        return self._moves.rollback(to, reason, actor)

    def gc(self, keep: int, dry_run: bool = False, pending_runs: tuple[str, ...] = ()) -> dict[str, Any]:
        """Delete versions that are neither among the last ``keep`` champions nor referenced by a pending run.

        The champion is never deleted, nor its rollback target (the version ``rollback`` without a target would
        restore): it is in ``kept`` and named by ``rollback_target`` in the result (absent when there is none).
        A collected version is marked (gc.json) before anything is deleted, so an interrupted gc leaves a collected
        version, never a corrupt one; it keeps its claim.json and marker, so its number is never reused. A
        collected run registers again as a new version. Racing a promotion or rollback is safe: gc marks first,
        then rewrites the pointer by compare-and-swap and deletes only if that succeeded, while a pointer move
        refuses a marked version after reading the pointer it swaps (with no champion yet, run gc when no first
        promotion is in flight).
        """
        return self._collector.gc(keep, dry_run, pending_runs)

    def repair_pointer(self, apply: bool = False, actor: str = "tl") -> dict[str, Any]:
        """Restore a champion pointer the ledger does not explain (unreadable, hand-edited, deleted) from the
        ledger's latest move, by compare-and-swap, recording a ``repair`` ledger record by ``actor``.

        Without ``apply`` nothing is written: ``status`` is 'would_repair' (with the ``problem`` and the bytes it
        would ``write``) or 'consistent' (nothing to repair); with it, 'repaired' or 'consistent'. RegistryError
        when the ledger records no promotion to restore, LedgerCorrupt when the ledger itself is damaged.
        """
        return self._repairer.repair(apply, actor)
