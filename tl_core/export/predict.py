"""Batched onnxruntime scoring of Parquet input: the serving path, also used to re-score the champion.

Preprocessing comes from the model's own files (tokenizer / model_config.json), exactly as in training.
CUDAExecutionProvider is used when onnxruntime-gpu and a GPU are present, the CPU provider otherwise.

`predict_file` (``tl predict``) checks everything it can before scoring - the model reference, the batch
size, the output location, the input file and its input column (no nulls, strings for text, bytes or URIs
for images) - and raises PredictError / DataError naming the value; nothing is written on error. An input
with 0 rows (and the model's input column) is scored to an empty output with the usual columns.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from tqdm.auto import tqdm

from tl_core.artifacts import ModelConfig, parse_artifact
from tl_core.config import NAME_PATTERN, ModelSpec
from tl_core.errors import DataError, PredictError, StoreError
from tl_core.models.preprocessing import Encoded, collate, encode_split, image_transform
from tl_core.registry import VERSION_PATTERN, Registry
from tl_core.runs import INT8_FILE

logger = logging.getLogger(__name__)

MODEL_REF_FORMAT = "NAME, NAME@champion or NAME@VERSION (VERSION is 'v' and 4-9 digits, e.g. v0001)"
IMAGE_TYPES = (bytes, bytearray, memoryview, str)
SHOWN_ROWS = 5  # rows named in an input error (then "... and N more")


@dataclass
class ServedModel:
    """An onnxruntime session with the model's config, preprocessing (the config's), tokenizer and version."""

    session: Any
    config: ModelConfig
    preprocessing: dict[str, Any]
    tokenizer: Any
    version: str

    @property
    def labels(self) -> list[str]:
        return list(self.config.labels)


def providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


PRECISIONS = {"fp32": "export/model.onnx", "int8": INT8_FILE}


def check_precision(precision: Any) -> str:
    if precision not in PRECISIONS:
        raise PredictError(f"precision {precision!r} is not one of {sorted(PRECISIONS)}")
    return str(precision)


def open_model_dir(root: str | Path, version: str = "unregistered", precision: str = "fp32") -> ServedModel:
    """A directory holding ``export/model.onnx`` (``export/model.int8.onnx`` for int8) and
    ``models/<strategy>/{model_config.json,preprocessing/}`` (a registered version's layout, or a run's)."""
    import onnxruntime as ort

    root = Path(root)
    onnx_path = root / PRECISIONS[check_precision(precision)]
    configs = sorted(root.glob("models/*/model_config.json"))
    if not onnx_path.is_file() or len(configs) != 1:
        raise DataError(
            f"{root}: expected {PRECISIONS[precision]} and exactly one models/<strategy>/model_config.json, found "
            f"onnx={onnx_path.is_file()} configs={[str(c.relative_to(root)) for c in configs]}"
        )
    model_dir = configs[0].parent
    config = parse_artifact(ModelConfig, configs[0].read_bytes(), str(configs[0]))
    tokenizer = None
    if config.kind == "transformers":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir / "preprocessing"))
    session = ort.InferenceSession(str(onnx_path), providers=providers())
    return ServedModel(session, config, config.preprocessing, tokenizer, version)


def check_batch_size(batch_size: Any) -> int:
    """Rows per onnxruntime call: an integer >= 1 (a negative one used to score nothing and write zeros)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise PredictError(f"batch size {batch_size!r} is invalid: expected an integer >= 1 (rows per onnxruntime "
                           "call)")
    return int(batch_size)


def _rows(df: pd.DataFrame, mask: np.ndarray) -> str:
    """'2 rows (example_id 'a', 'b')' - the rows of ``df`` selected by ``mask``, by example_id or position."""
    where = np.flatnonzero(mask)
    names = df["example_id"].to_numpy()[where] if "example_id" in df.columns else where
    shown = ", ".join(repr(str(n)) for n in names[:SHOWN_ROWS])
    more = f" and {len(where) - SHOWN_ROWS} more" if len(where) > SHOWN_ROWS else ""
    key = "example_id" if "example_id" in df.columns else "row"
    return f"{len(where)} row{'s' if len(where) != 1 else ''} ({key} {shown}{more})"


def check_inputs(df: pd.DataFrame, column: str, kind: str) -> None:
    """Refuse, naming the rows, an input column a model cannot score: nulls anywhere; for text a column that is not
    strings (integers used to be scored silently as their digits); for images values other than bytes or URIs."""
    values = df[column]
    expected = "strings" if kind == "text" else "image bytes or s3:// / file:// URIs"
    null = values.isna().to_numpy(dtype=bool)
    if null.any():
        raise DataError(f"input column {column!r} is null in {_rows(df, null)}: every row needs {expected}; drop "
                        "or fill those rows")
    if kind == "text" and isinstance(values.dtype, pd.StringDtype):
        return
    if values.dtype != object:
        raise DataError(f"input column {column!r} has dtype {values.dtype}; expected {expected}")
    allowed = (str,) if kind == "text" else IMAGE_TYPES
    bad = np.array([not isinstance(v, allowed) for v in values.tolist()], dtype=bool)
    if bad.any():
        types = sorted({type(v).__name__ for v, b in zip(values.tolist(), bad, strict=True) if b})
        raise DataError(f"input column {column!r} (dtype object) holds {', '.join(types)} values in "
                        f"{_rows(df, bad)}; expected {expected}")


def score(model: ServedModel, df: pd.DataFrame, batch_size: int = 64, bar: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(logits, calibrated probabilities) for every row of ``df``, in row order (0 rows: two empty arrays).

    The one scoring loop of `tl predict` and `tl score`: ``bar`` is a tqdm bar to advance (``tl score`` passes
    one for the whole partition; without it a bar for this call is shown)."""
    batch_size = check_batch_size(batch_size)
    column = model.config.input_column
    if column not in df.columns:
        raise DataError(f"input is missing the column {column!r} the model was trained on (has {list(df.columns)})")
    check_inputs(df, column, "text" if model.config.kind == "transformers" else "image")
    logits = np.zeros((len(df), len(model.labels)), np.float32)
    probs = np.zeros_like(logits)
    if len(df) == 0:
        return logits, probs
    if "example_id" not in df.columns:
        df = df.assign(example_id=[str(i) for i in range(len(df))])
    enc = encode_split(df, column, model.labels, model.preprocessing, model.tokenizer)
    if bar is not None:
        run_batches(model, enc, batch_size, logits, probs, bar)
        return logits, probs
    with tqdm(total=len(enc), desc="scoring", unit="ex", leave=False, disable=None) as own:
        run_batches(model, enc, batch_size, logits, probs, own)
    return logits, probs


def run_batches(model: ServedModel, enc: Encoded, batch_size: int, logits: np.ndarray, probs: np.ndarray,
                bar: Any) -> None:
    """Collate ``enc`` in batches of ``batch_size`` and run the session, filling ``logits`` and ``probs``."""
    transform = image_transform(model.preprocessing, False) if model.config.kind == "timm" else None
    pad_id = int(getattr(model.tokenizer, "pad_token_id", 0) or 0)
    names = [i.name for i in model.session.get_inputs()]
    for start in range(0, len(enc), batch_size):
        idx = np.arange(start, min(start + batch_size, len(enc)))
        feeds = {n: t.numpy() for n, t in zip(names, collate(enc, idx, pad_id, transform), strict=True)}
        out_logits, out_probs = model.session.run(["logits", "probabilities"], feeds)
        logits[idx], probs[idx] = out_logits, out_probs
        bar.update(len(idx))


def predictions_frame(model: ServedModel, df: pd.DataFrame, logits: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """One row per input row; the same columns and types whether or not there are rows."""
    labels = model.labels
    ids = df["example_id"].astype(str).to_numpy() if "example_id" in df else np.arange(len(df)).astype(str)
    out = pd.DataFrame({
        "example_id": pd.Series(ids, dtype="str"),
        "prediction": pd.Series([labels[i] for i in probs.argmax(1)], dtype="str"),
        "confidence": pd.Series(probs.max(1), dtype=np.float32),
        "model_version": pd.Series([model.version] * len(df), dtype="str"),
    })
    for j, name in enumerate(labels):
        out[f"prob_{name}"] = pd.Series(probs[:, j], dtype=np.float32)
    return out


def open_registered(spec: ModelSpec, version: str) -> ServedModel:
    """A registered version, served as `tl predict` serves it (its own class names in ``labels``)."""
    return open_model_dir(Registry.for_spec(spec).load_version(version), version)


def score_registered(spec: ModelSpec, version: str, examples: pd.DataFrame) -> np.ndarray:
    """Logits of a registered version on ``examples``, columns in the version's own class order (``labels`` of
    its model_config.json, not necessarily ``spec.labels``): align by name before comparing."""
    logits, _ = score(open_registered(spec, version), examples)
    return logits


def parse_model_ref(model: str, spec_name: str) -> tuple[str, str | None]:
    """``--model`` as (name, version), version None for the champion; anything else is refused, naming it."""
    name, at, ref = model.partition("@")
    if not NAME_PATTERN.fullmatch(name):
        raise PredictError(f"--model {model!r}: invalid model name {name!r}: expected lowercase letters, digits, "
                           f"'-' or '_' ({MODEL_REF_FORMAT})")
    if name != spec_name:
        raise PredictError(f"--model {model!r} names model {name!r} but the spec is for {spec_name!r}: pass "
                           f"--model {spec_name}, {spec_name}@champion or {spec_name}@VERSION, or the other "
                           "model's spec")
    if not at or ref == "champion":
        return name, None
    if VERSION_PATTERN.fullmatch(ref):  # fullmatch: the pattern's '$' alone would accept a trailing newline
        return name, ref
    hint = f" (did you mean {name}@{ref.lower()}?)" if VERSION_PATTERN.fullmatch(ref.lower()) else ""
    raise PredictError(f"--model {model!r}: version {ref!r} is not valid: expected 'champion' or 'v' followed by "
                       f"4-9 digits, e.g. {name}@v0001{hint}")


def _is_uri(uri_or_path: str) -> bool:
    return uri_or_path.startswith(("s3://", "file://"))


def read_table(uri_or_path: str) -> pd.DataFrame:
    """A Parquet file (or folder of them) by path or s3:// / file:// URI; PredictError names what cannot be read."""
    if not _is_uri(uri_or_path) and not Path(uri_or_path).exists():
        raise PredictError(f"input {uri_or_path!r} does not exist: expected a Parquet file, a folder of Parquet "
                           "files, or an s3:// / file:// URI")
    try:
        if _is_uri(uri_or_path):
            from tl_core.store import read_uri

            return pd.read_parquet(io.BytesIO(read_uri(uri_or_path)))
        return pd.read_parquet(uri_or_path)
    except StoreError as exc:
        raise PredictError(f"input {uri_or_path!r} cannot be read: {exc}") from None
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise PredictError(f"input {uri_or_path!r} cannot be read as Parquet ({type(exc).__name__}: {exc}); "
                           "expected a Parquet file or a folder of Parquet files") from None


def check_output(uri_or_path: str) -> None:
    """Refuse, before anything is scored, an output that cannot be written: a folder, or (for a plain path) a
    missing or read-only parent folder. s3:// and file:// outputs are objects: their prefixes need no folder."""
    if uri_or_path.startswith("s3://"):
        return
    path = Path(uri_or_path.removeprefix("file://"))
    if not uri_or_path.strip() or path.is_dir():
        raise PredictError(f"output {uri_or_path!r} is a folder or empty: expected a Parquet file path or URI to "
                           "write")
    if _is_uri(uri_or_path):
        return
    parent = path.parent
    if not parent.is_dir():
        raise PredictError(f"output folder {str(parent)!r} does not exist (for output {uri_or_path!r}): create it "
                           "first or pass a path in an existing folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PredictError(f"output folder {str(parent)!r} is not writable (for output {uri_or_path!r})")


def write_table(df: pd.DataFrame, uri_or_path: str) -> None:
    """Write Parquet; a local file appears whole (temporary file, then rename) or not at all."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    if _is_uri(uri_or_path):
        from tl_core.store import split_uri

        store, key = split_uri(uri_or_path)
        store.put_bytes(key, buf.getvalue())
        return
    path = Path(uri_or_path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PredictError(f"output {uri_or_path!r} cannot be written: {exc}") from None


def check_int8_registered(registry: Registry, name: str, version: str) -> None:
    """int8 asked of a version registered without it: PredictError naming the version and why it has none."""
    int8 = registry.show(version).get("int8")
    if isinstance(int8, dict) and int8.get("registered"):
        return
    why = int8.get("reason") if isinstance(int8, dict) else "it was exported without quantize_int8"
    raise PredictError(f"model {name!r} version {version} has no int8 artifact ({why}); use --precision fp32, or "
                       "a version registered with one (spec.export.quantize_int8: true and its int8 gate passed)")


def predict_file(spec: ModelSpec, model: str, input_uri: str, output_uri: str,
                 batch_size: int = 64, precision: str = "fp32") -> dict[str, Any]:
    """Score a Parquet file with ``model`` (NAME, NAME@champion or NAME@vNNNN) and write the predictions.

    ``precision`` int8 serves the version's int8 artifact (registered only when its own gate passed).
    Refused before anything is written: an invalid batch size, precision, model reference or output location, a
    version without the asked precision, an unreadable input, an input column with nulls or of the wrong type
    (PredictError / DataError, naming the value). 0 input rows give an empty output with the same columns.
    """
    batch_size = check_batch_size(batch_size)
    precision = check_precision(precision)
    name, version = parse_model_ref(model, spec.name)
    check_output(output_uri)
    df = read_table(input_uri)
    registry = Registry.for_spec(spec)
    if version is None:
        champion = registry.champion()
        if champion is None:
            raise PredictError(f"model {name!r} has no champion yet: pass --model {name}@VERSION (registered: "
                               f"{', '.join(registry.list_versions()) or 'none'})")
        version = champion.version
    if precision == "int8":
        check_int8_registered(registry, name, version)
    served = open_model_dir(registry.load_version(version), version, precision)
    logits, probs = score(served, df, batch_size=batch_size)
    out = predictions_frame(served, df, logits, probs)
    write_table(out, output_uri)
    logger.info("scored %d rows with %s@%s (%s) -> %s", len(out), name, version, precision, output_uri)
    return {"rows": len(out), "model": name, "model_version": version, "precision": precision,
            "output": output_uri}
