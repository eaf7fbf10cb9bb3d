"""Where a run's artifacts live: ``<store>/runs/<model>/<run_id>/...`` (DESIGN.md "Runs and artifacts").

Every step reads and writes through a :class:`RunContext`, so the layout is defined once here.
Tasks pass URIs, never data.

Layout under the run prefix::

    spec.json                         the validated spec that produced everything below
    snapshot/manifest.json            partitions, row counts, content hash (data plane)
    audit/report.json                 findings with severities (data plane)
    audit/quarantine.parquet          non-blocking bad rows with a `reason` column
    split/examples.parquet            one row per usable example: example_id, label, labeled_at, split,
                                      the input column, group_id (if any) and the slice columns
    split/split.json                  example ids per split and the split hash
    models/<strategy>/model.safetensors, model_config.json, preprocessing/...   (training)
    models/<strategy>/logits/<split>.npz   arrays `example_id` (str) and `logits` (float32, n x C)
    models/<strategy>/train_report.json    curves, wall time, samples/s, peak memory, validation score
    candidate.json                    the selected strategy and every strategy's validation score
    export/model.onnx, export/parity.json, export/golden.npz   (export)
    export/model.int8.onnx, export/int8.json   (export with quantize_int8: the int8 artifact and its own gate)
    evaluation/report.json, evaluation/report.html             (evaluate; the page says the gate has not run)
    gate/report.html, gate/decision.json   (gate: the evidence report with its decision, then the decision)
    steps/<step>[.<part>].json        one record per step that started on this run (what has consumed what)

A run is bound to the spec it started with: the first step writes ``spec.json`` create-only, and every
later step (a re-run included) refuses a spec with another fingerprint. Steps run in ``STEP_ORDER``; once
a step has started it has consumed every artifact of the steps before it, so an earlier step re-run after
it may rewrite an existing artifact only with identical bytes (then nothing is written, etags stay),
never with different ones (:class:`RunConflict`; the fix is a new run id). A re-run of a step that nothing
later has used yet (an Airflow retry) writes as before. No step writes another step's file.

Each step writes one file last (``STEP_DONE``): its presence marks the step as done (``RunContext.step_done``),
and the local ``tl run`` skips a done step, so a finished run re-run (e.g. with ``--register``) only registers.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

from tl_core.artifacts import (
    A,
    Artifact,
    AuditReport,
    EvaluationReport,
    GateDecision,
    Int8Report,
    LabelIssues,
    ModelConfig,
    ParityReport,
    Plan,
    Selection,
    ServingCost,
    SnapshotManifest,
    SplitCheck,
    SplitReport,
    TrainReport,
    dump_artifact,
    parse_artifact,
)
from tl_core.config import ModelSpec
from tl_core.errors import DataError, InvalidRunId, NoSuchKey, PreconditionFailed, RunConflict
from tl_core.store import ObjectStore, join_key, key_safe, open_store

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "calibration", "test")
# The order in which steps consume each other's artifacts (train's strategies share one rank).
STEP_ORDER = ("snapshot", "audit", "split", "label-issues", "plan", "train", "select", "export", "evaluate", "gate",
              "register")
STEPS_DIR = "steps"
SPEC_FILE = "spec.json"
EXAMPLES_FILE = "split/examples.parquet"
# Run files that belong to the candidate besides models/<selected>/ (when present).
CANDIDATE_RUN_FILES = ("export/model.onnx", "candidate.json")
# The int8 artifact and its own gate decision (export with quantize_int8); registered only when that passed.
INT8_FILE = "export/model.int8.onnx"
INT8_REPORT = "export/int8.json"
# The evidence report with the gate's decision on top (the gate's own page; evaluation/report.html is evaluate's).
GATE_REPORT_HTML = "gate/report.html"
# The one place that knows where each run artifact lives (relative to the run; ``{strategy}`` is filled in from
# the reader's ``strategy=``), and the step that writes it (named when it is missing).
RUN_ARTIFACTS: dict[type[Artifact], tuple[str, str]] = {
    SnapshotManifest: ("snapshot/manifest.json", "snapshot"),
    AuditReport: ("audit/report.json", "audit"),
    SplitReport: ("split/split.json", "split"),
    SplitCheck: ("split/report.json", "split"),
    LabelIssues: ("audit/label_issues.json", "label-issues"),
    Plan: ("plan.json", "plan"),
    TrainReport: ("models/{strategy}/train_report.json", "train"),
    ModelConfig: ("models/{strategy}/model_config.json", "train"),
    ServingCost: ("models/{strategy}/cost.json", "train"),
    Selection: ("candidate.json", "select"),
    ParityReport: ("export/parity.json", "export"),
    Int8Report: (INT8_REPORT, "export"),
    EvaluationReport: ("evaluation/report.json", "evaluate"),
    GateDecision: ("gate/decision.json", "gate"),
}


# The file each step writes last: present, the step has finished (train: per model; export with quantize_int8:
# INT8_REPORT, written after the fp32 model). register is the registry's (idempotent per run on its own).
STEP_DONE: dict[str, str] = {
    "snapshot": "snapshot/manifest.json", "audit": "audit/report.json", "split": "split/split.json",
    "label-issues": "audit/label_issues.json", "plan": "plan.json", "train": "models/{strategy}/train_report.json",
    "select": "candidate.json", "export": "export/model.onnx", "evaluate": "evaluation/report.html",
    "gate": "gate/decision.json",
}


def artifact_rel(model: type[Artifact], strategy: str | None = None) -> str:
    """The run-relative key of ``model`` (for per-strategy artifacts, of ``strategy``'s)."""
    try:
        rel = RUN_ARTIFACTS[model][0]
    except KeyError:
        raise TypeError(f"{model.__name__} is not a run artifact (tl_core.runs.RUN_ARTIFACTS)") from None
    if "{strategy}" in rel:
        if not strategy:
            raise TypeError(f"{model.__name__} is kept per strategy ({rel}): pass strategy=")
        return rel.format(strategy=strategy)
    return rel


class ArtifactMissing(NoSuchKey):
    """A step's input artifact is not in the run: the step that writes it has not run (or ran on another run)."""


MAX_RUN_ID = 200  # bytes; Airflow's run_id column is 250 characters; a key segment must stay well under 255 bytes
# No '/' or '\\' (one key segment), no control characters (a newline would end up in keys); \Z, not $.
_RUN_ID = re.compile(r"[^/\\\x00-\x1f\x7f]+\Z")


def check_run_id(run_id: str) -> str:
    """Refuse a run id that cannot name one run folder; returns it unchanged."""
    if not isinstance(run_id, str) or not run_id:
        raise InvalidRunId(f"run id must be a non-empty string, got {run_id!r}")
    if len(run_id.encode()) > MAX_RUN_ID:
        raise InvalidRunId(f"run id is {len(run_id.encode())} bytes long (UTF-8), at most {MAX_RUN_ID} are "
                           f"allowed: {run_id[:40]!r}...")
    if not _RUN_ID.match(run_id) or ".." in run_id or run_id == ".":
        raise InvalidRunId(f"run id {run_id!r} must not contain '/', '\\', '..' or control characters and "
                           "must not be '.' (it names one folder under runs/<model>/); e.g. manual-20261101")
    return run_id


def _flat(value: Any, path: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{path}.{k}" if path else str(k)))
        return out
    return {path: value}


def _spec_diff(old: dict[str, Any], new: dict[str, Any], limit: int = 6) -> str:
    a, b = _flat({k: v for k, v in old.items() if k != "fingerprint"}), _flat(new)
    changed = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    return ", ".join(changed[:limit]) + (f" and {len(changed) - limit} more" if len(changed) > limit else "")


def _step_rank(record_key: str) -> tuple[str, int] | None:
    """(step, rank) of a ``steps/<step>[.<part>].json`` key, or None for anything else."""
    name = record_key.rsplit("/", 1)[-1].removesuffix(".json").split(".", 1)[0]
    return (name, STEP_ORDER.index(name)) if name in STEP_ORDER else None


class _StepGuard:
    """The run's store as one step sees it: a rewrite of an existing artifact under the run, once a later
    step has started, must be byte-identical (and is then skipped so etags stay) or it is refused."""

    def __init__(self, inner: ObjectStore, prefix: str, run_id: str, step: str) -> None:
        self.inner, self.prefix, self.run_id, self.step = inner, prefix, run_id, step
        self.rank = STEP_ORDER.index(step)
        self.uri = inner.uri

    def later_step(self) -> str | None:
        """The first step after this one that has started on the run, or None."""
        later = [r for r in (_step_rank(k) for k in self.inner.list(join_key(self.prefix, STEPS_DIR) + "/"))
                 if r is not None and r[1] > self.rank]
        return min(later, key=lambda r: r[1])[0] if later else None

    def put_bytes(self, key: str, data: bytes, *, if_none_match: str | None = None,
                  if_match: str | None = None) -> str:
        guarded = (if_none_match is None and if_match is None and key.startswith(self.prefix + "/")
                   and not key.startswith(join_key(self.prefix, STEPS_DIR) + "/"))
        if guarded and self.inner.exists(key):
            later = self.later_step()
            if later is not None:
                if self.inner.get_bytes(key) == data:
                    logger.info("%s: %s unchanged (already used by step %s); not rewritten", self.step, key, later)
                    return self.inner.etag(key)
                raise RunConflict(
                    f"run {self.run_id}: step {self.step!r} would rewrite {key[len(self.prefix) + 1:]} with "
                    f"different content, but step {later!r} has already used this run's artifacts "
                    f"({self.inner.url(join_key(self.prefix, STEPS_DIR))}); a run never changes what a later "
                    f"step consumed: start a new run id to redo {self.step!r}")
        return self.inner.put_bytes(key, data, if_none_match=if_none_match, if_match=if_match)

    def get_bytes(self, key: str) -> bytes:
        return self.inner.get_bytes(key)

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        return self.inner.get_with_etag(key)

    def list(self, prefix: str = "") -> list[str]:
        return self.inner.list(prefix)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def etag(self, key: str) -> str:
        return self.inner.etag(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def url(self, key: str) -> str:
        return self.inner.url(key)


@dataclass(frozen=True)
class RunContext:
    spec: ModelSpec
    store: ObjectStore
    run_id: str

    @classmethod
    def open(cls, spec: ModelSpec, run_id: str) -> RunContext:
        return cls(spec=spec, store=open_store(spec.store), run_id=key_safe(check_run_id(run_id)))

    @property
    def prefix(self) -> str:
        return join_key("runs", self.spec.name, self.run_id)

    def key(self, *parts: str) -> str:
        return join_key(self.prefix, *parts)

    def uri(self, *parts: str) -> str:
        return self.store.url(self.key(*parts))

    def model_key(self, strategy: str, *parts: str) -> str:
        return self.key("models", strategy, *parts)

    def candidate_files(self) -> list[str]:
        """Store keys of the selected candidate's files (the one definition, used by the evidence hash and the
        registry): models/<selected>/ without resume state, then CANDIDATE_RUN_FILES that exist."""
        selected = self.read(Selection).selected
        files = [k for k in sorted(self.store.list(self.model_key(selected) + "/")) if "/resume/" not in k]
        return files + [self.key(rel) for rel in CANDIDATE_RUN_FILES if self.store.exists(self.key(rel))]

    # Typed artifacts: the only way one step reads what another wrote (DESIGN.md "Step contract").
    def read(self, model: type[A], strategy: str | None = None) -> A:
        """The run's ``model`` artifact, parsed and validated (ArtifactError names the file and what is wrong;
        ArtifactMissing names the step that writes it)."""
        rel = artifact_rel(model, strategy)
        try:
            data = self.store.get_bytes(self.key(rel))
        except NoSuchKey:
            step = RUN_ARTIFACTS[model][1]
            raise ArtifactMissing(f"run {self.run_id}: {self.uri(rel)} ({model.__name__}) is missing: run "
                                  f"`tl {step}` (the {step} step) on this run first") from None
        return parse_artifact(model, data, self.uri(rel))

    def read_optional(self, model: type[A], strategy: str | None = None) -> A | None:
        """Like :meth:`read`, None when the artifact was never written (a step that may not have run)."""
        return self.read(model, strategy) if self.has(model, strategy) else None

    def has(self, model: type[Artifact], strategy: str | None = None) -> bool:
        return self.store.exists(self.key(artifact_rel(model, strategy)))

    def step_done(self, step: str, part: str = "") -> bool:
        """Whether ``step`` (of train: model ``part``) has finished on this run: the file it writes last exists
        (STEP_DONE). An audit or label-issue finding that blocks the run is not done: re-running refuses again."""
        if step not in STEP_DONE:
            raise ValueError(f"step {step!r} has no completion file: expected one of {sorted(STEP_DONE)}")
        rel = STEP_DONE[step]
        if "{strategy}" in rel:
            if not part:
                raise ValueError(f"step {step!r} is done per model ({rel}): pass part=")
            rel = rel.format(strategy=part)
        if step == "export" and self.spec.export.quantize_int8:
            rel = INT8_REPORT
        if not self.store.exists(self.key(rel)):
            return False
        if step == "audit":
            return not self.read(AuditReport).blocking
        if step == "label-issues":
            return self.read(LabelIssues).severity != "blocking"
        return True

    def write(self, artifact: Artifact, strategy: str | None = None, *, create_only: bool = False) -> str:
        """Write ``artifact`` at its key (validated: a model instance); returns its URI. ``create_only``: only if
        the key does not exist yet (PreconditionFailed otherwise)."""
        rel = artifact_rel(type(artifact), strategy)
        self.store.put_bytes(self.key(rel), dump_artifact(artifact), if_none_match="*" if create_only else None)
        return self.uri(rel)

    # Arrays, and raw JSON. A step artifact is written with write() and read with read() (there is no read_json:
    # no step reads another step's JSON as a dict); write_json is for other JSON (and for tests crafting files).
    def write_json(self, rel: str, payload: Any) -> str:
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        self.store.put_bytes(self.key(rel), data)
        return self.uri(rel)

    def write_npz(self, rel: str, **arrays: np.ndarray) -> str:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        self.store.put_bytes(self.key(rel), buf.getvalue())
        return self.uri(rel)

    def read_npz(self, rel: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.store.get_bytes(self.key(rel))), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def read_examples(self) -> pd.DataFrame:
        """split/examples.parquet (the one reader of the split's examples); DataError naming what is missing."""
        import pandas as pd

        try:
            raw = self.store.get_bytes(self.key(EXAMPLES_FILE))
        except NoSuchKey:
            raise DataError(f"run {self.run_id}: {EXAMPLES_FILE} is missing; run `tl split` first") from None
        df = pd.read_parquet(io.BytesIO(raw))
        missing = [c for c in ("example_id", "label", "split") if c not in df]
        if missing:
            raise DataError(f"{self.uri(EXAMPLES_FILE)}: missing columns {missing} (expected example_id, label, "
                            "split and the slice columns)")
        return df

    def save_spec(self) -> str:
        """Bind the run to this spec: the first call writes spec.json (create-only); later calls check it."""
        payload = {"fingerprint": self.spec.fingerprint(), **self.spec.model_dump(mode="json")}
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        try:
            self.store.put_bytes(self.key(SPEC_FILE), data, if_none_match="*")
        except PreconditionFailed:
            self.check_spec()
        return self.uri(SPEC_FILE)

    def check_spec(self) -> None:
        """Refuse a spec whose fingerprint differs from the one the run was started with (if any)."""
        if not self.store.exists(self.key(SPEC_FILE)):
            return
        try:
            bound = json.loads(self.store.get_bytes(self.key(SPEC_FILE)))
            old = bound["fingerprint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RunConflict(f"run {self.run_id}: {self.uri(SPEC_FILE)} is unreadable or has no fingerprint "
                              f"({exc!r}); start a new run id") from None
        new = self.spec.fingerprint()
        if old != new:
            raise RunConflict(
                f"run {self.run_id} was started with spec fingerprint {old[:16]}, this spec ({self.spec.name}) "
                f"has fingerprint {new[:16]} (changed: {_spec_diff(bound, self.spec.model_dump(mode='json'))}); "
                f"a run is bound to the spec it started with ({self.uri(SPEC_FILE)}): start a new run id to use "
                "the changed spec")

    def begin_step(self, step: str, part: str = "") -> RunContext:
        """Bind the spec, record that ``step`` has started (it consumes every earlier step's artifacts) and
        return the context the step writes through."""
        if step not in STEP_ORDER:
            raise ValueError(f"unknown step {step!r}: expected one of {STEP_ORDER}")
        self.save_spec()
        name = f"{step}.{key_safe(part)}" if part else step
        self.store.put_bytes(self.key(STEPS_DIR, f"{name}.json"), json.dumps(
            {"step": step, "part": part, "spec_fingerprint": self.spec.fingerprint(),
             "started_at": datetime.now(UTC).isoformat()}, sort_keys=True).encode())
        return RunContext(spec=self.spec, store=_StepGuard(self.store, self.prefix, self.run_id, step),
                          run_id=self.run_id)
