"""Drift on predicted classes keys the champion's reference counts and the partition's counts by class NAME: the
reference columns are the champion's own class names (never the current spec's order), the partition's counts are
of its prediction names, and a name the champion does not have is refused. Pure and cheap: no model is trained."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from eval_fixtures import spec_dict
from tl_core.artifacts import VersionManifest
from tl_core.config import parse_spec
from tl_core.errors import MonitorError
from tl_core.monitor.drift import ChampionReference, load_reference, prediction_sections, tally_predictions
from tl_core.store import open_store

CHAMPION = ["billing", "login", "shipping"]


def _predictions(root: Path, names: list[str]) -> tuple[Any, str]:
    store = open_store(root.as_uri())
    df = pd.DataFrame({"prediction": names, "confidence": np.linspace(0.5, 0.9, len(names)),
                       "region": ["eu", "us"] * (len(names) // 2) + ["eu"] * (len(names) % 2)})
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.put_bytes("scores/predictions.parquet", buf.getvalue())
    return store, "scores/predictions.parquet"


def _reference(root: Path, counts: list[int]) -> ChampionReference:
    return ChampionReference(version="v0001", run_id="r", labels=list(CHAMPION), test_accuracy=0.9,
                             slice_accuracy={}, test_counts=np.array(counts), test_expected_accuracy=0.9,
                             run_spec=parse_spec(spec_dict(root.as_uri())))


def test_label_space_drift_counts_are_keyed_by_class_name(tmp_path: Path) -> None:
    # The partition predicts exactly the champion's reference mix; its tally is made in another class order.
    names = ["billing"] * 5 + ["login"] * 3 + ["shipping"] * 2
    store, key = _predictions(tmp_path, names)
    tally = tally_predictions(store, key, ["shipping", "login", "billing"], ["region"], chunk_rows=3)
    assert tally.counts == {"shipping": 2, "login": 3, "billing": 5} and tally.rows == 10
    shift, _ = prediction_sections(_reference(tmp_path, [5, 3, 2]), tally)
    assert shift["reference_counts"] == shift["current_counts"] == {"billing": 5, "login": 3, "shipping": 2}
    assert shift["psi"] == 0.0 and shift["chi2"] == 0.0


def test_label_space_drift_refuses_a_class_the_champion_lacks(tmp_path: Path) -> None:
    store, key = _predictions(tmp_path, ["billing", "refund", "login"])
    with pytest.raises(MonitorError, match=r"predicts class 'refund', which is not among the champion's classes "
                                           r"\['billing', 'login', 'shipping'\]"):
        tally_predictions(store, key, CHAMPION, [], chunk_rows=2)


class _Versions:
    """The two registry calls load_reference makes, over one version folder (a schema-1 manifest: no class
    names of its own)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def manifest(self, version: str) -> VersionManifest:
        return VersionManifest.model_validate({
            "model": "eval-demo", "version": version, "run_id": "champion-run", "shadow": False,
            "created_at": "2026-11-01T00:00:00Z", "snapshot_hash": None, "backbone": {}, "strategy": "frozen",
            "strategy_config": {}, "seeds": {}, "candidate_selection": {}, "library_versions": {},
            "metrics": {"accuracy": 0.9}, "temperature": 1.0, "gate": {"passed": True}, "files": {}})

    def load_version(self, version: str) -> Path:
        return self.root


def _version(root: Path, spec_labels: list[str] | None, config_labels: list[str] | None) -> Path:
    """A version folder whose champion predicts [billing x3, login x1, shipping x0] (columns in CHAMPION order)."""
    model = root / "models" / "frozen"
    (model / "logits").mkdir(parents=True)
    logits = np.eye(3)[[0, 0, 0, 1]] * 5.0
    np.savez(model / "logits" / "test.npz", example_id=np.array(["a", "b", "c", "d"]), logits=logits)
    if config_labels:  # a model_config.json as a model written before configs had a schema version
        (model / "model_config.json").write_text(json.dumps({
            "format": "tl-classifier/1", "model": "eval-demo", "strategy": "frozen", "labels": config_labels,
            "kind": "transformers", "num_features": 8, "backbone": {}, "preprocessing": {}, "input_column": "text",
            "seed": 0, "train": {}, "spec_fingerprint": "f"}))
    if spec_labels:
        (root / "spec.json").write_text(json.dumps({**spec_dict(root.as_uri()), "labels": spec_labels}))
    return root


def test_label_space_drift_reference_uses_the_champions_own_class_names(tmp_path: Path) -> None:
    """The current spec lists the classes in another order: the reference is keyed by the champion's names."""
    current = parse_spec({**spec_dict(tmp_path.as_uri()), "labels": ["shipping", "login", "billing"]})
    from_config = load_reference(current, _Versions(_version(tmp_path / "a", None, CHAMPION)), "v0001")  # type: ignore[arg-type]
    # A version whose model_config.json does not name its classes: its own spec.json does (not the current spec).
    from_spec = load_reference(current, _Versions(_version(tmp_path / "b", CHAMPION, None)), "v0001")  # type: ignore[arg-type]
    for ref in (from_config, from_spec):
        assert ref.labels == CHAMPION
        assert dict(zip(ref.labels, ref.test_counts.tolist(), strict=True)) == {"billing": 3, "login": 1,
                                                                               "shipping": 0}
    with pytest.raises(MonitorError, match=r"champion v0001: neither its model_config.json nor its spec.json names "
                                           r"its classes"):
        load_reference(current, _Versions(_version(tmp_path / "c", None, None)), "v0001")  # type: ignore[arg-type]
    with pytest.raises(MonitorError, match=r"its test logits have 3 columns but its classes are \['billing', "
                                           r"'login'\] \(2\)"):
        load_reference(current, _Versions(_version(tmp_path / "d", None, ["billing", "login"])), "v0001")  # type: ignore[arg-type]
