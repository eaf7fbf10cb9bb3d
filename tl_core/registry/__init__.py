"""The model registry on the object store (DESIGN.md "Registry").

    registry/<model>/versions/<version>/...           immutable, create-only; manifest.json written last
    registry/<model>/versions/<version>/claim.json    first write: reserves the version number (kept by gc)
    registry/<model>/by-run/<run_id>.json             which version a run registered as (idempotency)
    registry/<model>/champion.json                    the pointer; changed only by compare-and-swap
    registry/<model>/intents/<record_id>.json         create-only: a move's record, written before its swap
    registry/<model>/ledger/<seq>.json                append-only, gapless, create-only

Commit points: a version exists once its manifest is written; a promotion or rollback happens when the
pointer's compare-and-swap succeeds. The pointer carries the whole ledger record it commits, and the mover
writes the same record as an intent before it swaps, so a crash between the pointer write and the ledger
append is repaired by the next registry call from the intent: what the mover wrote, never what the pointer
claims. Every ledger record has a ``record_id`` and an append is a no-op when a record with that id is
already there, so a repair racing the original append (or a retried task) never records a change twice.

The pointer is trusted only when the ledger explains it (see ``reconcile``): it is the ledger's latest move,
or the next move (previous = the ledger's champion, next generation) with a matching intent and a version
that verifies. Anything else - a hand-edited or restored champion.json - is refused with
:class:`UnexplainedPointer` naming the file, by readers (serving fails closed) and writers alike.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.cache import CACHE_DIR
from tl_core.config import NAME_PATTERN, ModelSpec
from tl_core.errors import AccessDenied, NoSuchKey, PreconditionFailed, TLError
from tl_core.store import ObjectStore, join_key, key_safe, open_store

logger = logging.getLogger(__name__)

# Always used with fullmatch: '$' alone would also match before a trailing newline ("v0001\n").
VERSION_PATTERN = re.compile(r"v[0-9]{4,9}")
# One path segment of a file inside a version: no '/', no '..', nothing outside this set.
SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RECORD_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # a pointer move's record id (uuid4 hex)
# The only file types a version may hold, and the only ones ever read back: no pickles, no code.
# (.model: sentencepiece tokenizers; .txt: vocab/merges; .html: the evidence report, never parsed.)
SAFE_SUFFIXES = (".safetensors", ".json", ".onnx", ".npz", ".txt", ".model", ".html")
# Transient training state of a run (torch pickles) - never part of a version.
SKIPPED_RUN_DIRS = ("resume",)
# What register copies from a run (relative to the run prefix); the selected model's folder is added.
OPTIONAL_RUN_FILES = ("export/model.onnx", "export/golden.npz", "export/parity.json", "evaluation/report.json",
                      "evaluation/report.html", "gate/decision.json", "snapshot/manifest.json", "spec.json")
GOLDEN_TOLERANCE = 1e-4
POINTER_ACTIONS = ("promote", "rollback")
GC_MARKER = "gc.json"  # written first when gc collects a version; with claim.json it stays, so numbers never recur
KEPT_AFTER_GC = {"claim.json", GC_MARKER}


class RegistryError(TLError):
    """A registry operation was refused; the message says why."""


class ConflictError(RegistryError):
    """Another promotion or rollback moved the champion first."""


class IntegrityError(RegistryError):
    """A version's files do not match its manifest, or do not load."""


class MetadataError(RegistryError):
    """Registry metadata (a manifest, the champion pointer, a ledger record) is unreadable or malformed."""


class UnexplainedPointer(RegistryError):
    """The champion pointer holds a change that the ledger and the intents cannot explain (e.g. a hand edit)."""


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


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: expected lowercase letters, digits, '-' or '_' "
                         f"(pattern {NAME_PATTERN.pattern}; no '/', no '..')")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"invalid version {version!r}: expected 'v' followed by 4-9 digits, e.g. v0003")
    return version


def check_relpath(rel: str, where: str) -> str:
    """A file path inside a version: segments of [A-Za-z0-9_.-], no '..', no absolute path, a safe type."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(not SEGMENT_PATTERN.fullmatch(p) or ".." in p for p in parts):
        raise ValueError(f"{where}: invalid file path {rel!r}: expected '/'-separated names of [A-Za-z0-9_.-] "
                         "without '..'")
    if not rel.endswith(SAFE_SUFFIXES):
        raise IntegrityError(f"{where}: refusing file {rel!r}: only {', '.join(SAFE_SUFFIXES)} files are allowed "
                             "(no pickles or code)")
    return rel


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "timm", "transformers", "peft", "safetensors", "onnx", "onnxruntime", "numpy",
                "scikit-learn", "tl-retrain"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def _parse_object(model: str, key: str, data: bytes, expected: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise MetadataError(f"{model}: {key} is unreadable: not valid JSON ({exc}); expected {expected}") from None
    if not isinstance(value, dict):
        raise MetadataError(f"{model}: {key} is unreadable: it holds a JSON {type(value).__name__}; expected "
                            f"{expected}")
    return value


def _pointer_problems(record: dict[str, Any]) -> list[str]:
    """What is wrong with a champion pointer's fields (empty when it is well-formed)."""
    def version(x: Any) -> bool:
        return isinstance(x, str) and VERSION_PATTERN.fullmatch(x) is not None

    checks: tuple[tuple[str, Any, str], ...] = (
        ("version", version, "a version such as v0001"),
        ("previous", lambda x: x is None or version(x), "null or a version"),
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


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields (ledger bookkeeping aside) in which two move records differ."""
    return sorted(k for k in (set(a) | set(b)) - {"seq", "model"} if a.get(k) != b.get(k))


def _promotion_of(champion: Champion) -> tuple[Any, ...]:
    """What makes two promotions the same request: version, action, expected champion, evidence."""
    return champion.version, champion.action, champion.previous, champion.record.get("evidence_hash")


def _check_npz(data: bytes, where: str) -> dict[str, np.ndarray]:
    """Read an npz without pickles; object arrays are refused."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as exc:
        raise IntegrityError(f"{where}: not a pickle-free npz archive: {exc}") from None


class Registry:
    def __init__(self, store_uri: str | ObjectStore, model: str, cache_dir: Path | None = None) -> None:
        self.model = check_model_name(model)
        self.store = open_store(store_uri) if isinstance(store_uri, str) else store_uri
        self.prefix = join_key("registry", model)
        self.cache_dir = cache_dir or CACHE_DIR / "registry"
        self._records: dict[str, dict[str, Any]] = {}

    @classmethod
    def for_spec(cls, spec: ModelSpec) -> Registry:
        return cls(spec.registry_root, spec.name)

    def _k(self, *parts: str) -> str:
        return join_key(self.prefix, *parts)

    def _json(self, key: str, expected: str = "a JSON object") -> dict[str, Any]:
        """A registry metadata object; MetadataError names the key and what was expected."""
        return _parse_object(self.model, key, self.store.get_bytes(key), expected)

    def _version_field(self, key: str, doc: dict[str, Any]) -> str:
        version = doc.get("version")
        if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
            raise MetadataError(f"{self.model}: {key}: 'version' is {version!r}; expected a version such as v0001")
        return version

    # ---------------------------------------------------------------- versions
    def _version_keys(self) -> dict[str, list[str]]:
        base = self._k("versions") + "/"
        out: dict[str, list[str]] = {}
        for key in self.store.list(base):
            version, _, rest = key[len(base):].partition("/")
            if VERSION_PATTERN.fullmatch(version) and rest:
                out.setdefault(version, []).append(rest)
        return out

    def list_versions(self, include_incomplete: bool = False) -> list[str]:
        """Complete versions (a manifest, not collected); with include_incomplete every version number in use."""
        return sorted(v for v, rels in self._version_keys().items()
                      if include_incomplete or ("manifest.json" in rels and GC_MARKER not in rels))

    def show(self, version: str) -> dict[str, Any]:
        check_version(version)
        try:
            manifest = self._json(self._k("versions", version, "manifest.json"), "the version's manifest object")
        except NoSuchKey:
            if self.store.exists(self._k("versions", version, GC_MARKER)):
                raise RegistryError(f"{self.model}: version {version} was garbage-collected") from None
            raise RegistryError(
                f"{self.model}: version {version} does not exist or is incomplete (no manifest.json)"
            ) from None
        if self.store.exists(self._k("versions", version, GC_MARKER)):
            raise RegistryError(f"{self.model}: version {version} was garbage-collected")
        return manifest

    def version_of_run(self, run_id: str) -> str | None:
        """The version a run registered as (run ids are made key-safe the way RunContext does)."""
        key = self._k("by-run", f"{key_safe(run_id)}.json")
        if not self.store.exists(key):
            return None
        return self._version_field(key, self._json(key, '{"version": ..., "run_id": ...}'))

    def register(self, run: Any, shadow: bool = False, actor: str = "tl") -> str:
        """Copy a run's selected model and evidence into a new immutable version (idempotent per run)."""
        run_key = self._k("by-run", f"{key_safe(run.run_id)}.json")
        version = self.version_of_run(run.run_id)
        if version is not None and self.store.exists(self._k("versions", version, GC_MARKER)):
            self.store.delete(run_key)  # an interrupted gc collected it: the run registers anew
            version = None
        if version is not None and self.store.exists(self._k("versions", version, "manifest.json")):
            self._log_register(version, run.run_id, self.show(version).get("shadow", shadow), actor)
            return version
        candidate = run.read_json("candidate.json")
        strategy = candidate.get("selected") if isinstance(candidate, dict) else None
        if not isinstance(strategy, str) or not NAME_PATTERN.fullmatch(strategy):
            raise RegistryError(f"run {run.run_id}: candidate.json 'selected' is {strategy!r}; expected a strategy "
                                "name")
        model_prefix = run.model_key(strategy) + "/"
        sources = [k for k in run.store.list(model_prefix)
                   if k[len(model_prefix):].split("/")[0] not in SKIPPED_RUN_DIRS]
        sources += [run.key(rel) for rel in OPTIONAL_RUN_FILES if run.store.exists(run.key(rel))]
        sources.append(run.key("candidate.json"))
        required = {run.model_key(strategy, "model.safetensors"), run.model_key(strategy, "model_config.json")}
        if not required <= set(sources):
            raise RegistryError(f"run {run.run_id}: missing {sorted(required - set(sources))}; cannot register")
        rels = {src: src[len(run.prefix) + 1:] for src in sorted(set(sources))}
        for rel in rels.values():  # refuse before claiming anything
            check_relpath(rel, f"run {run.run_id}")
        if version is None:
            version = self._claim_version(run.run_id)
            try:
                self.store.put_bytes(run_key, json.dumps({"version": version, "run_id": run.run_id}).encode(),
                                     if_none_match="*")
            except PreconditionFailed:  # the same run registered concurrently: theirs wins
                version = self._version_field(run_key, self._json(run_key, '{"version": ..., "run_id": ...}'))
        files: dict[str, dict[str, Any]] = {}
        for src, rel in rels.items():
            data = run.store.get_bytes(src)
            dest = self._k("versions", version, rel)
            try:
                self.store.put_bytes(dest, data, if_none_match="*")
            except PreconditionFailed:
                if _sha256(self.store.get_bytes(dest)) != _sha256(data):
                    raise IntegrityError(f"{self.model} {version}: {rel} already exists with different content "
                                         f"(run {run.run_id} changed since its registration started)") from None
            files[rel] = {"sha256": _sha256(data), "size": len(data)}
        manifest = self._manifest(run, version, strategy, files, shadow, candidate)
        try:
            self.store.put_bytes(self._k("versions", version, "manifest.json"),
                                 json.dumps(manifest, indent=2, sort_keys=True).encode(), if_none_match="*")
        except PreconditionFailed:
            pass  # a concurrent registration of the same run finished first; the version is complete
        self._log_register(version, run.run_id, shadow, actor)
        return version

    def _log_register(self, version: str, run_id: str, shadow: bool, actor: str) -> None:
        self._append({"action": "register", "version": version, "run_id": run_id, "shadow": shadow,
                      "actor": actor, "reason": "registered from run"}, record_id=f"register-{version}")

    def _claim_version(self, run_id: str) -> str:
        """A new version number for ``run_id``, or the one it claimed before crashing (never a collected one)."""
        existing = self._version_keys()
        for version, rels in sorted(existing.items()):
            if "manifest.json" not in rels and GC_MARKER not in rels and self._version_run(version) == run_id:
                logger.info("%s: resuming the interrupted registration of run %s as %s", self.model, run_id, version)
                return version
        for attempt in range(1000):
            if attempt:
                existing = self._version_keys()
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
        def optional(rel: str) -> dict[str, Any]:
            value = run.read_json(rel) if run.store.exists(run.key(rel)) else {}
            return value if isinstance(value, dict) else {}

        config = run.read_json(f"models/{strategy}/model_config.json")
        if not isinstance(config, dict):
            raise RegistryError(f"run {run.run_id}: models/{strategy}/model_config.json is not a JSON object")
        spec = optional("spec.json")
        backbone = config.get("backbone") or spec.get("backbone") or {}
        train = config.get("train") or spec.get("train") or {}
        report = optional("evaluation/report.json")
        evaluated = report.get("models", {}).get(strategy, {})
        gate = optional("gate/decision.json")
        return {
            "model": self.model, "version": version, "run_id": run.run_id, "shadow": shadow, "created_at": _now(),
            "snapshot_hash": optional("snapshot/manifest.json").get("content_hash"),
            "backbone": {"id": backbone.get("name"), "revision": backbone.get("revision"),
                         "library": backbone.get("library")},
            "strategy": strategy,
            "strategy_config": {**train, **({"lora": train.get("lora")} if strategy == "lora" else {})},
            "seeds": {"train": config.get("seed", train.get("seed")),
                      "split": spec.get("data", {}).get("split_seed"),
                      "bootstrap": spec.get("gate", {}).get("bootstrap_seed")},
            "candidate_selection": candidate, "library_versions": _library_versions(),
            "metrics": {k: v for k, v in evaluated.get("overall", {}).items() if isinstance(v, int | float)},
            "temperature": evaluated.get("temperature"),
            "gate": {k: gate.get(k) for k in ("passed", "evidence_hash", "bootstrap")},
            "files": files,
        }

    def _manifest_files(self, version: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """The manifest and its files, every path checked before anything is read."""
        manifest = self.show(version)
        files = manifest.get("files")
        if not isinstance(files, dict) or not files:
            raise IntegrityError(f"{self.model} {version} is unusable: manifest.json lists no files")
        for rel in sorted(files):
            check_relpath(rel, f"{self.model} {version} manifest.json")
        return manifest, files

    def _get_verified(self, version: str, rel: str, meta: dict[str, Any]) -> bytes:
        try:
            data = self.store.get_bytes(self._k("versions", version, rel))
        except NoSuchKey:
            raise IntegrityError(f"{self.model} {version} is unusable: file {rel} is missing") from None
        if _sha256(data) != meta.get("sha256") or len(data) != meta.get("size"):
            raise IntegrityError(f"{self.model} {version} is unusable: file {rel} does not match its manifest "
                                 f"checksum (sha256 {_sha256(data)[:12]}... size {len(data)}, expected "
                                 f"{str(meta.get('sha256'))[:12]}... size {meta.get('size')})")
        return data

    def verify(self, version: str) -> dict[str, Any]:
        """Every file present in the store with its manifest checksum; IntegrityError names the first bad file."""
        manifest, files = self._manifest_files(version)
        for rel, meta in sorted(files.items()):
            self._get_verified(version, rel, meta)
        return manifest

    def load_version(self, version: str, verify_store: bool = False) -> Path:
        """A verified local copy of a version (only safetensors, JSON, ONNX, npz, tokenizer files; no pickles).

        Local files whose checksum matches the manifest are reused unless ``verify_store``, which re-reads and
        checks every file in the store (the rollback precondition).
        """
        manifest, files = self._manifest_files(version)
        dest = self.cache_dir / self.model / version
        for rel, meta in sorted(files.items()):
            path = dest / rel
            local_ok = path.is_file() and _sha256(path.read_bytes()) == meta.get("sha256")
            if local_ok and not verify_store:
                continue
            data = self._get_verified(version, rel, meta)
            if rel.endswith(".npz"):
                _check_npz(data, f"{self.model} {version} {rel}")
            if local_ok:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.part")
            tmp.write_bytes(data)
            tmp.replace(path)
        for stray in [p for p in dest.rglob("*") if p.is_file()]:  # only the manifest's files, nothing planted
            if stray.relative_to(dest).as_posix() not in files and not stray.name.endswith(".part"):
                logger.warning("%s %s: removing %s from the local copy (not in the manifest)", self.model, version,
                               stray)
                stray.unlink()
        return dest

    def check_loadable(self, version: str) -> None:
        """Rollback preconditions: checksums, the model files parse, the ONNX reproduces its golden logits."""
        from safetensors import SafetensorError
        from safetensors.numpy import load as load_safetensors

        path = self.load_version(version, verify_store=True)
        strategy = self.show(version).get("strategy")
        where = f"{self.model} {version}"
        if not isinstance(strategy, str) or not NAME_PATTERN.fullmatch(strategy):
            raise MetadataError(f"{where}: {self._k('versions', version, 'manifest.json')}: 'strategy' is "
                                f"{strategy!r}; expected a strategy name such as 'frozen'")
        try:
            json.loads((path / "models" / strategy / "model_config.json").read_text())
        except (OSError, ValueError) as exc:
            raise IntegrityError(f"{where}: models/{strategy}/model_config.json does not load: {exc}") from None
        try:
            tensors = load_safetensors((path / "models" / strategy / "model.safetensors").read_bytes())
        except (OSError, ValueError, SafetensorError) as exc:
            raise IntegrityError(f"{where}: models/{strategy}/model.safetensors does not load: {exc}") from None
        if not tensors:
            raise IntegrityError(f"{where}: models/{strategy}/model.safetensors holds no tensors")
        onnx_path, golden_path = path / "export" / "model.onnx", path / "export" / "golden.npz"
        if onnx_path.exists():
            self._check_golden(where, onnx_path, golden_path)

    @staticmethod
    def _check_golden(where: str, onnx_path: Path, golden_path: Path) -> None:
        import onnxruntime as ort

        if not golden_path.exists():
            raise IntegrityError(f"{where}: export/model.onnx has no export/golden.npz to check it against")
        golden = _check_npz(golden_path.read_bytes(), f"{where} export/golden.npz")
        feeds = {k[len("input."):]: v for k, v in golden.items() if k.startswith("input.")}
        if "logits" not in golden or not feeds:
            raise IntegrityError(f"{where}: export/golden.npz holds {sorted(golden)}; expected 'logits' and "
                                 "'input.<name>' arrays")
        try:
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            got = session.run(["logits"], feeds)[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; any is a refusal
            raise IntegrityError(f"{where}: export/model.onnx does not run on export/golden.npz: {exc}") from None
        expected = golden["logits"]
        if got.shape != expected.shape:
            raise IntegrityError(f"{where}: ONNX logits have shape {got.shape}, golden logits {expected.shape}")
        diff = float(np.abs(got.astype(np.float64) - expected).max(initial=0.0))
        if not diff <= GOLDEN_TOLERANCE:
            raise IntegrityError(f"{where}: ONNX logits differ from the golden predictions by {diff:.3g} "
                                 f"(tolerance {GOLDEN_TOLERANCE})")

    # ---------------------------------------------------------------- champion + ledger
    def champion(self, repair: bool = True) -> Champion | None:
        """The champion, once the ledger explains the pointer (UnexplainedPointer otherwise: fail closed).

        ``repair=False`` never writes (a reader such as the webserver); the ledger record of a crashed move is
        then left for the next writer to append.
        """
        return self._reconciled(self._read_champion(), repair)[0]

    def _read_champion(self) -> Champion | None:
        key = self._k("champion.json")
        try:
            data, etag = self.store.get_with_etag(key)
        except NoSuchKey:
            return None
        record = _parse_object(self.model, key, data, "the champion record (version, previous, action, generation, "
                                                      "record_id)")
        problems = _pointer_problems(record)
        if problems:
            raise MetadataError(f"{self.model}: {key} is not a valid champion pointer: {'; '.join(problems)}")
        return Champion.from_record(record, etag)

    def ledger(self) -> list[dict[str, Any]]:
        keys = self._ledger_keys()
        return [self._record(k) for k in keys]

    def _ledger_keys(self) -> list[str]:
        """The ledger's keys in order; refuses a ledger with a gap (records are numbered 1..n)."""
        keys = sorted(self.store.list(self._k("ledger") + "/"))
        expected = [self._k("ledger", f"{i:08d}.json") for i in range(1, len(keys) + 1)]
        if keys != expected:
            bad, want = next((k, e) for k, e in zip(keys, expected, strict=True) if k != e)
            raise RegistryError(f"{self.model}: the ledger is not gapless: found {bad}, expected {want}")
        return keys

    def _record(self, key: str) -> dict[str, Any]:
        """A ledger record; cached, since records are create-only and never change."""
        if key not in self._records:
            record = self._json(key, "a ledger record object")
            seq = int(key.rsplit("/", 1)[1].split(".")[0])
            if record.get("seq") != seq or not isinstance(record.get("action"), str):
                raise MetadataError(f"{self.model}: {key} is unreadable: 'seq' is {record.get('seq')!r} and "
                                    f"'action' is {record.get('action')!r}; expected seq {seq} and an action name")
            self._records[key] = record
        return self._records[key]

    def _last_move(self, keys: list[str]) -> dict[str, Any] | None:
        """The newest promote/rollback record among ``keys``."""
        for key in reversed(keys):
            if self._record(key).get("action") in POINTER_ACTIONS:
                return self._record(key)
        return None

    def _find(self, keys: list[str], record_id: str, generation: int | None) -> dict[str, Any] | None:
        """The record with ``record_id`` among ``keys``, searched newest first.

        Pointer moves carry a generation (the replaced champion's + 1) and reach the ledger in generation order:
        a move is only attempted once the champion it replaces is in the ledger. So the search for a move of
        generation g stops at the first move of a lower generation: if it was not found by then, it is missing.
        """
        for key in reversed(keys):
            rec = self._record(key)
            if rec.get("record_id") == record_id:
                return rec
            if (generation is not None and rec.get("action") in POINTER_ACTIONS
                    and isinstance(rec.get("generation"), int) and rec["generation"] < generation):
                return None
        return None

    def _append(self, record: dict[str, Any], record_id: str | None = None) -> tuple[dict[str, Any], bool]:
        """Append with the next gapless sequence number (create-only, retried on conflict).

        Returns (the stored record with its ``seq``, whether it was appended now). Idempotent on ``record_id``:
        returns (that record, False) when it is already in the ledger. The check
        and the sequence number come from one listing, and the create-only write at ``len + 1`` only succeeds
        if nothing was appended since, so two appenders of the same record can never both succeed. Refuses to
        append behind a ledger tail it cannot read.
        """
        record = {"at": _now(), **record, "model": self.model, "record_id": record_id or uuid.uuid4().hex}
        generation = record.get("generation") if record.get("action") in POINTER_ACTIONS else None
        for attempt in range(400):
            keys = self._ledger_keys()
            if keys:
                try:
                    self._record(keys[-1])
                except MetadataError as exc:
                    raise MetadataError(f"refusing to append to the ledger of {self.model} behind an unreadable "
                                        f"record: {exc}") from None
            if record_id is not None and (existing := self._find(keys, record_id, generation)) is not None:
                return existing, False
            seq = len(keys) + 1
            stored = {**record, "seq": seq}
            try:
                self.store.put_bytes(self._k("ledger", f"{seq:08d}.json"),
                                     json.dumps(stored, sort_keys=True).encode(), if_none_match="*")
                return stored, True
            except PreconditionFailed:
                time.sleep(min(0.05, 0.002 * (attempt + 1)))
        raise RegistryError(f"{self.model}: could not append to the ledger after 400 attempts")

    def reconcile(self, champion: Champion | None = None, repair: bool = True) -> dict[str, Any] | None:
        """The ledger record that made the current pointer champion (None with no champion).

        A pointer the ledger does not explain raises UnexplainedPointer naming the file; a move whose process
        died between its swap and its ledger append is appended from its intent (unless ``repair`` is False).
        """
        return self._reconciled(champion or self._read_champion(), repair)[1]

    def _reconciled(self, champion: Champion | None, repair: bool) -> tuple[Champion | None, dict[str, Any] | None]:
        """(the champion, its ledger record), re-checked when the pointer or the ledger moved during the check."""
        for _ in range(20):
            keys = self._ledger_keys()
            try:
                return champion, self._explain(champion, keys, repair)
            except UnexplainedPointer:
                now = self._read_champion()
                if (now.etag if now else None) == (champion.etag if champion else None) and len(
                        self._ledger_keys()) == len(keys):
                    raise
                champion = now
        raise ConflictError(f"{self.model}: the champion pointer kept moving while it was checked; retry")

    def _explain(self, champ: Champion | None, keys: list[str], repair: bool) -> dict[str, Any] | None:
        """The ledger record of ``champ``: the ledger's latest move, or the crashed next move (appended now)."""
        pointer = self._k("champion.json")
        last = self._last_move(keys)
        latest = (f"the ledger's latest move (seq {last['seq']}) made {last.get('version')} champion" if last
                  else "the ledger records no promotion yet")
        fix = (f"; restore the pointer from ledger record {last['seq']} or investigate who wrote it" if last
               else "; investigate who wrote it")
        if champ is None:
            if last is not None:
                raise UnexplainedPointer(f"{self.model}: {pointer} is missing, but {latest}{fix}")
            return None
        rid = champ.record["record_id"]
        what = f"{pointer} (champion {champ.version}, record {rid})"
        if last is not None and last.get("record_id") == rid:
            if diff := _differences(champ.record, last):
                raise UnexplainedPointer(f"{self.model}: {what} differs from its ledger record {last['seq']} in "
                                         f"{', '.join(diff)}{fix}")
            return last
        if any(self._record(k).get("record_id") == rid for k in keys):
            raise UnexplainedPointer(f"{self.model}: {what} names an earlier ledger record, but {latest}{fix}")
        intent_key = self._k("intents", f"{rid}.json")
        problems = self._crash_problems(champ, last, intent_key)
        if problems:
            raise UnexplainedPointer(f"{self.model}: {what} is not in the ledger and cannot be the record of an "
                                     f"interrupted move: {'; '.join(problems)} ({latest}){fix}")
        intent = self._json(intent_key)
        if not repair:
            return intent
        try:
            stored, appended = self._append(intent, record_id=rid)
        except AccessDenied:  # a read-only reader (e.g. the webserver) leaves the repair to the next writer
            logger.warning("%s: the ledger lacks the record of champion %s and this reader may not write it",
                           self.model, champ.version)
            return intent
        if appended:
            logger.warning("%s: repaired the ledger with the record of champion %s from its intent %s", self.model,
                           champ.version, intent_key)
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
            intent: dict[str, Any] | None = self._json(intent_key, "the intent record of a move")
        except NoSuchKey:
            intent = None
        if intent is None:
            problems.append(f"no intent {intent_key} witnessed it (tl writes one before every move)")
        elif diff := _differences(champ.record, intent):
            problems.append(f"it differs from its intent {intent_key} in {', '.join(diff)}")
        if not problems:
            try:
                self.verify(champ.version)
            except RegistryError as exc:
                problems.append(f"its version does not verify: {exc}")
        return problems

    def _move_pointer(self, action: str, version: str, expect: str | None, actor: str, reason: str,
                      extra: dict[str, Any]) -> dict[str, Any]:
        # The champion we replace is in the ledger before our record can be (and is explained, or we refuse).
        current, _ = self._reconciled(self._read_champion(), repair=True)
        current_version = current.version if current else None
        if current_version != expect:
            raise ConflictError(f"{self.model}: cannot {action} {version}: expected champion {expect or 'none'}, "
                                f"but the current champion is {current_version or 'none'}")
        if version == current_version:
            raise RegistryError(f"{self.model}: {version} is already the champion")
        if self.store.exists(self._k("versions", version, GC_MARKER)):  # see gc: checked after reading the pointer
            raise RegistryError(f"{self.model}: version {version} was garbage-collected")
        generation = int(current.record.get("generation") or 0) + 1 if current else 1
        record = {"action": action, "record_id": uuid.uuid4().hex, "version": version, "previous": current_version,
                  "generation": generation, "actor": actor, "reason": reason, "at": _now(), **extra}
        body = json.dumps(record, sort_keys=True).encode()
        # The intent witnesses the move: with it the next reader can complete a swap whose ledger append crashed.
        self.store.put_bytes(self._k("intents", f"{record['record_id']}.json"), body, if_none_match="*")
        try:
            if current is None:
                self.store.put_bytes(self._k("champion.json"), body, if_none_match="*")
            else:
                self.store.put_bytes(self._k("champion.json"), body, if_match=current.etag)
        except PreconditionFailed as exc:
            now = self._settled_champion(current)
            if now is not None and now.record.get("record_id") == record["record_id"]:
                logger.info("%s: the store refused a swap it had made (a retried request): %s", self.model, exc)
            elif now is not None and current is not None and now.etag == current.etag:
                raise ConflictError(f"{self.model}: cannot {action} {version}: the store refused the compare-and-swap "
                                    f"although the champion is still {current.version}: {exc}") from None
            else:
                raise ConflictError(f"{self.model}: cannot {action} {version}: the champion changed concurrently "
                                    f"(expected {expect or 'none'}); the current champion is "
                                    f"{now.version if now else 'none'}") from None
        stored, _ = self._append(record, record_id=record["record_id"])
        return {**stored, "made_now": True}

    def _settled_champion(self, before: Champion | None, wait_s: float = 5.0) -> Champion | None:
        """The champion after a lost swap: the winner's write may still be landing (the file backend's swap is
        claimed before it is written), so wait briefly until the pointer differs from ``before``."""
        deadline = time.monotonic() + wait_s
        now = self._read_champion()
        while (now.etag if now else None) == (before.etag if before else None) and time.monotonic() < deadline:
            time.sleep(0.01)
            now = self._read_champion()
        return now

    def promote(self, version: str, expect_champion: str | None, approval: dict[str, Any] | None, actor: str,
                reason: str = "", evidence_hash: str | None = None) -> dict[str, Any]:
        """Compare-and-swap the champion to ``version`` (verified first); ConflictError names the champion.

        Returns the ledger record with ``made_now``: True when this call moved the pointer, False when the same
        promotion (version, expected champion, evidence) had already been made - by a retry's first attempt or a
        concurrent identical call - and the record returned is that earlier one.
        """
        check_version(version)
        if expect_champion is not None:
            check_version(expect_champion)
        if approval is not None and not isinstance(approval, dict):
            raise ValueError(f"approval must be a JSON object, got {type(approval).__name__}")
        manifest = self.verify(version)
        if manifest.get("shadow") and not (approval or {}).get("allow_shadow"):
            raise RegistryError(f"{self.model} {version} is a shadow version (backfill); promote it only with "
                                "approval.allow_shadow")
        same = (version, "promote", expect_champion, evidence_hash)
        current, record = self._reconciled(self._read_champion(), repair=True)
        if current is not None and record is not None and _promotion_of(current) == same:
            return self._already_made(record)
        try:
            return self._move_pointer("promote", version, expect_champion, actor, reason or "approved promotion",
                                      {"approval": approval or {}, "evidence_hash": evidence_hash})
        except ConflictError:  # lost to an identical promotion: that one is the answer, not a conflict
            current, record = self._reconciled(self._read_champion(), repair=True)
            if current is not None and record is not None and _promotion_of(current) == same:
                return self._already_made(record)
            raise

    def _already_made(self, record: dict[str, Any]) -> dict[str, Any]:
        logger.info("%s: %s was already promoted by ledger record %s (%s at %s); nothing changed", self.model,
                    record.get("version"), record.get("seq"), record.get("actor"), record.get("at"))
        return {**record, "made_now": False}

    def default_rollback_target(self) -> str | None:
        """The latest earlier champion that still exists and was never rolled back from."""
        current = self.champion()
        if current is None:
            return None
        moves = [r for r in self.ledger() if r.get("action") in POINTER_ACTIONS]
        rolled_back_from = {r.get("previous") for r in moves if r["action"] == "rollback"}
        existing = set(self.list_versions())
        for r in reversed(moves):
            v = r.get("version")
            if isinstance(v, str) and v != current.version and v not in rolled_back_from and v in existing:
                return str(v)
        return None

    def rollback(self, to: str | None, reason: str, actor: str) -> dict[str, Any]:
        """Point the champion at ``to`` (default: the previous champion) after checking that it loads."""
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"rollback needs a reason (--reason TEXT), got {reason!r}")
        if to is not None:
            check_version(to)
        current = self.champion()
        if current is None:
            raise RegistryError(f"{self.model}: there is no champion to roll back")
        target = to or self.default_rollback_target()
        if target is None:
            raise RegistryError(f"{self.model}: champion {current.version} has no earlier champion to roll back "
                                "to; pass --to VERSION")
        if target == current.version:
            raise RegistryError(f"{self.model}: {target} is already the champion")
        self.check_loadable(target)
        return self._move_pointer("rollback", target, current.version, actor, reason, {})

    def record_rejection(self, run_id: str, reasons: list[str], actor: str) -> int:
        """A 'reject' ledger record (idempotent for the same run and reasons, e.g. a retried task)."""
        text = "; ".join(str(r) for r in reasons)[:4000]
        rid = "reject-" + _sha256(json.dumps([run_id, text]).encode())[:32]
        stored, _ = self._append({"action": "reject", "run_id": run_id, "actor": actor, "reason": text},
                                 record_id=rid)
        return int(stored["seq"])

    def history(self, repair: bool = True) -> list[dict[str, Any]]:
        self.reconcile(repair=repair)
        return self.ledger()

    def gc(self, keep: int, dry_run: bool = False, pending_runs: tuple[str, ...] = ()) -> dict[str, Any]:
        """Delete versions that are neither among the last ``keep`` champions nor referenced by a pending run.

        The champion is never deleted. A collected version is marked (gc.json) before anything is deleted, so an
        interrupted gc leaves a collected version, never a corrupt one; it keeps its claim.json and marker, so its
        number is never reused. A collected run registers again as a new version. Racing a promotion or rollback
        is safe: gc marks first, then rewrites the pointer by compare-and-swap and deletes only if that succeeded,
        while a pointer move refuses a marked version after reading the pointer it swaps (with no champion yet,
        run gc when no first promotion is in flight).
        """
        if not isinstance(keep, int) or keep < 1:
            raise ValueError(f"gc --keep must be an integer of at least 1, got {keep!r}")
        champion = self.champion()
        champions: list[str] = []
        for r in reversed(self.ledger()):
            if r.get("action") in POINTER_ACTIONS and r.get("version") not in champions:
                champions.append(str(r.get("version")))
        protected = set(champions[:keep]) | ({champion.version} if champion else set())
        for run_id in pending_runs:
            pending = self.version_of_run(run_id)
            if pending is not None:
                protected.add(pending)
        keys = self._version_keys()
        doomed = sorted(v for v, rels in keys.items() if v not in protected and set(rels) - KEPT_AFTER_GC)
        if dry_run or not doomed:
            return {"would_delete" if dry_run else "deleted": doomed, "kept": sorted(protected)}
        marked = []
        for v in doomed:
            if GC_MARKER not in keys[v]:
                with contextlib.suppress(PreconditionFailed):  # a concurrent gc marked it first
                    self.store.put_bytes(self._k("versions", v, GC_MARKER),
                                         json.dumps({"at": _now(), "keep": keep}).encode(), if_none_match="*")
                    marked.append(v)
        if champion is not None:
            # Rewrite the pointer unchanged with compare-and-swap: a promotion or rollback that read the pointer
            # before the marks now fails its own swap, and one that swapped first makes this one fail.
            try:
                self.store.put_bytes(self._k("champion.json"), json.dumps(champion.record, sort_keys=True).encode(),
                                     if_match=champion.etag)
            except PreconditionFailed:
                for v in marked:
                    self.store.delete(self._k("versions", v, GC_MARKER))
                now = self._settled_champion(champion)
                raise ConflictError(f"{self.model}: the champion moved while gc ran (from {champion.version} to "
                                    f"{now.version if now else 'none'}); nothing was deleted, re-run gc") from None
        for v in doomed:
            owner = self._version_run(v)
            for rel in sorted(keys[v], key=lambda rel: rel != "manifest.json"):
                if rel not in KEPT_AFTER_GC:
                    self.store.delete(self._k("versions", v, rel))
            if owner and self.version_of_run(owner) == v:
                self.store.delete(self._k("by-run", f"{key_safe(owner)}.json"))
        self._append({"action": "gc", "deleted": doomed, "kept": sorted(protected), "keep": keep,
                      "actor": "gc", "reason": f"gc --keep {keep}"})
        return {"deleted": doomed, "kept": sorted(protected)}

    def _version_run(self, version: str) -> str | None:
        try:
            return str(self._json(self._k("versions", version, "claim.json"))["run_id"])
        except (NoSuchKey, KeyError, MetadataError):
            return None
