"""The model registry on the object store (DESIGN.md "Registry").

    registry/<model>/versions/<version>/...           immutable, create-only; manifest.json written last
    registry/<model>/versions/<version>/claim.json    first write: reserves the version number
    registry/<model>/by-run/<run_id>.json             which version a run registered as (idempotency)
    registry/<model>/champion.json                    the pointer; changed only by compare-and-swap
    registry/<model>/ledger/<seq>.json                append-only, gapless, create-only

Commit points: a version exists once its manifest is written; a promotion or rollback happens when the
pointer's compare-and-swap succeeds. The pointer carries the whole ledger record it commits, so a crash
between the pointer write and the ledger append is repaired by the next registry call (the record is
appended then): the ledger always ends up with exactly one record per pointer change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.cache import CACHE_DIR
from tl_core.config import NAME_PATTERN, ModelSpec
from tl_core.errors import NoSuchKey, PreconditionFailed, TLError
from tl_core.store import ObjectStore, join_key, open_store

logger = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^v[0-9]{4,9}$")
# Only these are ever read back from a version: no pickles, no code.
SAFE_SUFFIXES = (".safetensors", ".json", ".onnx", ".npz", ".txt", ".html", ".parquet")
# What register copies from a run (relative to the run prefix); the selected model's folder is added.
OPTIONAL_RUN_FILES = ("export/model.onnx", "export/golden.npz", "export/parity.json", "evaluation/report.json",
                      "evaluation/report.html", "gate/decision.json", "snapshot/manifest.json", "spec.json")
GOLDEN_TOLERANCE = 1e-4


class RegistryError(TLError):
    """A registry operation was refused; the message says why."""


class ConflictError(RegistryError):
    """Another promotion or rollback moved the champion first."""


class IntegrityError(RegistryError):
    """A version's files do not match its manifest."""


@dataclass(frozen=True)
class Champion:
    version: str
    etag: str
    record: dict[str, Any]

    @property
    def previous(self) -> str | None:
        return self.record.get("previous")  # type: ignore[no-any-return]


def check_model_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(f"invalid model name {name!r}: expected lowercase letters, digits, '-' or '_' (no '/', '..')")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.match(version):
        raise ValueError(f"invalid version {version!r}: expected 'v' followed by 4-9 digits, e.g. v0003")
    return version


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "timm", "transformers", "peft", "onnx", "onnxruntime", "scikit-learn", "tl-retrain"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


class Registry:
    def __init__(self, store_uri: str | ObjectStore, model: str, cache_dir: Path | None = None) -> None:
        self.store = open_store(store_uri) if isinstance(store_uri, str) else store_uri
        self.model = check_model_name(model)
        self.prefix = join_key("registry", model)
        self.cache_dir = cache_dir or CACHE_DIR / "registry"

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> Registry:
        return cls(spec.registry_root, spec.name)

    def _k(self, *parts: str) -> str:
        return join_key(self.prefix, *parts)

    def _json(self, key: str) -> Any:
        return json.loads(self.store.get_bytes(key))

    # ---------------------------------------------------------------- versions
    def list_versions(self, include_incomplete: bool = False) -> list[str]:
        names = set()
        for key in self.store.list(self._k("versions") + "/"):
            rest = key[len(self._k("versions")) + 1 :].split("/")
            if len(rest) >= 2 and VERSION_PATTERN.match(rest[0]) and (include_incomplete or rest[1] == "manifest.json"):
                names.add(rest[0])
        return sorted(names)

    def show(self, version: str) -> dict[str, Any]:
        check_version(version)
        try:
            return self._json(self._k("versions", version, "manifest.json"))  # type: ignore[no-any-return]
        except NoSuchKey:
            raise RegistryError(
                f"{self.model}: version {version} does not exist or is incomplete (no manifest)"
            ) from None

    def register(self, run: Any, shadow: bool = False, actor: str = "tl") -> str:
        """Copy a run's selected model and evidence into a new immutable version (idempotent per run)."""
        self.reconcile()
        run_key = self._k("by-run", f"{run.run_id}.json")
        if self.store.exists(run_key):
            version = self._json(run_key)["version"]
            if self.store.exists(self._k("versions", version, "manifest.json")):
                return str(version)
        else:
            version = self._claim_version(run.run_id)
            try:
                self.store.put_bytes(run_key, json.dumps({"version": version}).encode(), if_none_match="*")
            except PreconditionFailed:  # the same run registered concurrently: theirs wins
                version = self._json(run_key)["version"]
        candidate = run.read_json("candidate.json")
        strategy = candidate["selected"]
        sources = [k for k in run.store.list(run.model_key(strategy) + "/") if "/resume/" not in k]
        sources += [run.key(rel) for rel in OPTIONAL_RUN_FILES if run.store.exists(run.key(rel))]
        sources.append(run.key("candidate.json"))
        required = {run.model_key(strategy, "model.safetensors"), run.model_key(strategy, "model_config.json")}
        if not required <= set(sources):
            raise RegistryError(f"run {run.run_id}: missing {sorted(required - set(sources))}; cannot register")
        files: dict[str, dict[str, Any]] = {}
        for src in sorted(sources):
            rel = src[len(run.prefix) + 1 :]
            if not rel.endswith(SAFE_SUFFIXES) and "/preprocessing/" not in rel:
                continue
            data = run.store.get_bytes(src)
            dest = self._k("versions", version, rel)
            try:
                self.store.put_bytes(dest, data, if_none_match="*")
            except PreconditionFailed:
                if _sha256(self.store.get_bytes(dest)) != _sha256(data):
                    raise IntegrityError(
                        f"{self.model} {version}: {rel} already exists with different content"
                    ) from None
            files[rel] = {"sha256": _sha256(data), "size": len(data)}
        manifest = self._manifest(run, version, strategy, files, shadow, candidate)
        try:
            self.store.put_bytes(self._k("versions", version, "manifest.json"),
                                 json.dumps(manifest, indent=2, sort_keys=True).encode(), if_none_match="*")
        except PreconditionFailed:
            pass  # a concurrent registration of the same run finished first; the version is complete
        self._append({"action": "register", "version": version, "run_id": run.run_id, "shadow": shadow,
                      "actor": actor, "reason": "registered from run"})
        return str(version)

    def _claim_version(self, run_id: str) -> str:
        for _ in range(1000):
            existing = self.list_versions(include_incomplete=True)
            seq = max((int(v[1:]) for v in existing), default=0) + 1
            version = f"v{seq:04d}"
            try:
                self.store.put_bytes(self._k("versions", version, "claim.json"),
                                     json.dumps({"run_id": run_id, "at": _now()}).encode(), if_none_match="*")
                return version
            except PreconditionFailed:
                continue
        raise RegistryError(f"{self.model}: could not allocate a version number after 1000 attempts")

    def _manifest(self, run: Any, version: str, strategy: str, files: dict[str, Any], shadow: bool,
                  candidate: dict[str, Any]) -> dict[str, Any]:
        def optional(rel: str) -> Any:
            return run.read_json(rel) if run.store.exists(run.key(rel)) else {}

        config = run.read_json(f"models/{strategy}/model_config.json")
        report = optional("evaluation/report.json")
        cand_metrics = report.get("models", {}).get(strategy, {}).get("overall", {})
        return {
            "model": self.model, "version": version, "run_id": run.run_id, "shadow": shadow, "created_at": _now(),
            "snapshot_hash": optional("snapshot/manifest.json").get("content_hash"),
            "backbone": {"id": config["backbone"].get("name"), "revision": config["backbone"].get("revision"),
                         "library": config["backbone"].get("library")},
            "strategy": strategy, "strategy_config": config.get("train"), "seeds": {"train": config.get("seed")},
            "candidate_selection": candidate, "library_versions": _library_versions(),
            "metrics": {k: v for k, v in cand_metrics.items() if isinstance(v, int | float)},
            "temperature": report.get("models", {}).get(strategy, {}).get("temperature"),
            "gate": {k: optional("gate/decision.json").get(k) for k in ("passed", "evidence_hash", "bootstrap")},
            "files": files,
        }

    def verify(self, version: str) -> dict[str, Any]:
        """Every file present with its manifest checksum; raises IntegrityError naming the first bad file."""
        manifest = self.show(version)
        for rel, meta in manifest["files"].items():
            try:
                data = self.store.get_bytes(self._k("versions", version, rel))
            except NoSuchKey:
                raise IntegrityError(f"{self.model} {version} is unusable: file {rel} is missing") from None
            if _sha256(data) != meta["sha256"]:
                raise IntegrityError(f"{self.model} {version} is unusable: file {rel} does not match its manifest "
                                     f"checksum (sha256 {_sha256(data)[:12]}..., expected {meta['sha256'][:12]}...)")
        return manifest

    def load_version(self, version: str) -> Path:
        """A verified local copy of a version (only safetensors, JSON, ONNX, npz and tokenizer files)."""
        manifest = self.verify(version)
        dest = self.cache_dir / self.model / version
        for rel, meta in manifest["files"].items():
            if not rel.endswith(SAFE_SUFFIXES) and "/preprocessing/" not in rel:
                raise IntegrityError(f"{self.model} {version}: refusing to load {rel} (not safetensors/JSON/ONNX)")
            path = dest / rel
            if path.exists() and _sha256(path.read_bytes()) == meta["sha256"]:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            data = self.store.get_bytes(self._k("versions", version, rel))
            if _sha256(data) != meta["sha256"]:
                raise IntegrityError(f"{self.model} {version}: file {rel} changed while loading")
            tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.part")
            tmp.write_bytes(data)
            tmp.replace(path)
        return dest

    def check_loadable(self, version: str) -> None:
        """Rollback preconditions: checksums, the model files parse, the ONNX reproduces its golden logits."""
        from safetensors.numpy import load as load_safetensors

        path = self.load_version(version)
        manifest = self.show(version)
        strategy = manifest["strategy"]
        try:
            json.loads((path / "models" / strategy / "model_config.json").read_text())
            tensors = load_safetensors((path / "models" / strategy / "model.safetensors").read_bytes())
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{self.model} {version}: the model does not load: {exc}") from None
        if not tensors:
            raise IntegrityError(f"{self.model} {version}: model.safetensors holds no tensors")
        onnx_path, golden_path = path / "export" / "model.onnx", path / "export" / "golden.npz"
        if onnx_path.exists():
            import onnxruntime as ort

            if not golden_path.exists():
                raise IntegrityError(f"{self.model} {version}: export/model.onnx has no export/golden.npz to check")
            with np.load(golden_path, allow_pickle=False) as z:
                feeds = {k[len("input."):]: z[k] for k in z.files if k.startswith("input.")}
                expected = z["logits"]
            try:
                got = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
            except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; any is a refusal
                raise IntegrityError(f"{self.model} {version}: export/model.onnx does not run: {exc}") from None
            diff = float(np.abs(got - expected).max(initial=0.0))
            if diff > GOLDEN_TOLERANCE:
                raise IntegrityError(f"{self.model} {version}: ONNX logits differ from the golden predictions by "
                                     f"{diff:.3g} (tolerance {GOLDEN_TOLERANCE})")

    # ---------------------------------------------------------------- champion + ledger
    def champion(self) -> Champion | None:
        self.reconcile()
        return self._read_champion()

    def _read_champion(self) -> Champion | None:
        try:
            data, etag = self.store.get_with_etag(self._k("champion.json"))
        except NoSuchKey:
            return None
        record = json.loads(data)
        return Champion(record["version"], etag, record)

    def ledger(self) -> list[dict[str, Any]]:
        keys = self.store.list(self._k("ledger") + "/")
        return [self._json(k) for k in sorted(keys)]

    def _append(self, record: dict[str, Any]) -> int:
        """Append with the next gapless sequence number (create-only, retried on conflict)."""
        record = {"at": _now(), "model": self.model, **record}
        for _ in range(200):
            seq = len(self.store.list(self._k("ledger") + "/")) + 1
            try:
                self.store.put_bytes(self._k("ledger", f"{seq:08d}.json"),
                                     json.dumps({"seq": seq, **record}, sort_keys=True).encode(), if_none_match="*")
                return seq
            except PreconditionFailed:
                time.sleep(0.005)
        raise RegistryError(f"{self.model}: could not append to the ledger after 200 attempts")

    def reconcile(self) -> None:
        """Append the ledger record of a pointer change whose process died before appending it."""
        champion = self._read_champion()
        if champion is None:
            return
        record_id = champion.record.get("record_id")
        if record_id and not any(r.get("record_id") == record_id for r in self.ledger()):
            logger.warning("%s: repairing the ledger with the record of champion %s", self.model, champion.version)
            self._append({k: v for k, v in champion.record.items() if k not in ("at", "seq", "model")})

    def _move_pointer(self, action: str, version: str, expect: str | None, actor: str, reason: str,
                      extra: dict[str, Any]) -> dict[str, Any]:
        self.reconcile()
        current = self._read_champion()
        current_version = current.version if current else None
        if current_version != expect:
            raise ConflictError(f"{self.model}: cannot {action} {version}: expected champion {expect or 'none'}, "
                                f"but the current champion is {current_version or 'none'}")
        record = {"action": action, "record_id": uuid.uuid4().hex, "version": version, "previous": current_version,
                  "actor": actor, "reason": reason, "at": _now(), **extra}
        body = json.dumps(record, sort_keys=True).encode()
        try:
            if current is None:
                self.store.put_bytes(self._k("champion.json"), body, if_none_match="*")
            else:
                self.store.put_bytes(self._k("champion.json"), body, if_match=current.etag)
        except PreconditionFailed:
            now = self._read_champion()
            raise ConflictError(f"{self.model}: cannot {action} {version}: the champion changed concurrently; "
                                f"the current champion is {now.version if now else 'none'}") from None
        record["seq"] = self._append({k: v for k, v in record.items() if k != "at"})
        return record

    def promote(self, version: str, expect_champion: str | None, approval: dict[str, Any] | None, actor: str,
                reason: str = "", evidence_hash: str | None = None) -> dict[str, Any]:
        check_version(version)
        manifest = self.verify(version)
        if manifest.get("shadow") and not (approval or {}).get("allow_shadow"):
            raise RegistryError(f"{self.model} {version} is a shadow version (backfill); promote it only with "
                                "approval.allow_shadow")
        return self._move_pointer("promote", version, expect_champion, actor, reason or "approved promotion",
                                  {"approval": approval or {}, "evidence_hash": evidence_hash})

    def rollback(self, to: str | None, reason: str, actor: str) -> dict[str, Any]:
        if not reason.strip():
            raise ValueError("rollback needs a reason (--reason TEXT)")
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.model}: there is no champion to roll back")
        target = to or current.previous
        if target is None:
            raise RegistryError(f"{self.model}: champion {current.version} has no previous champion; pass --to")
        check_version(target)
        if target == current.version:
            raise RegistryError(f"{self.model}: {target} is already the champion")
        self.check_loadable(target)
        return self._move_pointer("rollback", target, current.version, actor, reason, {})

    def record_rejection(self, run_id: str, reasons: list[str], actor: str) -> int:
        return self._append({"action": "reject", "run_id": run_id, "actor": actor, "reason": "; ".join(reasons)[:4000]})

    def history(self) -> list[dict[str, Any]]:
        self.reconcile()
        return self.ledger()

    def gc(self, keep: int, dry_run: bool = False, pending_runs: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """Delete versions that are neither among the last ``keep`` champions nor referenced by a pending run."""
        if keep < 1:
            raise ValueError(f"gc --keep must be at least 1, got {keep}")
        champion = self.champion()
        champions: list[str] = []
        for r in reversed(self.ledger()):
            if r.get("action") in ("promote", "rollback") and r["version"] not in champions:
                champions.append(r["version"])
        protected = set(champions[:keep]) | ({champion.version} if champion else set())
        for run_id in pending_runs:
            key = self._k("by-run", f"{run_id}.json")
            if self.store.exists(key):
                protected.add(self._json(key)["version"])
        doomed = [v for v in self.list_versions(include_incomplete=True) if v not in protected]
        if not dry_run:
            for v in doomed:
                for key in self.store.list(self._k("versions", v) + "/"):
                    self.store.delete(key)
        return {"deleted" if not dry_run else "would_delete": doomed, "kept": sorted(protected)}

