"""The model spec: one YAML file per model, validated by pydantic.

Every field has a default and a one-line doc. Validation errors name the field path and what
was expected, e.g. ``gate.calibration.ece_max: must be between 0 and 1, got 1.7``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AllowInfNan,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    model_validator,
)

from tl_core.errors import SpecError

# Where this machine caches downloaded weights and verified registry versions.
CACHE_DIR = Path(os.environ.get("TL_CACHE_DIR", Path.home() / ".cache" / "tl-retrain"))


# The DAGs each model spec gets (dags/tl_dags.py): "<kind>_<model name>".
DAG_KINDS = ("retrain", "promote", "rollback", "score")


def dag_id(kind: str, model: str) -> str:
    """The Airflow DAG id of ``kind`` (one of DAG_KINDS) for ``model``, e.g. retrain_support-tickets."""
    if kind not in DAG_KINDS:
        raise ValueError(f"DAG kind {kind!r} is not one of {DAG_KINDS}")
    return f"{kind}_{model}"


def model_of_dag(dag: str) -> str | None:
    """The model name a tl-retrain DAG id carries, or None for any other DAG id."""
    for kind in DAG_KINDS:
        if dag.startswith(kind + "_") and len(dag) > len(kind) + 1:
            return dag[len(kind) + 1:]
    return None


def configs_dir() -> Path:
    """The folder of model specs (one YAML per model) that the DAGs, the plugin and `tl status` read:
    $TL_CONFIGS_DIR, else the source checkout's configs/."""
    return Path(os.environ.get("TL_CONFIGS_DIR") or Path(__file__).resolve().parent.parent / "configs")

# \Z, not $: '$' also matches before a trailing newline, so "support\n" would pass (callers use .match).
NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
STRATEGIES = ("frozen", "lora", "partial", "full", "scratch")
# Cheaper strategies win ties in model selection (DESIGN/issue 4).
STRATEGY_COST_ORDER = {name: rank for rank, name in enumerate(STRATEGIES)}
METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "log_loss", "brier", "ece")
# Metrics where smaller is better; the gate flips the sign of their deltas.
LOWER_IS_BETTER = frozenset({"log_loss", "brier", "ece"})
# The longest data window a run may read (10 years): beyond it the date arithmetic overflows long before
# any real labeling history ends.
MAX_WINDOW_DAYS = 3660


def _not_bool(value: Any) -> Any:
    """YAML turns yes/no/true/false into booleans; a number field must not read them as 1 and 0."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got the boolean {value!r}")
    return value


def _fraction(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return value


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"must be 0 or greater, got {value}")
    return value


def _open_fraction(value: float) -> float:
    if not 0.0 < value < 1.0:
        raise ValueError(f"must be strictly between 0 and 1 (e.g. 0.95), got {value}")
    return value


def _at_least(low: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        return value

    return check


def _window_days(value: int) -> int:
    if value > MAX_WINDOW_DAYS:
        raise ValueError(f"must be at most {MAX_WINDOW_DAYS} days (10 years), got {value}")
    return value


def _label(value: str) -> str:
    if not value.strip():
        raise ValueError(f"a label must be a non-empty string, got {value!r}")
    invisible = sorted({f"U+{ord(ch):04X}" for ch in value if unicodedata.category(ch) in ("Cf", "Cc", "Co", "Cs")})
    if invisible:
        # Bidi overrides and zero-width characters make two different labels look identical to an approver.
        raise ValueError(f"a label must hold no control, format (bidi, zero-width) or private-use characters, got "
                         f"{value!r} with {', '.join(invisible)}; remove them")
    if unicodedata.normalize("NFC", value) != value:
        raise ValueError(f"a label must be in Unicode NFC form (composed characters), got {value!r}; "
                         f"write it as {unicodedata.normalize('NFC', value)!r}")
    return value


def _at_most(limit: float, why: str) -> Callable[[Any], Any]:
    """A ceiling for a setting whose size is memory or time (a huge value would fail hours later, or never end)."""

    def check(value: Any) -> Any:
        if value > limit:
            raise ValueError(f"must be at most {limit:g} ({why}), got {value:g}")
        return value

    return check


def _name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            "must be 1-63 characters of lowercase letters, digits, '-' or '_', starting with a letter "
            f"or digit (it becomes part of S3 keys and DAG ids), got {value!r}"
        )
    return value


def _marker_name(value: str | None) -> str | None:
    if value is None:
        return None
    if not value or "/" in value or "\\" in value or value in (".", "..") or value.endswith(".parquet"):
        raise ValueError("must be a plain file name inside the dt=YYYY-MM-DD folder (no '/', not '.' or '..', not "
                         f"a .parquet name, which would be read as data), e.g. '_SUCCESS'; got {value!r}")
    return value


def _webhook_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


def _store_uri(value: str) -> str:
    if not (value.startswith("s3://") or value.startswith("file://")):
        raise ValueError(f"must be a store URI starting with s3:// or file://, got {value!r}")
    rest = value.split("://", 1)[1]
    if value.startswith("s3://") and not rest.split("/", 1)[0]:
        raise ValueError(f"must name a bucket: s3://bucket[/prefix], got {value!r}")
    if value.startswith("file://") and not rest.strip("/"):
        raise ValueError(f"must name a directory: file:///abs/path or file://rel/path, got {value!r}")
    return value


# Every float in a spec is finite (a NaN learning rate or margin passes every '<=' check) and never a YAML
# boolean; every count is a strict int (``window_days: true`` is not 1 day, ``1.0e9`` is not a count).
FiniteFloat = Annotated[float, BeforeValidator(_not_bool), AllowInfNan(False)]
StrictInt = Annotated[int, Strict()]
Fraction = Annotated[FiniteFloat, AfterValidator(_fraction)]
OpenFraction = Annotated[FiniteFloat, AfterValidator(_open_fraction)]
PositiveFloat = Annotated[FiniteFloat, AfterValidator(_positive)]
PositiveInt = Annotated[StrictInt, AfterValidator(_positive)]
NonNegativeInt = Annotated[StrictInt, AfterValidator(_non_negative)]
NonNegativeFloat = Annotated[FiniteFloat, AfterValidator(_non_negative)]
WindowDays = Annotated[PositiveInt, AfterValidator(_window_days)]
Label = Annotated[str, AfterValidator(_label)]
# Ceilings on settings whose size is memory or time: a huge value fails hours into a run (or never ends).
ArrivalMinutes = Annotated[PositiveFloat, AfterValidator(_at_most(10_080, "7 days: a nightly run waits no longer"))]
PokeSeconds = Annotated[PositiveFloat, AfterValidator(_at_most(3600, "one hour"))]
Folds = Annotated[PositiveInt, AfterValidator(_at_least(2)), AfterValidator(_at_most(20, "each fold refits"))]
SampleRows = Annotated[PositiveInt, AfterValidator(_at_most(1_000_000, "embeddings held in memory"))]
Epochs = Annotated[PositiveInt, AfterValidator(_at_most(1000, "training time"))]
Replicates = Annotated[PositiveInt, AfterValidator(_at_most(100_000, "evaluation time grows with it"))]
TimedRuns = Annotated[PositiveInt, AfterValidator(_at_most(10_000, "export time"))]
ApprovalHours = Annotated[PositiveFloat, AfterValidator(_at_most(720, "30 days: older evidence is stale"))]
WebhookSeconds = Annotated[PositiveFloat, AfterValidator(_at_most(300, "a task waits for it"))]
ChunkRows = Annotated[PositiveInt, AfterValidator(_at_most(1_000_000, "rows held in memory at once"))]
Permutations = Annotated[PositiveInt, AfterValidator(_at_most(100_000, "drift time"))]
KernelRows = Annotated[PositiveInt, AfterValidator(_at_most(10_000, "the kernel matrix holds (2 x rows)^2 floats"))]
BatchSize = Annotated[PositiveInt, AfterValidator(_at_most(65_536, "rows held in memory at once"))]
ModelName = Annotated[str, AfterValidator(_name)]
StoreUri = Annotated[str, AfterValidator(_store_uri)]
MarkerName = Annotated[str | None, AfterValidator(_marker_name)]
WebhookUrl = Annotated[str | None, AfterValidator(_webhook_url)]
Metric = Literal["accuracy", "balanced_accuracy", "macro_f1", "auroc", "log_loss", "brier", "ece"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, frozen=True, allow_inf_nan=False)


class BackboneSpec(_Strict):
    """Which pretrained network to start from and where its weights come from."""

    library: Literal["timm", "transformers"] = Field("timm", description="timm for images, transformers for text.")
    name: str = Field("resnet18", description="timm model name or Hugging Face id (or directory).")
    revision: str = Field("main", description="Hub revision (commit, tag, branch); part of the cache key.")
    weights: Literal["hub", "local", "store", "package", "none"] = Field(
        "hub", description="hub: download; local: a path on disk; store: a store URI; package: a state-dict file "
        "inside an installed package, converted by key_map; none: random init.",
    )
    path: str | None = Field(None, description="Directory/file (local) or URI (store) holding the weights.")
    package: str | None = Field(
        None, description="Python package that ships the weights as a directory (used when path is unset)."
    )
    key_map: Literal["identity", "by_position", "lukemelas_efficientnet"] = Field(
        "identity", description="package weights: how the file's tensor names map onto the model's (every shape "
        "is checked on load; tl_core.models.convert).",
    )
    input_size: PositiveInt | None = Field(
        None, description="Images: square input size overriding the pretrained config's (e.g. 128 on CPU)."
    )
    licence: str | None = Field(
        None, description="The source checkpoint's licence (SPDX id, e.g. apache-2.0); None: read it from the "
        "package metadata or timm's pretrained config where present.",
    )
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra create_model kwargs.")
    max_length: PositiveInt = Field(128, description="Text: maximum tokens per example.")

    @model_validator(mode="after")
    def _path_required(self) -> BackboneSpec:
        if self.weights in ("local", "store") and not (self.path or self.package):
            raise ValueError(f"weights={self.weights!r} needs 'path' (or 'package'); set backbone.path")
        if self.weights == "package" and not (self.package and self.path):
            raise ValueError(f"weights='package' needs backbone.package and backbone.path (the state-dict file "
                             f"inside it), got package={self.package!r}, path={self.path!r}")
        if self.weights == "package" and self.library != "timm":
            raise ValueError(f"weights='package' is for timm models (transformers: weights='local' with "
                             f"backbone.package), got library={self.library!r}")
        if self.weights == "store" and self.path:
            problem = _weights_uri_problem(self.path)
            if problem:
                raise ValueError(f"weights='store' needs backbone.path {problem}")
        return self


def _weights_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot name one weights object (s3://bucket/key or file://path), or None."""
    if uri.startswith("s3://"):
        bucket, _, key = uri[len("s3://") :].partition("/")
        if not bucket or not key or key.endswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
            return f"to be s3://bucket/key/of/weights.safetensors (a bucket and an object key), got {uri!r}"
        return None
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path.strip("/") or path.endswith("/"):
            return f"to be file:///abs/path/to/weights.safetensors (a file, not a folder), got {uri!r}"
        return None
    return f"to be a store URI (s3://bucket/key or file:///path), got {uri!r}"


def backbone_problems(backbone: BackboneSpec) -> list[str]:
    """What can be known on this machine before a run: local weights exist, their package is installed.

    ``tl validate-spec`` reports these; store weights are checked for the URI form only (the object may
    be written later, e.g. by ``tl pretrain-source``), hub weights not at all.
    """
    if backbone.weights not in ("local", "package"):
        return []
    base = Path()
    if backbone.package:
        try:
            found = importlib.util.find_spec(backbone.package)
        except (ImportError, ValueError):
            found = None
        if found is None or not found.submodule_search_locations:
            return [f"backbone.package: {backbone.package!r} is not installed (expected an importable Python "
                    "package that ships the weights folder); install it or set backbone.path"]
        base = Path(list(found.submodule_search_locations)[0])
    path = base / backbone.path if backbone.path else base
    if not path.exists():
        where = f" inside package {backbone.package!r}" if backbone.package else ""
        return [f"backbone.path: {str(path)!r}{where} does not exist (weights={backbone.weights!r}); point it at the "
                "weights file or folder"]
    return []


class DataSpec(_Strict):
    """Where production-labeled partitions live and how the window and split are drawn."""

    root: StoreUri = Field("file://.tl/data", description="Store URI holding <dataset>/dt=YYYY-MM-DD/*.parquet.")
    dataset: str = Field("default", description="Dataset folder under the data root.")
    window_days: WindowDays = Field(14, description="A run for date D reads partitions in [D - window_days, D].")
    completion_marker: MarkerName = Field(
        "_SUCCESS", description="File a partition's writer puts in its dt= folder last; null: markers not used."
    )
    arrival_timeout_minutes: ArrivalMinutes = Field(
        1560.0, description="retrain_<name> waits this long for the logical date's marker, then fails naming it "
        "(26 h: a @daily run starts at 00:00 on day D, whose labels complete about a day later).",
    )
    arrival_poke_seconds: PokeSeconds = Field(
        300.0, description="How often the (deferred) wait for the marker looks for it."
    )
    missing_day: Literal["warn", "fail"] = Field(
        "warn", description="A run whose own day has no data file (marker but no file, or no folder): warn naming "
        "the day and train on the earlier days, or fail.",
    )
    input_column: str = Field("text", description="Input column: text, image or image_uri.")
    slice_columns: list[str] = Field(default_factory=list, description="Columns whose values define slices.")
    slice_crosses: list[list[str]] = Field(default_factory=list, description="Pairs of slice columns to cross.")
    min_examples_per_class: PositiveInt = Field(10, description="Fewer examples in a class is a blocking finding.")
    max_unknown_label_fraction: Fraction = Field(
        0.01, description="Rows with labels outside the label set beyond this fraction block the run."
    )
    test_days: PositiveInt = Field(2, description="The newest labeling days that form the test set.")
    validation_fraction: Fraction = Field(0.15, description="Share of the non-test rows used for validation.")
    calibration_fraction: Fraction = Field(0.15, description="Share of the non-test rows used for calibration.")
    near_duplicate_bits: NonNegativeInt = Field(4, description="Image perceptual-hash Hamming distance for near-dups.")
    near_duplicate_confirm_bits: NonNegativeInt = Field(
        24, description="A candidate image pair is confirmed only if its 256-bit dHashes differ in at most this."
    )
    near_duplicate_max_pixel_diff: NonNegativeFloat = Field(
        16.0, description="...and its 16x16 grey thumbnails differ by at most this mean absolute grey level (0-255)."
    )
    near_blank_max_std: NonNegativeFloat = Field(
        4.0, description="Images whose grey thumbnail varies less than this (std) are near-blank: exact dups only."
    )
    split_tolerance: Fraction = Field(
        0.1, description="The split fails if clusters pulled into test raise its share by more than this."
    )
    split_required_classes: list[Literal["train", "validation", "calibration"]] = Field(
        default=["train", "calibration"], description="Splits where every class must have rows, else the split fails."
    )
    label_issues: Literal["warn", "quarantine", "block"] = Field(
        "block", description="Label issues over a limit: report, keep flagged rows out of train, or stop the run."
    )
    label_issues_max_slice_excess: Fraction = Field(
        0.2, description="A slice whose flagged share beats the other rows' by more than this (and alpha) trips it."
    )
    label_issues_alpha: OpenFraction = Field(
        0.001, description="...when a Fisher exact test of that slice against the other rows has p below this."
    )
    label_issues_max_fraction: Fraction = Field(
        1.0, description="Overall flagged share that trips it (1.0: never; weak embeddings flag 60-80% of clean rows)."
    )
    label_issues_folds: Folds = Field(
        5, description="Cross-validation folds for out-of-fold probabilities.")
    label_issues_max_rows: SampleRows = Field(
        100_000, description="Label issues run on a seeded sample of at most this many non-test rows (~15 s at 384-d)."
    )
    label_issues_min_slice: PositiveInt = Field(
        20, description="Slices / classes smaller than this are reported but never trip the policy."
    )
    split_seed: NonNegativeInt = Field(0, description="Seed for the deterministic split.")
    label_shift_alpha: Fraction = Field(
        0.01, description="Label shift vs the previous snapshot is flagged when the chi-square p-value is below this."
    )
    label_shift_min_tvd: Fraction = Field(
        0.05, description="Label shift is flagged only when the label distributions differ by at least this TVD."
    )

    def marker_uri(self, day: str) -> str | None:
        """URI of the completion marker of the partition ``day`` (YYYY-MM-DD), or None when markers are not used."""
        if self.completion_marker is None:
            return None
        return f"{self.root.rstrip('/')}/{self.dataset}/dt={day}/{self.completion_marker}"

    @model_validator(mode="after")
    def _fractions_leave_train(self) -> DataSpec:
        total = self.validation_fraction + self.calibration_fraction
        if total >= 0.9:
            raise ValueError(
                "validation_fraction + calibration_fraction must be below 0.9 to leave rows for training, "
                f"got {total:.2f}"
            )
        return self


class LoraSpec(_Strict):
    """peft LoRA settings."""

    r: PositiveInt = Field(8, description="Adapter rank.")
    alpha: PositiveInt = Field(16, description="Scaling numerator (scale = alpha / r).")
    dropout: Fraction = Field(0.05, description="Dropout on the adapter input.")
    target_modules: list[str] | None = Field(None, description="Module names to adapt; None picks per architecture.")
    lr: PositiveFloat | None = Field(
        None, description="Adapter learning rate, the same in every block; None: backbone_lr with layer decay."
    )


class DistributedSpec(_Strict):
    """Data-parallel training inside one train task (torch DDP, one process per device)."""

    nproc_per_node: PositiveInt = Field(
        1, description="Processes launched by the train task (1: no DDP); each takes 1/n of every batch."
    )
    backend: Literal["auto", "gloo", "nccl"] = Field("auto", description="auto: nccl on CUDA, gloo on CPU.")


class TrainSpec(_Strict):
    """The fine-tuning recipe shared by all gradient-trained strategies."""

    strategies: list[Literal["frozen", "lora", "partial", "full", "scratch"]] = Field(
        default=["frozen", "lora"], description="Transfer strategies to train; all are compared."
    )
    seed: NonNegativeInt = Field(0, description="Seed for weights, sampling and augmentation.")
    epochs: Epochs = Field(6, description="Maximum epochs after warm-up.")
    warmup_epochs: NonNegativeInt = Field(1, description="Head-only epochs before unfreezing.")
    batch_size: BatchSize = Field(32, description="Training batch size.")
    eval_batch_size: BatchSize = Field(128, description="Batch size for embedding and evaluation.")
    lr: PositiveFloat = Field(1e-3, description="Learning rate of the head; lower layers decay from it.")
    backbone_lr: PositiveFloat = Field(1e-4, description="Learning rate of the top backbone block.")
    scratch_lr: PositiveFloat | None = Field(
        None, description="scratch: learning rate of every layer (random init wants its own); None uses lr."
    )
    layer_decay: Fraction = Field(0.8, description="Per-block learning-rate decay going down the backbone.")
    weight_decay: NonNegativeFloat = Field(0.01, description="AdamW weight decay (not on norms and biases).")
    warmup_fraction: Fraction = Field(0.1, description="Share of steps with linear LR warm-up before cosine.")
    grad_clip: PositiveFloat = Field(1.0, description="Gradient-norm clipping.")
    patience: PositiveInt = Field(2, description="Early-stopping patience in epochs on the validation metric.")
    partial_blocks: PositiveInt = Field(2, description="partial: number of top blocks to unfreeze.")
    class_weighting: Literal["balanced", "none"] = Field("balanced", description="Loss weights for imbalance.")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="LoRA settings.")
    frozen_c_grid: list[PositiveFloat] = Field(
        default=[0.01, 0.1, 1.0, 10.0], min_length=1,
        description="Logistic-regression C values tried on validation (at least one).",
    )
    primary_metric: Metric = Field("macro_f1", description="Validation metric for early stopping and selection.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto picks CUDA when present.")
    compile: bool = Field(False, description="torch.compile the model (GPU workers).")
    max_train_examples: PositiveInt | None = Field(None, description="Cap on training rows (demo/CI).")
    distributed: DistributedSpec = Field(
        default_factory=DistributedSpec, description="DDP inside the train task (fine-tuned strategies)."
    )
    tasks_per_run: PositiveInt = Field(
        1, description="Train tasks of one run that may run at once (the mapped train tasks' "
                       "max_active_tis_per_dagrun); the 'gpu' pool bounds all runs together.")


class CalibrationGate(_Strict):
    """Calibration requirements after temperature scaling."""

    ece_max: Fraction = Field(0.1, description="Absolute ceiling on the candidate's ECE after temperature.")
    ece_tolerance: Fraction = Field(0.02, description="Candidate ECE may exceed the champion's by at most this.")


class GateSpec(_Strict):
    """The promotion policy. Thresholds live only here."""

    confidence: OpenFraction = Field(0.95, description="Two-sided confidence level of the bootstrap intervals.")
    n_bootstrap: Replicates = Field(
        1000, description="Paired bootstrap replicates.")
    bootstrap_seed: NonNegativeInt = Field(0, description="Seed of the bootstrap resampling.")
    # Defaults chosen with bench/gate_quality.py on real data (docs/gate.md): at 0.02 overall, equal retrains on
    # disjoint data were rejected in 42% of pairs; per-slice accuracy judges a few hundred rows with less noise
    # than per-slice macro-F1 over many classes.
    margins: dict[Metric, NonNegativeFloat] = Field(
        default={"macro_f1": 0.03, "accuracy": 0.03},
        description="Non-inferiority margin per metric on the bound of candidate - champion.",
    )
    slice_metrics: list[Metric] = Field(
        default=["accuracy"], description="Metrics checked per slice (overall uses margins)."
    )
    slice_margins: dict[Metric, NonNegativeFloat] = Field(
        default_factory=dict, description="Per-slice margin per slice metric; a metric not listed uses `margins`."
    )
    overall_inconclusive: Literal["fail", "warn"] = Field(
        "fail", description="An overall check that shows neither non-inferiority nor harm (harm always fails)."
    )
    slice_inconclusive: Literal["fail", "warn"] = Field(
        "warn", description="A slice check that shows neither non-inferiority nor harm (harm always fails)."
    )
    power: OpenFraction = Field(0.8, description="Power at which the evidence states each check's detectable drop.")
    correction: Literal["holm", "bonferroni", "none"] = Field("holm", description="Multiple-comparison correction.")
    min_slice_size: PositiveInt = Field(30, description="Slices smaller than this are 'insufficient data'.")
    insufficient_slice: Literal["fail", "warn"] = Field("warn", description="What an insufficient slice does.")
    required_slices: list[str] = Field(
        default_factory=list, description="Slices ('col=value') that must be present in the test set."
    )
    calibration: CalibrationGate = Field(default_factory=CalibrationGate, description="Calibration limits.")
    absolute_minimums: dict[Metric, Fraction] = Field(
        default={"macro_f1": 0.5},
        description="Floors that apply always (and alone on bootstrap); ceilings for log_loss, brier and ece.",
    )
    must_beat_majority: bool = Field(True, description="Candidate must beat the majority-class predictor.")
    must_match_frozen: bool = Field(True, description="A fine-tuned candidate must not be worse than frozen.")
    require_licence: bool = Field(
        False, description="Fail a candidate whose source checkpoint's licence is unknown (a known licence must "
        "always be in allowed_licences).",
    )
    allowed_licences: list[str] = Field(
        default=["apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0"],
        description="Source-checkpoint licences (SPDX ids, any case) a promoted model may build on.",
    )
    licence_override: str | None = Field(
        None, description="A recorded reason to promote despite an unknown or disallowed licence (WARN, not FAIL)."
    )

    @model_validator(mode="after")
    def _slice_margins_name_slice_metrics(self) -> GateSpec:
        extra = sorted(set(self.slice_margins) - set(self.slice_metrics))
        if extra:
            raise ValueError(f"slice_margins names metrics that are not in slice_metrics {self.slice_metrics}: "
                             f"{extra}; add them to slice_metrics or remove them")
        return self

    def slice_margin(self, metric: str) -> float:
        """The non-inferiority margin of ``metric`` on a slice (``slice_margins``, else ``margins``, else 0)."""
        return float(self.slice_margins.get(metric, self.margins.get(metric, 0.0)))  # type: ignore[call-overload]


StrategyName = Literal["frozen", "lora", "partial", "full", "scratch"]


class CandidateSpec(_Strict):
    """Another pretrained backbone trained and compared in the same run (model folders '<strategy>-<name>')."""

    name: ModelName = Field("alt", description="Short name of the candidate (lowercase, digits, '-', '_').")
    backbone: BackboneSpec = Field(default_factory=BackboneSpec, description="The candidate's pretrained backbone.")
    strategies: list[StrategyName] = Field(
        default=["frozen"], description="Its strategies; 'frozen' (the cheap, cached baseline that ranks it) first."
    )

    @model_validator(mode="after")
    def _frozen_first(self) -> CandidateSpec:
        if not self.strategies or self.strategies[0] != "frozen" or len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"strategies must start with 'frozen' (it ranks the backbone) and name each strategy "
                             f"once, got {self.strategies}")
        return self


class SelectionSpec(_Strict):
    """How a run with several backbones picks one: cost is measured, budgets exclude, then the best metric."""

    finetune_top_k: PositiveInt = Field(
        1, description="Backbones (the spec's own included) fine-tuned: the top k by frozen validation metric."
    )
    max_latency_ms: PositiveFloat | None = Field(
        None, description="Budget: onnxruntime latency at batch 1 (median, ms) on the worker that trained it."
    )
    max_model_mb: PositiveFloat | None = Field(None, description="Budget: size of the model's ONNX file (MB).")
    serving_batch: BatchSize = Field(32, description="The serving batch size whose latency is measured too.")
    latency_runs: TimedRuns = Field(20, description="Timed onnxruntime runs per batch size (the median counts).")


class ApprovalSpec(_Strict):
    """Human approval in Airflow."""

    assigned_users: list[str] = Field(default=["admin"], description="Who may approve.")
    response_timeout_hours: ApprovalHours = Field(24.0, description="No answer within this means no promotion.")


NotifyEvent = Literal["failure", "gate_fail", "pending_approval", "promotion", "drift"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("failure", "gate_fail", "pending_approval", "promotion", "drift")


class WebhookSpec(_Strict):
    """One webhook channel: JSON POSTs ({"text": ..., "event": ..., ...}; Slack incoming webhooks accept them)."""

    url: WebhookUrl = Field(None, description="http(s) URL to POST to (or give url_env to keep it out of the spec).")
    url_env: str | None = Field(None, description="Environment variable holding the URL (secrets stay out of git).")
    events: list[NotifyEvent] = Field(default=list(NOTIFY_EVENTS), description="Events this channel receives.")
    timeout_seconds: WebhookSeconds = Field(
        10.0, description="Deadline of a whole POST; a failed POST is logged, never raised.")

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSpec:
        if (self.url is None) == (self.url_env is None):
            given = "neither" if self.url is None else f"both (url_env={self.url_env!r})"
            # a webhook URL may carry a secret (a token in its path, user:password@): never echoed
            raise ValueError(f"give exactly one of url and url_env, got {given}")
        return self


class NotifySpec(_Strict):
    """Who hears about failures, gate FAILs, pending approvals, promotions/rollbacks and drift."""

    webhooks: list[WebhookSpec] = Field(default_factory=list, description="Webhook channels (none: no messages).")

    def channels(self, event: str) -> list[WebhookSpec]:
        """The channels subscribed to ``event`` (one of NOTIFY_EVENTS)."""
        if event not in NOTIFY_EVENTS:
            raise ValueError(f"notification event {event!r} is not one of {NOTIFY_EVENTS}")
        return [w for w in self.webhooks if event in w.events]


class ExportSpec(_Strict):
    """ONNX export and parity."""

    opset: PositiveInt = Field(18, description="ONNX opset (17 or newer).")
    max_abs_logit_diff: PositiveFloat = Field(1e-4, description="Parity: torch vs onnxruntime logit tolerance.")
    max_ece_diff: PositiveFloat = Field(1e-3, description="Parity: ECE difference tolerance.")
    quantize_int8: bool = Field(
        False, description="Also make a dynamically quantized int8 ONNX artifact, gated on its own against fp32."
    )
    int8_margin: NonNegativeFloat = Field(
        0.01, description="int8 gate: the lower bound of int8 - fp32 (train.primary_metric, test split, paired "
        "bootstrap at gate.confidence) must be >= -this.",
    )
    # Defaults from bench/onnx_latency.py (real MiniLM, 200 held-out texts): agreement 0.98, ECE bound +0.031.
    int8_min_agreement: Fraction = Field(
        0.97, description="int8 gate: share of test examples whose int8 top-1 equals fp32's, at least this."
    )
    int8_ece_tolerance: NonNegativeFloat = Field(
        0.05, description="int8 gate: the upper bound of ECE(int8) - ECE(fp32) (paired bootstrap) must be <= this."
    )

    @model_validator(mode="after")
    def _opset(self) -> ExportSpec:
        if self.opset < 17:
            raise ValueError(f"opset must be 17 or newer, got {self.opset}")
        return self


class MonitorSpec(_Strict):
    """The production loop: batch scoring of unlabeled partitions, drift and the label-free accuracy estimate."""

    scoring_root: StoreUri = Field(
        "file://.tl/scoring", description="Store URI holding unlabeled partitions <dataset>/dt=YYYY-MM-DD/*.parquet."
    )
    chunk_rows: ChunkRows = Field(8192, description="Rows read from Parquet and scored per chunk (bounds memory).")
    batch_size: BatchSize = Field(256, description="Rows per onnxruntime call inside a chunk.")
    shadow: bool = Field(True, description="Also score the newest registered non-champion version (challenger).")
    embedding_alpha: OpenFraction = Field(
        0.01, description="Input drift: alert when the embedding MMD permutation test's p-value is below this."
    )
    chi2_alpha: OpenFraction = Field(
        0.01, description="Prediction shift: alert when the predicted-class chi-square test's p-value is below this."
    )
    psi_threshold: PositiveFloat = Field(
        0.2, description="Prediction shift: alert when the PSI of predicted-class shares exceeds this."
    )
    accuracy_drop: Fraction = Field(
        0.05, description="Alert when the label-free accuracy estimate is this far below the champion's test accuracy."
    )
    min_slice_rows: PositiveInt = Field(
        30, description="Slices with fewer scored rows are reported but never alert."
    )
    min_rows: PositiveInt = Field(
        100, description="A partition with fewer scored rows is reported but raises no overall drift alert."
    )
    permutations: Permutations = Field(200, description="Permutations of the embedding two-sample test.")
    seed: NonNegativeInt = Field(0, description="Seed of the row sampling and the permutations.")
    embedding_max_rows: KernelRows = Field(
        1000, description="Rows sampled from each side (training snapshot, partition) for the embedding test."
    )


class ModelSpec(_Strict):
    """One model/project: everything a retrain run needs."""

    name: ModelName = Field("model", description="Model name; part of S3 keys and DAG ids.")
    modality: Literal["text", "image"] = Field("text", description="Input modality.")
    description: str = Field("", description="Free text shown in the UI.")
    labels: list[Label] = Field(default_factory=list, description="The label set, in output order.")
    backbone: BackboneSpec = Field(default_factory=BackboneSpec, description="Pretrained backbone.")
    candidates: list[CandidateSpec] = Field(
        default_factory=list, description="More backbones compared in the same run (selection picks one).")
    selection: SelectionSpec = Field(default_factory=SelectionSpec, description="Backbone selection and budgets.")
    data: DataSpec = Field(default_factory=DataSpec, description="Data location, window and split.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="Training recipe.")
    gate: GateSpec = Field(default_factory=GateSpec, description="Promotion policy.")
    export: ExportSpec = Field(default_factory=ExportSpec, description="ONNX export and parity.")
    approval: ApprovalSpec = Field(default_factory=ApprovalSpec, description="Human approval.")
    monitor: MonitorSpec = Field(default_factory=MonitorSpec, description="Batch scoring, drift, label-free accuracy.")
    store: StoreUri = Field("file://.tl/store", description="Store URI for runs/ and (by default) registry/.")
    registry: StoreUri | None = Field(None, description="Registry root; defaults to the store.")
    schedule: str | None = Field("@daily", description="Airflow schedule of retrain_<name>; null for manual.")
    notify: NotifySpec = Field(default_factory=NotifySpec, description="Notification channels and their events.")

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if len(self.labels) < 2:
            raise ValueError(f"labels must list at least 2 classes, got {len(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            dupes = sorted({x for x in self.labels if self.labels.count(x) > 1})
            raise ValueError(f"labels must be unique, got duplicates {dupes}")
        expected = "transformers" if self.modality == "text" else "timm"
        if self.backbone.library != expected:
            raise ValueError(
                f"backbone.library must be {expected!r} for modality {self.modality!r}, got {self.backbone.library!r}"
            )
        if self.modality == "text" and self.data.input_column != "text":
            raise ValueError(f"data.input_column must be 'text' for text models, got {self.data.input_column!r}")
        if self.modality == "image" and self.data.input_column not in ("image", "image_uri"):
            raise ValueError(
                f"data.input_column must be 'image' or 'image_uri' for image models, got {self.data.input_column!r}"
            )
        for cross in self.data.slice_crosses:
            unknown = [c for c in cross if c not in self.data.slice_columns]
            if unknown or len(cross) != 2:
                raise ValueError(
                    f"data.slice_crosses entries must be pairs of slice_columns, got {cross} "
                    f"(slice_columns: {self.data.slice_columns})"
                )
        if not self.train.strategies:
            raise ValueError("train.strategies must name at least one strategy")
        self._check_candidates(expected)
        return self

    def _check_candidates(self, library: str) -> None:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidates: names must be unique, got {names}")
        for i, cand in enumerate(self.candidates):
            if cand.backbone.library != library:
                raise ValueError(f"candidates.{i}.backbone.library must be {library!r} for modality "
                                 f"{self.modality!r}, got {cand.backbone.library!r}")
        if self.candidates and "frozen" not in self.train.strategies:
            raise ValueError("train.strategies must include 'frozen' when candidates are listed (every backbone's "
                             "frozen baseline ranks it)")

    def model_ids(self) -> list[str]:
        """Every model a run trains: the spec's strategies, then '<strategy>-<candidate>' per candidate."""
        return [*self.train.strategies, *(f"{s}-{c.name}" for c in self.candidates for s in c.strategies)]

    def training_order(self) -> list[str]:
        """model_ids with every frozen baseline first (they rank the backbones before any fine-tuning)."""
        return sorted(self.model_ids(), key=lambda m: not m.startswith("frozen"))

    def for_model(self, model_id: str) -> tuple[ModelSpec, str, str | None]:
        """(the spec that trains ``model_id``: its backbone and strategies, the strategy, the candidate name)."""
        strategy, _, candidate = model_id.partition("-")
        if model_id not in self.model_ids():
            raise ValueError(f"model {model_id!r} is not trained by spec {self.name!r}: expected one of "
                             f"{self.model_ids()}")
        if not candidate:
            return self, strategy, None
        cand = next(c for c in self.candidates if c.name == candidate)
        train = self.train.model_copy(update={"strategies": list(cand.strategies)})
        return self.model_copy(update={"backbone": cand.backbone, "train": train}), strategy, candidate

    @property
    def registry_root(self) -> str:
        return self.registry or self.store

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON form; recorded with every artifact the spec produced."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _format_error(err: Any) -> str:
    path = ".".join(str(p) for p in err["loc"]) or "<spec>"
    msg: str = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    elif err["type"] == "extra_forbidden":
        msg = "unknown field; remove it or check its spelling"
    elif err["type"] == "missing":
        msg = "is required"
    elif err["type"] in ("int_type", "int_parsing", "int_from_float"):
        msg = f"must be a whole number (e.g. 14, not true or 14.0), got {err.get('input')!r}"
    elif err["type"] == "finite_number":
        msg = f"must be a finite number (not .nan or .inf), got {err.get('input')!r}"
    else:
        msg = f"{msg[0].lower()}{msg[1:]}, got {err.get('input')!r}"
    return f"{path}: {msg}"


def parse_spec(raw: dict[str, Any], source: str = "<spec>") -> ModelSpec:
    """Validate a spec mapping; raise SpecError naming every bad field path."""
    if not isinstance(raw, dict):
        raise SpecError(f"{source}: a spec must be a YAML mapping, got {type(raw).__name__}")
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        raise SpecError(f"{source}: invalid model spec:\n  " + "\n  ".join(lines)) from None


# Deployment overrides: one environment (e.g. the docker compose stack) points every spec at its own store.
ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "TL_STORE_URI": ("store",),
    "TL_REGISTRY_URI": ("registry",),
    "TL_DATA_ROOT_URI": ("data", "root"),
}


def apply_env_overrides(raw: Any, env: dict[str, str] | os._Environ[str]) -> tuple[Any, list[str]]:
    """Set the spec fields named in ENV_OVERRIDES from non-empty variables; returns (raw, applied 'VAR=value')."""
    if not isinstance(raw, dict):
        return raw, []
    out: dict[str, Any] = dict(raw)
    applied = []
    for var, path in ENV_OVERRIDES.items():
        value = env.get(var, "")
        if not value:
            continue
        node = out
        for part in path[:-1]:
            child = node.get(part) or {}
            if not isinstance(child, dict):
                raise SpecError(f"{'.'.join(path[:-1])}: must be a mapping to apply {var}, got {child!r}")
            node[part] = dict(child)
            node = node[part]
        node[path[-1]] = value
        applied.append(f"{var}={value}")
    return out, applied


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges defaults that the mapping's own keys may override
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: construct_mapping below reports it
            if first is not None:
                raise _DuplicateKeyError(
                    None, None, f"duplicate key {key!r} on line {line} (first given on line {first}); "
                    "keep one of them", key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse spec YAML safely; a syntax error or a duplicated key is a SpecError naming the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKeyError as exc:
        raise SpecError(f"{source}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source}: not valid YAML: {exc}") from None


def load_spec(path: str | Path) -> ModelSpec:
    """Load and validate one YAML spec file (after the TL_*_URI deployment overrides, see ENV_OVERRIDES)."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p} (expected a YAML file such as configs/support-tickets.yaml)")
    try:
        text = p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{p}: cannot read the spec file: {exc}") from None
    raw = load_yaml(text, str(p))
    if isinstance(raw, dict) and "name" not in raw:  # a file's model must be named, never the default "model"
        raise SpecError(f"{p}: invalid model spec:\n  name: is required in a spec file (the model's name: it becomes "
                        f"its DAG ids and store keys), e.g. name: {p.stem}")
    raw, applied = apply_env_overrides(raw, os.environ)
    return parse_spec(raw, source=f"{p} (with {', '.join(applied)})" if applied else str(p))


def resolve_store_uri(uri: str) -> str:
    """``uri`` as the process that reads it sees it: a relative ``file://`` URI resolved against the working
    directory (``file://.tl/store`` run from /srv is file:///srv/.tl/store); any other URI unchanged."""
    if uri.startswith("file://") and not uri.startswith("file:///"):
        return Path(uri[len("file://"):]).resolve().as_uri()
    return uri


def relative_store_uris(spec: ModelSpec) -> dict[str, str]:
    """The spec's store URIs that are relative ``file://`` paths (field path -> URI): they name another folder
    from every working directory, so the same spec read elsewhere sees no runs, versions or data."""
    uris = {"store": spec.store, "registry": spec.registry, "data.root": spec.data.root,
            "monitor.scoring_root": spec.monitor.scoring_root}
    return {field: uri for field, uri in uris.items() if uri and resolve_store_uri(uri) != uri}


@dataclass(frozen=True)
class SpecFolder:
    """The specs of a configs folder, each judged on its own: one broken file never hides the others."""

    specs: dict[str, tuple[Path, ModelSpec]]  # model name -> (file, validated spec)
    errors: dict[Path, str]  # file -> why it gives no model (validation error, or a name another file holds)
    claimed: dict[str, Path]  # model name a broken file's raw YAML gives -> that file (to say "its spec is broken")


def _raw_name(path: Path) -> str | None:
    """The ``name`` a spec file's YAML gives, when it can be read at all (for naming a broken spec's model)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    name = raw.get("name") if isinstance(raw, dict) else None
    return name if isinstance(name, str) else None


def load_spec_folder(directory: str | Path) -> SpecFolder:
    """Every ``*.yaml`` of ``directory`` validated on its own. Two files that give one model name: the file named
    after the model (``<name>.yaml``) keeps it, else the first by file name; the other is an error naming both."""
    specs: dict[str, tuple[Path, ModelSpec]] = {}
    errors: dict[Path, str] = {}
    claimed: dict[str, Path] = {}
    loaded: list[tuple[Path, ModelSpec]] = []
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            loaded.append((path, load_spec(path)))
        except SpecError as exc:
            errors[path] = str(exc)
            if (name := _raw_name(path)) is not None:
                claimed.setdefault(name, path)
    for path, spec in sorted(loaded, key=lambda item: (item[0].stem != item[1].name, item[0].name)):
        if spec.name in specs:
            errors[path] = (f"{path}: model name {spec.name!r} is already given by {specs[spec.name][0].name}, whose "
                            "DAGs and pages it keeps; give this spec another name")
            continue
        specs[spec.name] = (path, spec)
    return SpecFolder(specs=specs, errors=dict(sorted(errors.items())), claimed=claimed)


def load_specs(directory: str | Path) -> list[ModelSpec]:
    """Every spec in a directory, sorted by file name; names must be unique."""
    specs = [load_spec(p) for p in sorted(Path(directory).glob("*.yaml"))]
    seen: dict[str, int] = {}
    for s in specs:
        seen[s.name] = seen.get(s.name, 0) + 1
    dupes = [n for n, c in seen.items() if c > 1]
    if dupes:
        raise SpecError(f"{directory}: model names must be unique across specs, duplicated: {dupes}")
    return specs
