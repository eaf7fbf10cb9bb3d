"""Typed, versioned artifacts between steps: the evaluation report, the gate decision, the version manifest.

Each artifact is a pydantic model with a ``schema_version``. The step that writes one validates it before the
write; a step that reads one validates it on read (``read_evaluation_report``, ``read_gate_decision``), so a
report of another schema version or a hand-edited file is refused with the file and the field paths named,
never half-read. The models fix the structure; metric maps stay ``dict[str, float]`` because their keys are
the spec's metric and slice names. The registry validates a version's manifest before it writes it (versions
are write-once, so an old manifest is never rewritten; readers of older manifests must accept missing fields).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from tl_core.errors import TLError
from tl_core.runs import RunContext

REPORT_SCHEMA_VERSION = 2
DECISION_SCHEMA_VERSION = 1
MANIFEST_SCHEMA_VERSION = 1
DRIFT_SCHEMA_VERSION = 1
Number = float | int | None  # metrics may be NaN (e.g. AUROC of a one-class slice) or missing

# A model folder's weights: a merged state dict, or (LoRA with a reloadable base) the adapters, head and buffers
# with model_config.json naming the base by fingerprint (tl_core.models.artifacts writes and reads both).
MERGED_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.safetensors"


def weights_file(strategy: str, config: Any) -> str:
    """The weights file of a model folder (``strategy``: its folder name), from its model_config.json."""
    if isinstance(config, dict) and config.get("storage") == "adapter":
        return ADAPTER_FILE
    return MERGED_FILE


class ArtifactError(TLError):
    """An artifact between steps does not match its schema; the message names the file and the fields."""


class _Artifact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChampionInfo(_Artifact):
    """The champion as the evaluation saw it: re-scored (ok), absent (none) or unreadable (with the reason)."""

    status: Literal["ok", "none", "unreadable"]
    version: str | None = None
    etag: str | None = None
    reason: str = ""


class ModelEvaluation(_Artifact):
    """One model on the test rows: metrics after temperature, before it, per class, per slice, intervals."""

    role: Literal["candidate", "strategy", "champion", "majority"]
    strategy: str | None
    temperature: float | None
    overall: dict[str, Number]
    before_temperature: dict[str, Number]
    per_class: dict[str, dict[str, Number]]
    confusion: list[list[int]]
    slices: dict[str, dict[str, Number]]
    intervals: dict[str, dict[str, list[Number]]]
    reliability: dict[str, Any]


class Comparison(_Artifact):
    """Candidate minus another model on one metric and group (positive: the candidate is better)."""

    diff: Number
    lo: Number
    hi: Number
    quantiles: list[Number] = []


class BootstrapSettings(_Artifact):
    n_boot: int
    seed: int
    confidence: float
    method: str
    quantile_levels: list[float]
    continuous_overall: list[str]
    continuous_slices: list[str]


class EvaluationReport(_Artifact):
    """evaluation/report.json (written by tl_core.evaluate.run, read by the gate, the HTML report, the registry)."""

    schema_version: Literal[2]
    run_id: str
    model: str
    labels: list[str]
    primary_metric: str
    test_size: int
    unlabelled_test_rows: int
    candidate: str
    slices: dict[str, int]
    champion: ChampionInfo
    models: dict[str, ModelEvaluation]
    comparisons: dict[str, dict[str, dict[str, Comparison]]]
    bootstrap: BootstrapSettings
    gate_policy: dict[str, Any]
    curves: dict[str, list[dict[str, Any]]]
    audit: dict[str, Any] | None
    # The source checkpoint (tl_core.evaluate.run.provenance); absent in reports written before it existed.
    provenance: dict[str, Any] | None = None
    # The frozen baseline of the ladder: the best frozen model by validation of any backbone (absent: 'frozen').
    baseline: str | None = None
    # Runs with candidate backbones: per backbone its measured cost, budget verdict, licence and test metric.
    backbones: dict[str, dict[str, Any]] | None = None


class GateReason(_Artifact):
    check: str
    status: Literal["PASS", "FAIL", "WARN"]
    text: str
    metric: str | None = None
    slice: str | None = None
    interval: list[float] | None = None
    threshold: float | None = None
    outcome: Literal["harm", "non-inferior", "inconclusive"] | None = None
    detectable: float | None = None


class GateDecision(_Artifact):
    """gate/decision.json (written by tl_core.gate.step, read by register, the approval and the evidence re-check)."""

    schema_version: Literal[1]
    decision: Literal["PASS", "FAIL"]
    passed: bool
    bootstrap: bool
    reasons: list[GateReason]
    evidence_hash: str
    evidence: dict[str, Any]
    summary: dict[str, Any]
    summary_markdown: str
    candidate: str | None
    champion_version: str | None
    champion_etag: str | None


class VersionManifest(_Artifact):
    """registry/<model>/versions/<version>/manifest.json: where a version came from, its metrics and files."""

    schema_version: Literal[1]
    model: str
    version: str
    run_id: str
    shadow: bool
    created_at: str
    snapshot_hash: str | None
    backbone: dict[str, str | None]
    strategy: str
    strategy_config: dict[str, Any]
    seeds: dict[str, int | None]
    candidate_selection: dict[str, Any]
    library_versions: dict[str, str]
    metrics: dict[str, Number]
    temperature: float | None
    gate: dict[str, Any]
    files: dict[str, dict[str, Any]]
    int8: dict[str, Any] | None = None  # the int8 artifact's own gate (None: the run made none)


class EmbeddingDrift(_Artifact):
    """Input drift: MMD two-sample test of frozen-backbone embeddings, training snapshot vs the partition."""

    status: Literal["ok", "unavailable"]
    reason: str = ""
    statistic: float | None = None
    p_value: float | None = None
    bandwidth: float | None = None
    permutations: int | None = None
    null_quantiles: dict[str, float] = {}
    reference_rows: int = 0
    current_rows: int = 0
    reference: str = ""


class PredictionShift(_Artifact):
    """Predicted-class distribution of the partition vs the champion's predictions on its test split."""

    psi: float
    chi2: float
    chi2_p_value: float
    dof: int
    reference_counts: dict[str, int]
    current_counts: dict[str, int]


class SliceEstimate(_Artifact):
    rows: int
    expected_accuracy: Number
    reference_accuracy: Number


class AccuracyEstimate(_Artifact):
    """Label-free accuracy (CBPE: mean top calibrated probability), overall and per slice, vs the test accuracy."""

    method: Literal["cbpe"]
    expected_accuracy: Number
    reference_accuracy: Number
    reference_expected_accuracy: Number
    slices: dict[str, SliceEstimate]


class DriftAlert(_Artifact):
    """One threshold crossed (or one test that could not be measured): what moved, by how much, against what."""

    metric: str
    slice: str | None = None
    value: float | None = None
    threshold: float | None = None
    text: str


class DriftReport(_Artifact):
    """scores/<model>/dt=<day>/drift/report.json (written by tl_core.monitor.drift)."""

    schema_version: Literal[1]
    model: str
    dt: str
    run_id: str
    champion_version: str
    challenger_version: str | None
    rows: int
    scores_uri: str
    embedding: EmbeddingDrift
    predictions: PredictionShift
    accuracy: AccuracyEstimate
    disagreement: dict[str, Any] | None
    thresholds: dict[str, float]
    alerts: list[DriftAlert]
    created_at: str


def check_artifact(model: type[_Artifact], payload: Any, where: str) -> None:
    """Validate ``payload`` against ``model``; ArtifactError naming ``where`` and every bad field path."""
    try:
        model.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}"
                             for e in exc.errors()[:8])
        raise ArtifactError(f"{where} is not a valid {model.__name__} (schema in tl_core/artifacts.py): "
                            f"{problems}") from None


def _read(ctx: RunContext, rel: str, model: type[_Artifact]) -> dict[str, Any]:
    payload = ctx.read_json(rel)
    check_artifact(model, payload, ctx.uri(rel))
    return payload  # type: ignore[no-any-return]


def read_evaluation_report(ctx: RunContext) -> dict[str, Any]:
    """evaluation/report.json, validated against EvaluationReport (the dict, as the readers index it)."""
    return _read(ctx, "evaluation/report.json", EvaluationReport)


def read_gate_decision(ctx: RunContext) -> dict[str, Any]:
    """gate/decision.json, validated against GateDecision."""
    return _read(ctx, "gate/decision.json", GateDecision)
