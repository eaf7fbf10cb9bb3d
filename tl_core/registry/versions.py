"""Versions: claiming a number, copying a run's model and evidence in, and the manifest (written last).

A version exists once its manifest is written; until then its number is held by ``claim.json``, which a run
that crashed mid-registration resumes.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from tl_core.artifacts import (
    Artifact,
    ArtifactError,
    EvaluationReport,
    GateDecision,
    Int8Report,
    ModelConfig,
    Selection,
    SnapshotManifest,
    VersionGate,
    VersionManifest,
    check_artifact,
    dump_artifact,
    parse_artifact,
    weights_file,
)
from tl_core.errors import IntegrityError, MetadataError, NoSuchKey, PreconditionFailed, RegistryError
from tl_core.registry.card import CARD, render_card
from tl_core.registry.layout import GC_MARKER, RUN_LINK_SHAPE, Layout, now, sha256
from tl_core.registry.ledger import Ledger
from tl_core.registry.names import check_relpath, check_version, is_strategy
from tl_core.runs import INT8_FILE, INT8_REPORT, RunContext, artifact_rel

logger = logging.getLogger(__name__)

# What register copies from a run besides RunContext.candidate_files (the selected model's folder without
# its transient resume state, export/model.onnx, candidate.json): evidence and provenance, relative to the run.
OPTIONAL_RUN_FILES = ("export/golden.npz", "export/parity.json", INT8_REPORT, "evaluation/report.json",
                      "evaluation/report.html", "gate/report.html", "gate/decision.json", "snapshot/manifest.json",
                      "spec.json")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "timm", "transformers", "peft", "safetensors", "onnx", "onnxruntime", "numpy",
                "scikit-learn", "tl-retrain"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            continue
    return out


def run_files(run: RunContext) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(the selected strategy, candidate.json, {source key: path inside the version}), every path checked."""
    selection = run.read(Selection)
    candidate = selection.model_dump(mode="json")
    strategy = selection.selected
    if not is_strategy(strategy):
        raise RegistryError(f"run {run.run_id}: candidate.json 'selected' is {strategy!r}; expected a strategy "
                            "name")
    # The candidate's files are the ones the gate's evidence hash covers (one definition), plus its evidence.
    sources = run.candidate_files()
    sources += [run.key(rel) for rel in OPTIONAL_RUN_FILES if run.store.exists(run.key(rel))]
    config_key = run.key(artifact_rel(ModelConfig, strategy))
    config = run.read_optional(ModelConfig, strategy)
    required = {run.model_key(strategy, weights_file(strategy, config)), config_key}
    if not required <= set(sources):
        raise RegistryError(f"run {run.run_id}: missing {sorted(required - set(sources))}; cannot register")
    if int8_problem(run) is None:
        sources.append(run.key(INT8_FILE))
    rels = {src: src[len(run.prefix) + 1:] for src in sorted(set(sources))}
    for rel in rels.values():  # refuse before claiming anything
        check_relpath(rel, f"run {run.run_id}")
    return strategy, candidate, rels


def int8_problem(run: RunContext) -> str | None:
    """Why the run's int8 artifact is not registered (None: it is): none made, its gate failed, or the file is
    missing or changed since its gate measured it (checksum)."""
    report = run.read_optional(Int8Report)
    if report is None:
        return "no int8 artifact was made (spec.export.quantize_int8 is false)"
    if not report.passed:
        return f"its int8 gate failed: {'; '.join(report.failures or ['no decision recorded'])}"
    if not run.store.exists(run.key(INT8_FILE)):
        return f"{INT8_FILE} is missing from run {run.run_id}"
    if sha256(run.store.get_bytes(run.key(INT8_FILE))) != report.sha256:
        return f"{INT8_FILE} changed since its int8 gate measured it (sha256 differs from {INT8_REPORT})"
    return None


def int8_record(run: RunContext, files: dict[str, Any]) -> dict[str, Any] | None:
    """The manifest's int8 entry: registered or not and why, the gate's failures and agreement (None: none made)."""
    report = run.read_optional(Int8Report)
    if report is None:
        return None
    registered = INT8_FILE in files
    return {"registered": registered, "file": INT8_FILE if registered else None,
            "passed": report.passed, "failures": list(report.failures),
            "reason": None if registered else int8_problem(run),
            "agreement": report.measured.agreement, "metric": report.measured.metric,
            "diff_interval": report.measured.diff_interval}


# What the manifest records of the source checkpoint beside its id, revision and library (from the evaluation
# report's provenance section; reports written before it have none): where the weights came from, the licence
# and where it was read, the weights fingerprint, and the spec's recorded licence override.
SOURCE_FIELDS = ("weights", "path", "package", "package_version", "key_map", "licence", "licence_source",
                 "fingerprint", "licence_override")


def version_gate(decision: GateDecision | None) -> VersionGate:
    """What the manifest keeps of the run's gate decision (none: the run was registered without one)."""
    if decision is None:
        return VersionGate()
    failing = [r.text for r in decision.reasons if r.status == "FAIL"][:10]
    return VersionGate(decision=decision.decision, passed=decision.passed, evidence_hash=decision.evidence_hash,
                       bootstrap=decision.bootstrap, reasons=failing)


def build_manifest(run: RunContext, model: str, version: str, strategy: str, files: dict[str, Any],
                   shadow: bool, candidate: dict[str, Any]) -> VersionManifest:
    """The version's manifest: where it came from (run, snapshot, backbone, seeds), its class names, its gate
    outcome, metrics and files."""
    config = run.read(ModelConfig, strategy)
    spec = run.spec.model_dump(mode="json")  # the run is bound to this spec (RunContext.check_spec)
    backbone = config.backbone or spec["backbone"]
    train = config.train or spec["train"]
    report = run.read_optional(EvaluationReport)
    evaluated = report.models.get(strategy) if report is not None else None
    source = (report.provenance if report is not None else None) or {}
    snapshot = run.read_optional(SnapshotManifest)
    manifest = {
        "model": model, "version": version, "run_id": run.run_id, "shadow": shadow, "created_at": now(),
        "snapshot_hash": snapshot.content_hash if snapshot is not None else None,
        "backbone": {"id": backbone.get("name"), "revision": backbone.get("revision"),
                     "library": backbone.get("library"),
                     **({k: None if source.get(k) is None else str(source[k]) for k in SOURCE_FIELDS}
                        if source else {})},
        "strategy": strategy,
        "strategy_config": {**train, **({"lora": train.get("lora")} if strategy == "lora" else {})},
        "seeds": {"train": config.seed,
                  "split": spec.get("data", {}).get("split_seed"),
                  "bootstrap": spec.get("gate", {}).get("bootstrap_seed")},
        "candidate_selection": candidate, "library_versions": library_versions(),
        "metrics": ({k: v for k, v in evaluated.overall.items() if isinstance(v, int | float)}
                    if evaluated is not None else {}),
        # the model's own temperature, fitted once by training (older runs: the one the evaluation reported)
        "temperature": config.temperature if config.temperature is not None else (
            evaluated.temperature if evaluated is not None else None),
        "gate": version_gate(run.read_optional(GateDecision)),
        "classes": list(config.labels),  # the class names in logit order, as trained
        "files": files,
    }
    int8 = int8_record(run, files)
    if int8 is not None:
        manifest["int8"] = int8
        if not int8["registered"]:
            logger.warning("%s %s: registered without its int8 artifact: %s", model, version, int8["reason"])
    return check_artifact(VersionManifest, manifest, f"{model} {version} manifest.json")


class Versions:
    def __init__(self, layout: Layout, ledger: Ledger) -> None:
        self.layout = layout
        self.ledger = ledger
        self.model = layout.model

    def list_versions(self, include_incomplete: bool = False) -> list[str]:
        """Complete versions (a manifest, not collected); with include_incomplete every version number in use."""
        return sorted(v for v, rels in self.layout.version_keys().items()
                      if include_incomplete or ("manifest.json" in rels and GC_MARKER not in rels))

    def show(self, version: str) -> dict[str, Any]:
        """The manifest as JSON, for display (CLI, pages)."""
        return self.manifest(version).model_dump(mode="json")

    def manifest(self, version: str) -> VersionManifest:
        """The version's manifest, parsed; RegistryError when it does not exist or was collected, MetadataError
        when it does not parse (naming the file and what is wrong)."""
        check_version(version)
        key = self.layout.version_key(version, "manifest.json")
        try:
            data = self.layout.store.get_bytes(key)
        except NoSuchKey:
            if self.layout.collected(version):
                raise RegistryError(f"{self.model}: version {version} was garbage-collected") from None
            raise RegistryError(
                f"{self.model}: version {version} does not exist or is incomplete (no manifest.json)"
            ) from None
        if self.layout.collected(version):
            raise RegistryError(f"{self.model}: version {version} was garbage-collected")
        try:
            return parse_artifact(VersionManifest, data, f"{self.model}: {key}")
        except ArtifactError as exc:
            raise MetadataError(str(exc)) from None

    def model_card(self, version: str) -> str:
        """The version's MODEL_CARD.md, checked against the manifest's sha256 when the manifest lists it."""
        manifest = self.manifest(version)
        try:
            data = self.layout.store.get_bytes(self.layout.version_key(version, CARD))
        except NoSuchKey:
            raise RegistryError(f"{self.model}: version {version} has no {CARD} (registered before model cards "
                                "were written)") from None
        recorded = manifest.files.get(CARD) or {}
        if recorded.get("sha256") and recorded["sha256"] != sha256(data):
            raise IntegrityError(f"{self.model} {version}: {CARD} does not match its manifest checksum")
        return data.decode("utf-8", errors="replace")

    def register(self, run: RunContext, shadow: bool = False, actor: str = "tl") -> str:
        """Copy a run's selected model and evidence into a new immutable version (idempotent per run)."""
        self.ledger.verify()  # refuse before copying anything when the ledger cannot take the register record
        version = self.layout.version_of_run(run.run_id)
        if version is not None and self.layout.collected(version):
            self.layout.store.delete(self.layout.run_key(run.run_id))  # an interrupted gc collected it: anew
            version = None
        if version is not None and self.layout.store.exists(self.layout.version_key(version, "manifest.json")):
            shown = self.manifest(version)
            self._log_register(version, run.run_id, shown.shadow, actor, shown.backbone.get("licence_override"))
            return version
        strategy, candidate, rels = run_files(run)
        if version is None:
            version = self._claim_for_run(run.run_id)
        files = self._copy(run, version, rels)
        # The card goes into the run too (deterministic: the same bytes on a resumed registration), so that every
        # file of a version is one of its run's.
        card = self._card(run, version, strategy, candidate).encode()
        run.store.put_bytes(run.key(CARD), card)
        files[CARD] = self._put_once(run, version, CARD, card)
        manifest = build_manifest(run, self.model, version, strategy, files, shadow, candidate)
        if not manifest.promotable_by_gate:
            logger.warning("%s %s: registered as not promotable (gate %s%s); the registry refuses to promote it "
                           "without an override", self.model, version, manifest.gate.decision,
                           ", shadow" if shadow else "")
        try:
            self.layout.store.put_bytes(self.layout.version_key(version, "manifest.json"), dump_artifact(manifest),
                                        if_none_match="*")
        except PreconditionFailed:
            pass  # a concurrent registration of the same run finished first; the version is complete
        self._log_register(version, run.run_id, shadow, actor, manifest.backbone.get("licence_override"),
                           manifest.gate.decision)
        return version

    def _log_register(self, version: str, run_id: str, shadow: bool, actor: str,
                      licence_override: str | None = None, gate: str | None = None) -> None:
        """The ledger's register record, with the gate outcome it was registered with; a spec's licence override
        (the gate let an unknown or disallowed source licence through) is recorded in it."""
        record: dict[str, Any] = {"action": "register", "version": version, "run_id": run_id, "shadow": shadow,
                                  "actor": actor, "reason": "registered from run"}
        if gate is not None:
            record["gate"] = gate
        if licence_override:
            record["licence_override"] = licence_override
        self.ledger.append(record, record_id=f"register-{version}")

    def _claim_for_run(self, run_id: str) -> str:
        """A version number linked to ``run_id`` by its by-run file (a concurrent registration's, if it won)."""
        version = self._claim_version(run_id)
        run_key = self.layout.run_key(run_id)
        try:
            self.layout.store.put_bytes(run_key, json.dumps({"version": version, "run_id": run_id}).encode(),
                                        if_none_match="*")
        except PreconditionFailed:  # the same run registered concurrently: theirs wins
            version = self.layout.version_field(run_key, self.layout.json(run_key, RUN_LINK_SHAPE))
        return version

    def _copy(self, run: RunContext, version: str, rels: dict[str, str]) -> dict[str, dict[str, Any]]:
        """Copy each source create-only into the version; the manifest's 'files' (sha256 and size of each)."""
        return {rel: self._put_once(run, version, rel, run.store.get_bytes(src)) for src, rel in rels.items()}

    def _put_once(self, run: RunContext, version: str, rel: str, data: bytes) -> dict[str, Any]:
        """Write ``data`` create-only as the version's ``rel`` (the same bytes again are fine); its sha256 and size."""
        dest = self.layout.version_key(version, rel)
        try:
            self.layout.store.put_bytes(dest, data, if_none_match="*")
        except PreconditionFailed:
            if sha256(self.layout.store.get_bytes(dest)) != sha256(data):
                raise IntegrityError(f"{self.model} {version}: {rel} already exists with different content "
                                     f"(run {run.run_id} changed since its registration started)") from None
        return {"sha256": sha256(data), "size": len(data)}

    def _card(self, run: RunContext, version: str, strategy: str, candidate: dict[str, Any]) -> str:
        """MODEL_CARD.md from the run's reports (tl_core.registry.card)."""
        def optional(model: type[Artifact]) -> dict[str, Any]:
            value = run.read_optional(model)
            return value.model_dump(mode="json") if value is not None else {}

        parsed = {"report": optional(EvaluationReport), "snapshot": optional(SnapshotManifest),
                  "gate": optional(GateDecision), "spec": run.spec.model_dump(mode="json")}
        return render_card(self.model, version, strategy, {**parsed, "candidate": candidate})

    def _claim_version(self, run_id: str) -> str:
        """A new version number for ``run_id``, or the one it claimed before crashing (never a collected one)."""
        existing = self.layout.version_keys()
        for version, rels in sorted(existing.items()):
            if "manifest.json" not in rels and GC_MARKER not in rels and self.layout.version_run(version) == run_id:
                logger.info("%s: resuming the interrupted registration of run %s as %s", self.model, run_id, version)
                return version
        for attempt in range(1000):
            if attempt:
                existing = self.layout.version_keys()
            seq = max((int(v[1:]) for v in existing), default=0) + 1
            version = f"v{seq:04d}"
            try:
                self.layout.store.put_bytes(self.layout.version_key(version, "claim.json"),
                                            json.dumps({"run_id": run_id, "at": now()}).encode(), if_none_match="*")
                return version
            except PreconditionFailed:
                continue
        raise RegistryError(f"{self.model}: could not allocate a version number after 1000 attempts")
