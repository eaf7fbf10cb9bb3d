"""Monitoring test helpers: a registered tiny text champion (and a challenger), scoring partitions, and real
labelled data for the statistical checks (no tests here)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from model_fixtures import make_run, text_examples, text_spec
from tl_core.artifacts import PromotionOverride
from tl_core.config import ModelSpec, parse_spec
from tl_core.store import open_store

DEBIAN = Path(__file__).parent / "fixtures" / "debian_descriptions.parquet"
DAY = date(2026, 12, 1)


@dataclass
class Champion:
    spec: ModelSpec
    spec_file: Path
    examples: pd.DataFrame  # the champion run's split (train/validation/calibration/test), with labels


def monitored_spec(root: Path, bert_dir: Path, **monitor: Any) -> ModelSpec:
    """The tiny text spec with a scoring root and monitoring settings (frozen strategy: cheap to train)."""
    base = text_spec((root / "store").as_uri(), bert_dir, strategies=["frozen"]).model_dump(mode="json")
    base["monitor"] = {"scoring_root": (root / "scoring").as_uri(), "chunk_rows": 64, "batch_size": 16,
                       "permutations": 200, "embedding_max_rows": 200, **monitor}
    base["gate"]["min_slice_size"] = 5
    return parse_spec(base)


def train_and_register(spec: ModelSpec, examples: pd.DataFrame, run_id: str) -> str:
    """Train (frozen), select, export, evaluate and register one run; returns its version."""
    from tl_core.evaluate.run import run_evaluate
    from tl_core.export.onnx_export import run_export
    from tl_core.registry import Registry
    from tl_core.train.run import run_train
    from tl_core.train.select import run_select

    ctx = make_run(spec, examples, run_id)
    run_train(ctx, "frozen")
    run_select(ctx)
    run_export(ctx)
    run_evaluate(ctx, None)
    return Registry.for_spec(spec).register(ctx)


def build_champion(root: Path, bert_dir: Path, challenger: bool = True, **monitor: Any) -> Champion:
    """v0001 promoted to champion; with ``challenger`` a second run (other data seed) registered as v0002."""
    from tl_core.registry import Registry

    spec = monitored_spec(root, bert_dir, **monitor)
    examples = text_examples(n_per_class=100)
    assert train_and_register(spec, examples, "champion-run") == "v0001"
    # Registered without `tl gate` (evaluation only): the promotion policy needs an override saying so.
    override = PromotionOverride(actor="test", reason="monitoring fixture: a champion registered without a gate run")
    Registry.for_spec(spec).promote("v0001", None, {"by": "test"}, "test", override=override)
    if challenger:
        other = text_examples(n_per_class=30, seed=7)
        assert train_and_register(spec, other, "challenger-run") == "v0002"
    spec_file = root / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    return Champion(spec, spec_file, examples)


def put_partition(spec: ModelSpec, day: date, df: pd.DataFrame, files: int = 1) -> list[str]:
    """Write ``df`` as ``files`` Parquet objects of the scoring partition dt=day."""
    store = open_store(spec.monitor.scoring_root)
    keys = []
    for i, part in enumerate(np.array_split(np.arange(len(df)), files)):
        buf = io.BytesIO()
        df.iloc[part].to_parquet(buf, index=False)
        key = f"{spec.data.dataset}/dt={day.isoformat()}/part-{i}.parquet"
        store.put_bytes(key, buf.getvalue())
        keys.append(key)
    return keys


def unlabeled(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in ("label", "split") if c in df]).reset_index(drop=True)


def in_distribution(n_per_class: int = 60, seed: int = 11) -> pd.DataFrame:
    """Fresh tickets from the training distribution (another seed), labels kept for the truth."""
    df = text_examples(n_per_class=n_per_class, seed=seed)
    df["example_id"] = "new-" + df["example_id"]
    return df


def class_mix(n: int = 180, label: str = "billing", seed: int = 12) -> pd.DataFrame:
    """Tickets from one class only: the class mix moved, the inputs did not."""
    df = text_examples(n_per_class=n, seed=seed)
    return df[df["label"] == label].assign(example_id=lambda d: "mix-" + d["example_id"]).reset_index(drop=True)


def other_domain(n: int = 180) -> pd.DataFrame:
    """Debian package descriptions scored by the ticket model: another input domain."""
    deb = pd.read_parquet(DEBIAN).head(n)
    return pd.DataFrame({"example_id": "deb-" + deb["example_id"].astype(str),
                         "text": deb["text"].astype(str).str.slice(0, 200),
                         "region": ["eu", "us"][0:1] * len(deb)})


def digits_features() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's handwritten digits (real data): 1797 x 64 pixel features and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float64), digits.target.astype(np.int64)



def temperature_scaled(x_train: np.ndarray, y_train: np.ndarray, x_cal: np.ndarray, y_cal: np.ndarray,
                       c: float = 1.0) -> Any:
    """A logistic regression with a temperature fitted on the calibration rows (tl_core's own fit), as the
    served models are: returns a function rows -> calibrated probabilities."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from tl_core.evaluate.calibration import fit_temperature
    from tl_core.evaluate.metrics import softmax

    scaler = StandardScaler(with_mean=not hasattr(x_train, "tocsr")).fit(x_train)
    clf = LogisticRegression(C=c, max_iter=3000).fit(scaler.transform(x_train), y_train)
    temperature = fit_temperature(clf.decision_function(scaler.transform(x_cal)), y_cal)
    return lambda x: softmax(clf.decision_function(scaler.transform(x)), temperature)
