"""Batch scoring of one unlabeled partition with the champion (and the newest challenger, in shadow).

Input: ``<monitor.scoring_root>/<dataset>/dt=YYYY-MM-DD/*.parquet`` (``example_id``, the model's input column and
the spec's slice columns). Output, under ``<store>/scores/<model>/dt=YYYY-MM-DD/``::

    predictions.parquet   example_id, prediction, confidence, prob_<label>..., model_version, slice columns
    shadow.parquet        the same for the challenger (when one is registered and monitor.shadow is on)
    scoring.json          the commit record, written last: versions, inputs (key + etag), rows, chunks, each
                          model's class names (labels, challenger_labels), disagreement overall and per slice

Disagreement compares the two models' predicted class NAMES (each file's ``prediction`` and ``prob_<label>`` columns
come from that model's own class names), so a challenger whose classes are reordered or extended is compared by
name; a row where one model predicts a class the other lacks counts as a disagreement.

The rows stream through in chunks of ``monitor.chunk_rows`` (pyarrow ``iter_batches``), each scored by the serving
loop that `tl predict` uses (tl_core.export.predict.score), and are appended to local Parquet writers; the files
are uploaded whole (temporary file, then rename / managed upload) and ``scoring.json`` last. A re-run for the same
inputs and versions finds the record and returns without scoring; anything else changed is scored again.

A partition whose files hold 0 rows is committed as a record of 0 rows without prediction files, with a warning
saying so; its drift step reports 0 rows and judges nothing (tl_core.monitor.drift). A file that is not readable
Parquet (a bad footer, or a page that cannot be decoded) is a MonitorError naming the file and what was expected.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from tl_core.artifacts import ArtifactError, ScoringRecord, check_artifact, dump_artifact, parse_artifact
from tl_core.config import ModelSpec
from tl_core.errors import MonitorError, NoSuchKey
from tl_core.export.predict import ServedModel, open_model_dir, predictions_frame, score
from tl_core.registry import Registry
from tl_core.store import ObjectStore, join_key, local_file, open_store, put_file

logger = logging.getLogger(__name__)

PREDICTIONS = "predictions.parquet"
SHADOW = "shadow.parquet"
RECORD = "scoring.json"


def partition_prefix(spec: ModelSpec, day: date) -> str:
    """The scoring partition's key prefix under monitor.scoring_root."""
    return join_key(spec.data.dataset, f"dt={day.isoformat()}")


def scores_prefix(spec: ModelSpec, day: date) -> str:
    """``scores/<model>/dt=YYYY-MM-DD`` under the spec's store."""
    return join_key("scores", spec.name, f"dt={day.isoformat()}")


def partition_files(spec: ModelSpec, day: date) -> tuple[ObjectStore, list[str]]:
    """The partition's Parquet objects (markers and hidden files skipped); MonitorError naming the partition."""
    store = open_store(spec.monitor.scoring_root)
    prefix = partition_prefix(spec, day)
    keys = [k for k in store.list(prefix + "/") if k.endswith(".parquet")
            and not k.rsplit("/", 1)[-1].startswith(("_", "."))]
    if not keys:
        raise MonitorError(f"scoring partition {store.uri}/{prefix}/ has no Parquet files (missing partition for "
                           f"{day.isoformat()}): expected <scoring_root>/{spec.data.dataset}/dt=YYYY-MM-DD/*.parquet")
    return store, keys


def champion_and_challenger(spec: ModelSpec) -> tuple[Registry, str, str | None]:
    """(registry, champion version, newest registered non-champion version or None)."""
    registry = Registry.for_spec(spec)
    champion = registry.champion()
    if champion is None:
        raise MonitorError(f"model {spec.name!r} has no champion yet: promote a version before scoring "
                           f"(registered: {', '.join(registry.list_versions()) or 'none'})")
    others = [v for v in registry.list_versions() if v != champion.version]
    return registry, champion.version, (others[-1] if others and spec.monitor.shadow else None)


def _unreadable(url: str, needed: list[str], exc: Exception) -> MonitorError:
    return MonitorError(f"scoring file {url} is not a readable Parquet file ({exc}): expected a Parquet file with "
                        f"columns {needed} (example_id, the model's input column and the spec's slice columns); "
                        "rewrite or remove the file and score the partition again")


def _open_checked(path: Path, url: str, needed: list[str]) -> pq.ParquetFile:
    """The partition file opened for reading, after checking it is Parquet with the ``needed`` columns;
    MonitorError naming the file (``url``) and what was expected otherwise."""
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(url, needed, exc) from None
    missing = [c for c in needed if c not in names]
    if missing:
        raise MonitorError(f"scoring file {url} lacks columns {missing} (has {names}); every partition file needs "
                           f"{needed}: example_id, the model's input column and the spec's slice columns")
    return parquet


def _batches(parquet: pq.ParquetFile, url: str, needed: list[str], chunk_rows: int) -> Iterator[pa.RecordBatch]:
    """The file's ``needed`` columns in chunks; a page that cannot be read is a MonitorError naming the file
    (only the reading is guarded: errors of the code consuming a chunk pass through unchanged)."""
    batches = parquet.iter_batches(batch_size=chunk_rows, columns=needed)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(url, needed, exc) from None
        yield batch


@dataclass
class _Tally:
    """Running counts of the champion-vs-challenger disagreement, overall and per slice, and the chunk sizes."""

    rows: int = 0
    chunks: int = 0
    max_chunk_rows: int = 0
    disagree: int = 0
    slices: dict[str, list[int]] = field(default_factory=dict)  # "col=value" -> [rows, disagreements]

    def add(self, frame: pd.DataFrame, differs: np.ndarray | None, slice_columns: list[str]) -> None:
        self.rows += len(frame)
        self.chunks += 1
        self.max_chunk_rows = max(self.max_chunk_rows, len(frame))
        if differs is None:
            return
        self.disagree += int(differs.sum())
        for col in slice_columns:
            values = frame[col].astype(str).to_numpy()
            for value in np.unique(values):
                mask = values == value
                entry = self.slices.setdefault(f"{col}={value}", [0, 0])
                entry[0] += int(mask.sum())
                entry[1] += int(differs[mask].sum())

    def disagreement(self) -> dict[str, Any]:
        return {"rate": self.disagree / self.rows if self.rows else 0.0, "rows": self.rows,
                "slices": {s: {"rows": n, "rate": d / n if n else 0.0} for s, (n, d) in sorted(self.slices.items())}}


class _Writer:
    """Append chunks of one predictions table to a local Parquet file (one row group per chunk)."""

    def __init__(self, path: Path) -> None:
        self.path, self.writer = path, None  # type: tuple[Path, pq.ParquetWriter | None]

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table.cast(self.writer.schema))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _frame(model: ServedModel, chunk: pd.DataFrame, batch_size: int, bar: Any,
           slice_columns: list[str]) -> pd.DataFrame:
    logits, probs = score(model, chunk, batch_size, bar=bar)
    out = predictions_frame(model, chunk, logits, probs)
    for col in slice_columns:
        out[col] = chunk[col].astype(str).to_numpy()
    return out


def _score_files(spec: ModelSpec, store: ObjectStore, keys: list[str], models: list[ServedModel],
                 tmp: Path) -> _Tally:
    """Stream every partition file through the models; write predictions (and shadow) Parquet under ``tmp``."""
    slices = list(spec.data.slice_columns)
    needed = ["example_id", spec.data.input_column, *slices]
    writers = [_Writer(tmp / name) for name in (PREDICTIONS, SHADOW)[: len(models)]]
    tally = _Tally()
    with tqdm(total=None, desc=f"scoring {spec.name}", unit="ex", disable=None) as bar:
        for key in keys:
            with local_file(store, key) as path:
                parquet = _open_checked(path, store.url(key), needed)
                bar.total = (bar.total or 0) + parquet.metadata.num_rows
                for batch in _batches(parquet, store.url(key), needed, spec.monitor.chunk_rows):
                    chunk = batch.to_pandas()
                    chunk["example_id"] = chunk["example_id"].astype(str)
                    frames = [_frame(m, chunk, spec.monitor.batch_size, bar if i == 0 else None, slices)
                              for i, m in enumerate(models)]
                    for writer, frame in zip(writers, frames, strict=True):
                        writer.write(frame)
                    differs = (frames[0]["prediction"].to_numpy() != frames[1]["prediction"].to_numpy()
                               if len(frames) > 1 else None)
                    tally.add(frames[0], differs, slices)
    for writer in writers:
        writer.close()
    return tally


def _existing(out: ObjectStore, key: str, expected: dict[str, Any]) -> ScoringRecord | None:
    """The committed record when it was made from the same inputs and versions (an idempotent re-run); a record
    of another schema version is scored again."""
    try:
        record = parse_artifact(ScoringRecord, out.get_bytes(key), out.url(key))
    except (NoSuchKey, ArtifactError):
        return None
    stored = record.model_dump(mode="json")
    same = all(stored.get(k) == v for k, v in expected.items())
    return record if same else None


def score_partition(spec: ModelSpec, day: date, run_id: str = "manual") -> str:
    """Score ``dt=day`` with the champion (and challenger in shadow); returns the scores folder's URI."""
    registry, champion, challenger = champion_and_challenger(spec)
    in_store, keys = partition_files(spec, day)
    out = open_store(spec.store)
    prefix = scores_prefix(spec, day)
    inputs = [{"key": in_store.url(k), "etag": in_store.etag(k)} for k in keys]
    expected = {"schema_version": ScoringRecord.written_version(), "champion_version": champion,
                "challenger_version": challenger, "inputs": inputs, "chunk_rows": spec.monitor.chunk_rows}
    if _existing(out, join_key(prefix, RECORD), expected) is not None:
        logger.info("%s dt=%s already scored by %s from the same inputs; nothing to do", spec.name, day, champion)
        return out.url(prefix)
    versions = [champion, *([challenger] if challenger else [])]
    models = [open_model_dir(registry.load_version(v), v) for v in versions]
    with tempfile.TemporaryDirectory(prefix="tl-score-") as tmp:
        tally = _score_files(spec, in_store, keys, models, Path(tmp))
        files = {}
        for name in (PREDICTIONS, SHADOW)[: len(models)]:
            if (Path(tmp) / name).is_file():
                files[name] = put_file(out, join_key(prefix, name), Path(tmp) / name)
    record = check_artifact(ScoringRecord, {
              **expected, "model": spec.name, "dt": day.isoformat(), "run_id": run_id, "rows": tally.rows,
              "chunks": tally.chunks, "max_chunk_rows": tally.max_chunk_rows, "files": files,
              "slice_columns": list(spec.data.slice_columns), "labels": models[0].labels,
              "challenger_labels": models[1].labels if challenger else None,
              "disagreement": tally.disagreement() if challenger else None,
              "scored_at": datetime.now(UTC).isoformat()}, out.url(join_key(prefix, RECORD)))
    out.put_bytes(join_key(prefix, RECORD), dump_artifact(record))
    if tally.rows == 0:
        logger.warning("scoring partition %s/%s/ has 0 rows (%d file(s): %s): committed a record of 0 rows and no "
                       "predictions; its drift step reports 0 rows and judges nothing", in_store.uri,
                       partition_prefix(spec, day), len(keys), ", ".join(keys[:5]))
    logger.info("scored %d rows of %s dt=%s with %s%s -> %s", tally.rows, spec.name, day, champion,
                f" (shadow {challenger}: disagreement {record.disagreement['rate']:.3f})"
                if record.disagreement else "", out.url(prefix))
    return out.url(prefix)


def read_record(spec: ModelSpec, day: date) -> ScoringRecord:
    """The committed scoring record of ``dt=day``; MonitorError when the partition has not been scored,
    ArtifactError naming the file when it is not a ScoringRecord of this schema."""
    out = open_store(spec.store)
    key = join_key(scores_prefix(spec, day), RECORD)
    try:
        return parse_artifact(ScoringRecord, out.get_bytes(key), out.url(key))
    except NoSuchKey:
        raise MonitorError(f"{out.url(key)} does not exist: dt={day.isoformat()} has not been scored; run "
                           "`tl score` (step_score) first") from None
