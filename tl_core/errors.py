"""Exceptions shared across tl_core. Each carries the observed value and the constraint."""

from __future__ import annotations


class TLError(Exception):
    """Base class for every error tl_core raises on purpose."""


class SpecError(TLError, ValueError):
    """A model spec failed validation; the message lists every field path and the fix."""


class StoreError(TLError):
    """An object-store operation failed."""


class NoSuchBucket(StoreError):
    """The bucket (s3) or root directory (file) does not exist."""


class NoSuchKey(StoreError, KeyError):
    """The key does not exist in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class AccessDenied(StoreError):
    """The credentials in use may not perform the operation."""


class PreconditionFailed(StoreError):
    """A conditional write lost: the key exists (create-only) or its etag changed (compare-and-swap)."""


class DataError(TLError, ValueError):
    """Input data violates the data contract (schema, labels, window)."""


class BlockingAuditFinding(DataError):
    """The data audit found a blocking problem; the run must stop."""


class IncompletePartition(DataError):
    """A partition in the run's window has data files but not its completion marker (the writer has not said it
    is done); the message names the partition and the marker expected."""


class ResumeError(TLError):
    """A training resume checkpoint does not fit the model and strategy being trained."""


class TrainingSuperseded(TLError):
    """Another process (a retry of the train task) took over this model's training; this one must not write."""


class BaseMismatchError(TLError):
    """A LoRA version's base checkpoint, loaded from its source, is not the one its adapters were trained on."""


class PredictError(TLError, ValueError):
    """A `tl predict` request was refused before anything was written: the model reference, the batch size,
    the input file or the output location is unusable; the message names the value and what was expected."""


class UnsafeImageUri(DataError):
    """An ``image_uri`` cell names something outside the data root (another scheme, bucket or folder, a
    relative path, '..'); it is never read, and the audit quarantines the row."""


class InvalidRunId(TLError, ValueError):
    """A run id cannot name a run folder: empty, too long, '/', '..' or control characters."""


class RunConflict(TLError):
    """A step would break what a run already recorded: a different spec than the run was started with, or a
    rewrite of an artifact that a later step already consumed. The fix is a new run id."""


class DemoSetupError(TLError):
    """`make demo` / LocalAirflow cannot find what it serves: the DAG or plugin folder (TL_DAGS_DIR,
    TL_PLUGINS_DIR, else the source checkout's) or its packaged example spec; the message names which."""


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


class MonitorError(TLError):
    """Batch scoring or drift cannot run: no champion, a missing or unreadable scoring partition, input columns
    that do not fit the model, or a champion whose reference data is gone; the message names what and where."""


class PromotionRefused(RegistryError):
    """The registry's promotion policy refuses the version (gate not passed, shadow, rejected, other evidence);
    the message names every reason and how to override it."""


class LedgerCorrupt(MetadataError):
    """A ledger record is unreadable, or was changed after a later record was appended (its sha256 no longer
    matches the later record's link): nothing is appended behind it; the message names the first bad record and
    how to restore it."""
