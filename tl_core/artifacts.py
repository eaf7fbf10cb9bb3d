"""Typed, versioned artifacts between steps (DESIGN.md "Step contract").

Every artifact one step writes and another reads is an :class:`Artifact`: a frozen pydantic model with a
``schema_version``. Its key is known in one place (``tl_core.runs.RUN_ARTIFACTS`` for run artifacts,
``tl_core.registry.layout`` for registry artifacts); ``RunContext.write`` writes a model instance and
``RunContext.read(Model)`` returns one. :func:`parse_artifact` is the one parser: a file of another schema
version is refused naming the file, the version found and the one expected, a hand-edited file naming every bad
field path, never half-read. Metric maps stay ``dict[str, float]`` because their keys are the spec's metric and
slice names. Versions are write-once, so a registry artifact may name older schema versions it still reads
(``READS``); a run artifact reads only its own.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tl_core.errors import TLError

REPORT_SCHEMA_VERSION = 2
DECISION_SCHEMA_VERSION = 1
MANIFEST_SCHEMA_VERSION = 2
DRIFT_SCHEMA_VERSION = 1
Number = float | int | None  # metrics may be NaN (e.g. AUROC of a one-class slice) or missing

# A model folder's weights: a merged state dict, or (LoRA with a reloadable base) the adapters, head and buffers
# with model_config.json naming the base by fingerprint (tl_core.models.artifacts writes and reads both).
MERGED_FILE = "model.safetensors"
ADAPTER_FILE = "adapter.safetensors"


def weights_file(strategy: str, config: Any) -> str:
    """The weights file of a model folder (``strategy``: its folder name), from its model_config.json (a
    ModelConfig, or its JSON)."""
    storage = config.get("storage") if isinstance(config, dict) else getattr(config, "storage", None)
    return ADAPTER_FILE if storage == "adapter" else MERGED_FILE


class ArtifactError(TLError):
    """An artifact between steps does not match its schema; the message names the file and the fields."""


class _Artifact(BaseModel):
    """A part of an artifact (no schema version of its own): frozen, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Artifact(_Artifact):
    """An artifact between steps: a subclass declares ``schema_version: Literal[N] = N``; ``READS`` lists older
    schema versions its readers still accept (registry files are write-once; run artifacts accept none)."""

    READS: ClassVar[tuple[int | None, ...]] = ()  # None: a file written before it had a schema version
    STRICT_JSON: ClassVar[bool] = False  # True: stored without NaN / Infinity (any strict reader parses it)

    @classmethod
    def written_version(cls) -> int:
        """The schema version this code writes."""
        return int(cls.model_fields["schema_version"].default)


A = TypeVar("A", bound=Artifact)


class ChampionInfo(_Artifact):
    """The champion as the evaluation saw it: re-scored (ok), absent (none), unreadable or incomparable (a class of
    the champion is missing from this spec: see ``label_space``), with the reason."""

    status: Literal["ok", "none", "unreadable", "incomparable"]
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


class AddedClass(_Artifact):
    """A class this spec has and the champion lacks: its rows, and the candidate's own metrics on it (all rows)."""

    test_rows: int
    calibration_rows: int
    precision: Number
    recall: Number
    f1: Number
    support: Number


class ChampionLabelSpace(_Artifact):
    """The champion's class names against this spec's, aligned by name (tl_core.evaluate.label_space).

    same / reordered: the champion is compared on every row (columns permuted by name). added: on the rows whose
    label is a shared class, both models restricted to the shared columns (``shared_*`` give those rows and
    ``candidate_on_shared`` the candidate's overall metrics there); the added classes are reported on their own.
    incomparable: a champion class is missing here; the champion is not scored and the gate FAILs.
    """

    status: Literal["same", "reordered", "added", "incomparable"]
    champion_labels: list[str]
    candidate_labels: list[str]
    shared: list[str]
    added: list[str]
    removed: list[str]
    reason: str
    shared_test_rows: int | None = None
    shared_calibration_rows: int | None = None
    shared_slices: dict[str, int] | None = None
    candidate_on_shared: dict[str, Number] | None = None
    added_classes: dict[str, AddedClass] = {}


class EvaluationReport(Artifact):
    """evaluation/report.json (written by tl_core.evaluate.run, read by the gate, the HTML report, the registry)."""

    schema_version: Literal[2] = 2
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
    # The champion's class names vs this spec's (None without a re-scored champion, and in older reports).
    label_space: ChampionLabelSpace | None = None


class GateReason(_Artifact):
    """One check the gate made (tl_core.gate.checks; ``tl_core.gate.Reason``): its status, text and figures."""

    check: str  # evidence | champion | label_space | minimum | calibration | ladder | non-inferiority | slice | ...
    status: Literal["PASS", "FAIL", "WARN"]
    text: str
    metric: str | None = None
    slice: str | None = None
    interval: list[float] | None = None
    threshold: float | None = None
    outcome: Literal["harm", "non-inferior", "inconclusive"] | None = None  # comparisons against a margin only
    detectable: float | None = None  # the smallest drop this comparison shows as harm with the policy's power

    def __init__(self, check: str, status: str, text: str, **fields: Any) -> None:
        """(check, status, text) by position, as the gate's checks write them, or by name; the rest by name."""
        super().__init__(**{"check": check, "status": status, "text": text, **fields})


class GateDecision(Artifact):
    """gate/decision.json (written by tl_core.gate.step, read by register, the approval and the evidence re-check)."""

    schema_version: Literal[1] = 1
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

    @property
    def failures(self) -> list[GateReason]:
        return [r for r in self.reasons if r.status == "FAIL"]

    @property
    def warnings(self) -> list[GateReason]:
        return [r for r in self.reasons if r.status == "WARN"]


class VersionGate(_Artifact):
    """The gate's outcome on a version's run, as registered: what the registry's promotion policy reads."""

    decision: Literal["PASS", "FAIL", "none"] = "none"  # none: the run had no gate decision when registered
    passed: bool | None = None
    evidence_hash: str | None = None
    bootstrap: bool | None = None
    reasons: list[str] = []  # the failing reasons of a FAIL (first 10), for the refusal and the card

    @model_validator(mode="before")
    @classmethod
    def _decision_of_v1(cls, value: Any) -> Any:
        """A schema-1 manifest recorded only ``passed``: its decision follows from it."""
        if isinstance(value, dict) and "decision" not in value:
            passed = value.get("passed")
            value = {**value, "decision": "PASS" if passed is True else "FAIL" if passed is False else "none"}
        return value


class VersionManifest(Artifact):
    """registry/<model>/versions/<version>/manifest.json: where a version came from, its class names, its gate
    outcome, metrics and files. Schema 1 (before class names and the gate's decision) is still read: versions are
    write-once."""

    READS: ClassVar[tuple[int, ...]] = (1,)
    schema_version: Literal[2] = 2
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
    gate: VersionGate
    files: dict[str, dict[str, Any]]
    # Class names in logit order (None only in schema-1 manifests: their model_config.json has them).
    classes: list[str] | None = None
    int8: dict[str, Any] | None = None  # the int8 artifact's own gate (None: the run made none)

    @property
    def promotable_by_gate(self) -> bool:
        """Whether the version's gate passed and it is not a shadow version (the registry also reads the ledger)."""
        return self.gate.decision == "PASS" and not self.shadow


class PromotionOverride(_Artifact):
    """Who promotes a version that the promotion policy refuses, and why (kept in the ledger record)."""

    actor: str = Field(min_length=1, description="the person who takes responsibility for the override")
    reason: str = Field(description="why the refusal is overridden: at least 10 characters")

    @field_validator("reason")
    @classmethod
    def _reason_says_why(cls, value: str) -> str:
        if len(value.strip()) < 10:
            raise ValueError(f"an override needs a reason of at least 10 characters, got {value.strip()!r}")
        return value.strip()


class ApprovalAnswer(_Artifact):
    """A person's answer to an approval request, as it crosses the Airflow boundary (plugins/ builds it from
    Airflow's human-in-the-loop answer; tl_core never reads Airflow's shapes)."""

    chosen: Literal["Approve", "Reject"] | None = None  # None: no answer (timed out, or the task failed)
    approver: str | None = None  # who answered (Airflow user name)
    comment: str = ""
    timed_out: bool = False
    error: str | None = None  # what Airflow said when there was no answer

    @property
    def approved(self) -> bool:
        return self.chosen == "Approve"


class RunOutcome(_Artifact):
    """How a retrain or manual-promotion run ended, in tl_core's words: plugins/ maps the DAG's task states onto
    it, so tl_core knows no Airflow task id."""

    promoted: bool = False  # the promotion step succeeded
    shadow_recorded: bool = False  # a shadow (backfill) run recorded its version instead of asking for approval
    gate_rejected: bool = False  # the gate FAILed and its rejection is in the ledger
    approval: str | None = None  # the approval step's final state (success, failed, skipped, upstream_failed...)
    evidence_check: str | None = None  # the evidence re-check's final state
    promotion: str | None = None  # the promotion step's final state
    failed_steps: list[str] = []  # every step that failed, by name (for the ledger's reason)


class NoPromotion(_Artifact):
    """What the no-promotion step recorded: nothing (promoted, or recorded elsewhere) or a ledger record."""

    promoted: bool
    recorded: bool  # a 'reject' ledger record was appended (or was already there, for a retried task)
    actor: str | None = None
    rejected: bool = False  # a person or the gate rejected the run (its version is then refused promotion)
    reasons: list[str] = []


class GateOutcome(_Artifact):
    """What the gate step hands to the tasks after it (DAG routing, the approval request, the notifier)."""

    passed: bool
    reasons: list[str]  # failures first, then warnings (the ledger and the approval read the top of this list)
    evidence_hash: str
    bootstrap: bool
    champion_version: str | None
    champion_etag: str | None
    candidate: str | None
    summary_markdown: str
    report_uri: str


class ScoredInput(_Artifact):
    """One input file of a scored partition and its etag when it was scored."""

    key: str
    etag: str


class ScoringRecord(Artifact):
    """scores/<model>/dt=<day>/scoring.json (tl_core.monitor.score): the commit record of a scored partition,
    written last; read by the drift step, the evidence step and an idempotent re-run."""

    schema_version: Literal[1] = 1
    model: str
    dt: str
    run_id: str
    champion_version: str
    challenger_version: str | None
    inputs: list[ScoredInput]
    chunk_rows: int
    rows: int
    chunks: int
    max_chunk_rows: int
    files: dict[str, str]  # predictions.parquet / shadow.parquet -> URI
    slice_columns: list[str]
    labels: list[str]  # the champion's class names in logit order
    challenger_labels: list[str] | None = None
    disagreement: dict[str, Any] | None = None  # {rate, rows, slices: {slice: {rows, rate}}} (challenger only)
    scored_at: str


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


class DriftReport(Artifact):
    """scores/<model>/dt=<day>/drift/report.json (written by tl_core.monitor.drift)."""

    schema_version: Literal[1] = 1
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
    not_judged: str | None = None  # why the overall checks raised no alert (rows below monitor.min_rows)


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:8])


P = TypeVar("P", bound=_Artifact)


def check_artifact(model: type[P], payload: Any, where: str) -> P:
    """``payload`` as a ``model`` instance; ArtifactError naming ``where`` and every bad field path."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ArtifactError(f"{where} is not a valid {model.__name__} (schema in tl_core/artifacts.py): "
                            f"{_problems(exc)}") from None


def parse_artifact(model: type[A], data: bytes | str, where: str) -> A:
    """The one parser of an artifact file: JSON, then its schema version, then every field.

    ArtifactError names ``where`` and what was wrong: not JSON, not an object, another schema version (found and
    expected), or the bad field paths.
    """
    try:
        payload = json.loads(data)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ArtifactError(f"{where} is not valid JSON ({exc}); expected a {model.__name__}") from None
    if not isinstance(payload, dict):
        raise ArtifactError(f"{where} holds a JSON {type(payload).__name__}; expected a {model.__name__} object")
    found, readable = payload.get("schema_version"), (model.written_version(), *model.READS)
    if found not in readable:
        raise ArtifactError(f"{where} is a {model.__name__} of schema version {found!r}; this tl_core reads "
                            f"version {' or '.join(map(str, readable))}: re-run the step that writes it with this "
                            "tl_core version")
    if found != model.written_version():  # an older registry file: read as this schema (its new fields take defaults)
        payload = {**payload, "schema_version": model.written_version()}
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ArtifactError(f"{where} is not a valid {model.__name__} (schema in tl_core/artifacts.py): "
                            f"{_problems(exc)}") from None


def dump_artifact(artifact: Artifact) -> bytes:
    """The stored form of an artifact: sorted, indented JSON (the same model gives the same bytes)."""
    return json.dumps(artifact.model_dump(mode="json"), indent=2, sort_keys=True,
                      allow_nan=not artifact.STRICT_JSON).encode()


# --- Run artifacts of the data, training and export steps (keys: tl_core.runs.RUN_ARTIFACTS) -----------------------
# Written through RunContext.write (or dump_artifact where a step writes create-only or outside a run) and read
# through RunContext.read. The data plane's files are strict JSON (STRICT_JSON: no NaN / Infinity).


class SnapshotFile(_Artifact):
    """One partition file as the snapshot read it: key, sha256, size and rows."""

    key: str
    sha256: str
    bytes: int
    rows: int


class SnapshotPartition(_Artifact):
    """One day's partition of the window: its files, rows and rows per label (``<missing>``: no label)."""

    dt: str
    rows: int
    rows_per_label: dict[str, int]
    files: list[SnapshotFile]


class SnapshotWindow(_Artifact):
    """The snapshot window's first and last day (ISO dates, both included)."""

    start: str
    end: str


class IgnoredKey(_Artifact):
    """A key under the dataset that is not a partition file, and why (``dt`` empty when it has no dt= folder)."""

    key: str
    dt: str
    reason: str


class SnapshotImages(_Artifact):
    """Where the snapshot's image list (:class:`ImageList`) is, its sha256, images listed and unreadable ones."""

    key: str
    sha256: str
    count: int
    unreadable: int


class SnapshotManifest(Artifact):
    """snapshot/manifest.json (tl_core.data.snapshot): the window's partitions, files, rows and content hash."""

    STRICT_JSON: ClassVar[bool] = True
    schema_version: Literal[1] = 1
    model: str
    dataset: str
    data_root: str
    logical_date: str
    window: SnapshotWindow
    window_days: int
    spec_fingerprint: str
    partitions: list[SnapshotPartition]
    total_rows: int
    rows_per_label: dict[str, int]
    content_hash: str
    ignored: list[IgnoredKey]
    ignored_count: int
    completion_marker: str | None
    images: SnapshotImages | None = None  # image_uri specs only
    missing_day: str | None = None  # the logical date, when it had no data file (data.missing_day: warn)


class ImageList(Artifact):
    """snapshot/images/<sha256>.json (image_uri specs): sha256 per image URI (None: unreadable at snapshot time);
    its key and sha256 are in the manifest's ``images``."""

    STRICT_JSON: ClassVar[bool] = True
    schema_version: Literal[1] = 1
    images: dict[str, str | None]


class PartitionCount(_Artifact):
    """Rows of one partition file that a finding flags."""

    partition: str
    count: int


class RowRef(_Artifact):
    """A flagged row without a usable example id: its partition file and row number in it."""

    partition: str
    row_in_file: int


class SliceShift(_Artifact):
    """Label distribution of one slice value against the reference: TVD, chi-square and whether it is flagged."""

    tvd: float
    p_value: float
    chi2: float
    flagged: bool


class LabelConflict(_Artifact):
    """One input (exact duplicate rows) that carries more than one label: its rows, rows per label (most first),
    a short excerpt of the input and its first example ids."""

    rows: int
    labels: dict[str, int]
    input: str
    example_ids: list[str]


class AuditFinding(_Artifact):
    """One audit check: severity, rows flagged, where and the message; the check's own figures when it has them."""

    check: str
    severity: Literal["info", "warning", "blocking"]
    count: int
    column: str
    example_ids: list[str | None]
    partitions: list[PartitionCount]
    message: str
    fraction: float | None = None  # unknown_label
    values: list[str] | None = None  # unknown_label, image_uri_outside_root
    rows: list[RowRef] | None = None  # missing_example_id, missing_labeled_at, invalid_utf8
    columns: list[str] | None = None  # invalid_utf8
    timezones: list[str] | None = None  # labeled_at_timezone
    max_pixels: int | None = None  # oversized_image
    conflicting_label_groups: int | None = None  # exact_duplicates
    conflicts: list[LabelConflict] | None = None  # conflicting_labels (largest first, up to 20)
    clusters: int | None = None  # near_duplicates, duplicates_straddle_test
    largest_cluster: int | None = None
    largest_cluster_ids: list[str] | None = None
    pulled_rows: int | None = None  # duplicates_straddle_test
    classes: dict[str, int] | None = None  # class_too_small
    ratio: float | None = None  # class_imbalance
    sizes: dict[str, int] | None = None  # slice_sizes
    test_sizes: dict[str, int] | None = None
    previous_run: str | None = None  # label_shift (the fields of LabelShift)
    previous_logical_date: str | None = None
    champion_version: str | None = None
    tvd: float | None = None
    p_value: float | None = None
    chi2: float | None = None
    flagged: bool | None = None
    per_slice: dict[str, SliceShift] | None = None
    flagged_slices: list[str] | None = None


class LabelShift(_Artifact):
    """Label distribution against the champion's training data (else the previous snapshot), overall and per slice."""

    previous_run: str
    previous_logical_date: str | None
    champion_version: str | None
    tvd: float
    p_value: float
    chi2: float
    flagged: bool
    per_slice: dict[str, SliceShift]
    flagged_slices: list[str]


class AuditReport(Artifact):
    """audit/report.json (tl_core.data.audit): findings with severities, quarantine counts, class and slice sizes."""

    STRICT_JSON: ClassVar[bool] = True
    schema_version: Literal[1] = 1
    run_id: str
    model: str
    logical_date: str
    snapshot_hash: str
    total_rows: int
    usable_rows: int
    quarantined_rows: int
    quarantine_reasons: dict[str, int]
    blocking: bool
    blocking_messages: list[str]
    findings: list[AuditFinding]
    imbalance_ratio: float | None
    class_counts: dict[str, int]
    slice_sizes: dict[str, int]
    slice_label_counts: dict[str, dict[str, int]]
    label_shift: LabelShift | None
    test_days: list[str]


class IssueRate(_Artifact):
    """Flagged rows of one class or slice value, its rows and the flagged share."""

    flagged: int
    rows: int
    rate: float


class SuspectedLabel(_Artifact):
    """A flagged row: its given label, the suspected one and the out-of-fold probability of the given one."""

    example_id: str
    given: str
    suspected: str
    given_probability: float


class LabelIssues(Artifact):
    """audit/label_issues.json (the first train task, tl_core.train.label_check): the label-issue finding."""

    STRICT_JSON: ClassVar[bool] = True
    schema_version: Literal[1] = 1
    check: Literal["label_issues"] = "label_issues"
    severity: Literal["info", "warning", "blocking"]
    count: int
    rows: int
    rate: float
    oof_accuracy: float | None  # None: not checked (too few rows), see the message
    over_limit: list[str]
    per_class: dict[str, IssueRate]
    per_slice: dict[str, IssueRate]
    worst_slices: list[str]
    top_examples: list[SuspectedLabel]
    policy: Literal["warn", "quarantine", "block"]
    quarantined_ids: list[str]
    message: str
    cache: dict[str, int] | None = None  # the embedding cache's hits and misses (when embeddings were taken)
    embed_s: float | None = None
    fit_s: float | None = None
    sampled: bool | None = None  # the non-test rows were sampled down to data.label_issues_max_rows


class SplitShare(_Artifact):
    """Rows of one split and their share of the usable rows."""

    rows: int
    share: float


class PulledClusters(_Artifact):
    """The duplicate/group clusters that test took from earlier days: count, rows, the largest and its ids."""

    clusters: int
    rows: int
    largest_cluster: int
    largest_cluster_ids: list[str]


class SplitCheck(Artifact):
    """split/report.json (tl_core.data.split): achieved against requested, per class, and what refuses the split."""

    STRICT_JSON: ClassVar[bool] = True
    schema_version: Literal[1] = 1
    requested: dict[str, float]
    achieved: dict[str, SplitShare]
    per_class: dict[str, dict[str, int]]
    pulled_into_test: PulledClusters
    blocking: list[str]


class SplitReport(Artifact):
    """split/split.json (tl_core.data.split): example ids per split, counts, the split hash and its snapshot."""

    STRICT_JSON: ClassVar[bool] = True
    schema_version: Literal[1] = 1
    split_hash: str
    snapshot_hash: str
    seed: int
    test_days: list[str]
    counts: dict[str, int]
    label_counts: dict[str, dict[str, int]]
    example_ids: dict[str, list[str]]
    achieved: dict[str, SplitShare]
    requested: dict[str, float]


class Plan(Artifact):
    """plan.json (tl_core.train.plan): the models one run trains, in training order, and what was asked for."""

    schema_version: Literal[1] = 1
    model_ids: list[str]
    requested: list[str] | None = None  # None: every model of the spec


class CacheUse(_Artifact):
    """The embedding cache as one frozen training used it."""

    hits: int
    misses: int
    embed_s: float
    key: str


class CurvePoint(_Artifact):
    """One epoch of a learning curve."""

    epoch: int
    train_loss: float
    val_loss: float
    val_metric: float


class TrainReport(Artifact):
    """models/<model>/train_report.json (tl_core.train.run, written last: it marks the model complete).

    A fine-tuned model of a backbone outside the shortlist is not trained: ``skipped`` says why and the training
    fields are None. ``c_scores`` and ``cache``: frozen models; ``best_epoch`` .. ``train_samples_per_s``:
    fine-tuned ones."""

    schema_version: Literal[1] = 1
    strategy: str
    backbone: str | None  # the candidate backbone's name (None: the spec's own)
    skipped: str | None = None
    train_examples: int | None = None
    primary_metric: str | None = None
    val_metric: float | None = None
    curves: list[CurvePoint] = []
    wall_s: float | None = None
    samples_per_s: float | None = None
    peak_memory_mb: float | None = None
    device: str | None = None
    trainable_parameters: int | None = None
    total_parameters: int | None = None
    c_scores: dict[str, float] | None = None
    cache: CacheUse | None = None
    best_epoch: int | None = None
    resumed_from_epoch: int | None = None
    train_samples_per_s: float | None = None


class HostInfo(_Artifact):
    """The worker a cost was measured on."""

    machine: str
    processor: str
    cpus: int | None


class ServingCost(Artifact):
    """models/frozen[-<candidate>]/cost.json (tl_core.train.candidates): what a backbone costs to serve, measured."""

    schema_version: Literal[1] = 1
    parameters: int
    onnx_mb: float
    latency_ms: dict[str, float]  # by batch size ("1" and the serving batch)
    provider: str
    host: HostInfo


class StrategyScore(_Artifact):
    """One trained model in candidate.json: its validation score, strategy, backbone and what training cost."""

    val_metric: float
    strategy: str
    backbone: str
    wall_s: float | None = None
    peak_memory_mb: float | None = None


class BackboneChoice(_Artifact):
    """One backbone in candidate.json: its name, its measured cost (cost.json's fields; None when not measured)
    and its budget verdict."""

    name: str
    over_budget: str | None  # why it is over a selection budget (None: within)
    parameters: int | None = None
    onnx_mb: float | None = None
    latency_ms: dict[str, float] | None = None
    provider: str | None = None
    host: HostInfo | None = None


class Selection(Artifact):
    """candidate.json (tl_core.train.select): the selected model and every planned model's validation score."""

    schema_version: Literal[1] = 1
    selected: str
    primary_metric: str
    strategies: dict[str, StrategyScore]
    backbones: dict[str, BackboneChoice] | None = None  # runs with candidate backbones only
    excluded: dict[str, str] | None = None  # model -> why it was not eligible (candidate backbones only)


class AdapterBase(_Artifact):
    """The base a LoRA model's adapters were trained on, named by the sha256 of its tensors."""

    fingerprint: str
    weights_fingerprint: str | None
    name: str
    revision: str | None
    weights: str


class ModelConfig(Artifact):
    """models/<model>/model_config.json (tl_core.models.artifacts): what rebuilds and serves a trained model.

    ``labels`` are the class names in logit order. ``backbone`` and ``train`` are the spec's sections as trained
    (validated by their spec models where they are used). ``storage`` adapter: ``adapter.safetensors`` with
    ``base`` and ``lora``. Also read from a registered version's folder: versions are write-once, so a config
    written before it had a schema version (None) is read as this one."""

    READS: ClassVar[tuple[int | None, ...]] = (None,)
    schema_version: Literal[1] = 1
    format: Literal["tl-classifier/1"]
    model: str
    strategy: str
    labels: list[str]
    kind: Literal["transformers", "timm"]
    num_features: int
    backbone: dict[str, Any]
    preprocessing: dict[str, Any]
    input_column: str
    seed: int
    train: dict[str, Any]
    spec_fingerprint: str
    storage: Literal["merged", "adapter"] = "merged"
    base: AdapterBase | None = None
    lora: dict[str, Any] | None = None  # the LoRA settings the adapters were trained with (peft's)
    # The temperature, fitted once by training on the calibration split (export folds it into the ONNX graph,
    # evaluation reports with it, the registry records it); None: a model trained before it was stored.
    temperature: float | None = None


class WorstExample(_Artifact):
    """An example with one of the largest logit differences between torch and onnxruntime."""

    example_id: str
    max_abs_logit_diff: float


class ParityTolerances(_Artifact):
    """The spec's parity tolerances the export was checked against."""

    max_abs_logit_diff: float
    max_ece_diff: float


class ParityReport(Artifact):
    """export/parity.json (tl_core.export.onnx_export): torch vs onnxruntime on held-out rows, and the temperature."""

    schema_version: Literal[1] = 1
    passed: bool
    failures: list[str]
    examples: int
    max_abs_logit_diff: float
    max_abs_diff_vs_training_logits: float | None
    top1_mismatches: list[str]
    ece_torch: float
    ece_onnx: float
    temperature: float
    worst_examples: list[WorstExample]
    tolerances: ParityTolerances
    strategy: str
    opset: int
    inputs: list[str]


class Int8Measurement(_Artifact):
    """int8 against fp32 on the test split (tl_core.evaluate.int8): agreement, the metric and ECE with intervals."""

    examples: int
    labelled: int
    disagreements: int
    agreement: float
    metric: str
    confidence: float
    n_bootstrap: int
    fp32: float | None
    int8: float | None
    diff_interval: list[float] | None
    ece_fp32: float | None
    ece_int8: float | None
    ece_diff_interval: list[float] | None


class Int8Policy(_Artifact):
    """The spec's int8 gate settings the artifact was judged by."""

    int8_margin: float
    int8_min_agreement: float
    int8_ece_tolerance: float


class Int8Report(Artifact):
    """export/int8.json (tl_core.export.int8): the int8 artifact's own gate decision, measurement and checksum."""

    schema_version: Literal[1] = 1
    passed: bool
    decision: Literal["PASS", "FAIL"]
    failures: list[str]
    reasons: list[GateReason]
    measured: Int8Measurement
    file: str
    sha256: str
    size: int
    fp32_size: int
    policy: Int8Policy
