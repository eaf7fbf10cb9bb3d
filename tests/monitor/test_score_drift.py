"""`tl score` / step_score and step_drift end to end on a real registered tiny champion (and a challenger):
predictions with the version in bounded chunks, shadow disagreement per slice, drift quiet on the training
distribution and firing (naming what moved) on another class mix and another input domain, and the error paths."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model_fixtures import tiny_bert_dir
from monitor_fixtures import (
    Champion,
    build_champion,
    class_mix,
    in_distribution,
    other_domain,
    put_partition,
    unlabeled,
)
from tl_core.artifacts import DriftReport
from tl_core.cli import main as tl_main
from tl_core.config import parse_spec
from tl_core.errors import DataError, MonitorError
from tl_core.pipeline import step_drift, step_score
from tl_core.store import open_store, read_uri

IN, MIX, DOMAIN = "2026-12-01", "2026-12-02", "2026-12-03"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Champion]:
    root = tmp_path_factory.mktemp("monitor")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
            mp.delenv(var, raising=False)
        mp.setattr("tl_core.registry.CACHE_DIR", root / "cache")
        ch = build_champion(root, tiny_bert_dir(root / "models"))
        put_partition(ch.spec, date.fromisoformat(IN), unlabeled(in_distribution()), files=2)
        put_partition(ch.spec, date.fromisoformat(MIX), unlabeled(class_mix()))
        put_partition(ch.spec, date.fromisoformat(DOMAIN), other_domain())
        yield ch


def _read(uri: str, name: str) -> pd.DataFrame:
    import io

    return pd.read_parquet(io.BytesIO(read_uri(f"{uri}/{name}")))


def test_scoring_writes_predictions_with_the_version_in_bounded_chunks(champion: Champion, tmp_path: Path) -> None:
    uri = step_score(str(champion.spec_file), "score-run-1", IN)
    record = json.loads(read_uri(f"{uri}/scoring.json"))
    pred = _read(uri, "predictions.parquet")
    expected = unlabeled(in_distribution())
    assert record["rows"] == len(pred) == len(expected) == 180
    # two files of 90 rows, read 64 rows at a time: 4 chunks, none over the spec's chunk_rows
    assert (record["chunks"], record["max_chunk_rows"]) == (4, 64)
    assert pred["example_id"].tolist() == expected["example_id"].tolist()
    assert (pred["model_version"] == "v0001").all() and record["champion_version"] == "v0001"
    probs = pred[[f"prob_{c}" for c in champion.spec.labels]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert pred["region"].tolist() == expected["region"].tolist()
    # `tl predict` scores the same rows through the same code: the same probabilities
    expected.to_parquet(tmp_path / "in.parquet", index=False)
    assert tl_main(["predict", "--spec", str(champion.spec_file), "--model", "tiny-text", "--input",
                    str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out.parquet")]) == 0
    served = pd.read_parquet(tmp_path / "out.parquet")
    np.testing.assert_allclose(served[[f"prob_{c}" for c in champion.spec.labels]].to_numpy(), probs, atol=1e-6)
    # a re-run with the same inputs and versions scores nothing and rewrites nothing
    store = open_store(champion.spec.store)
    key = "scores/tiny-text/dt=2026-12-01/predictions.parquet"
    etag = store.etag(key)
    assert step_score(str(champion.spec_file), "score-run-2", IN) == uri
    assert store.etag(key) == etag


def test_shadow_disagreement_is_recorded_per_slice(champion: Champion) -> None:
    uri = step_score(str(champion.spec_file), "score-run-1", DOMAIN)
    record = json.loads(read_uri(f"{uri}/scoring.json"))
    pred, shadow = _read(uri, "predictions.parquet"), _read(uri, "shadow.parquet")
    assert record["challenger_version"] == "v0002" and (shadow["model_version"] == "v0002").all()
    assert shadow["example_id"].tolist() == pred["example_id"].tolist()
    differs = pred["prediction"].to_numpy() != shadow["prediction"].to_numpy()
    assert differs.any()  # two models trained on other data disagree somewhere out of domain
    assert record["disagreement"]["rate"] == pytest.approx(differs.mean())
    in_dist = json.loads(read_uri(f"{step_score(str(champion.spec_file), 'r', IN)}/scoring.json"))["disagreement"]
    a, b = _read(step_score(str(champion.spec_file), "r", IN), "predictions.parquet"), _read(
        step_score(str(champion.spec_file), "r", IN), "shadow.parquet")
    for region in ("eu", "us"):
        mask = (a["region"] == region).to_numpy()
        rate = float((a["prediction"].to_numpy()[mask] != b["prediction"].to_numpy()[mask]).mean())
        assert in_dist["slices"][f"region={region}"] == {"rows": int(mask.sum()), "rate": pytest.approx(rate)}


def test_drift_is_quiet_on_the_training_distribution(champion: Champion) -> None:
    step_score(str(champion.spec_file), "r", IN)
    result = step_drift(str(champion.spec_file), "drift-run", IN)
    assert result["alerts"] == [] and result["champion_version"] == "v0001"
    report = json.loads(read_uri(result["report_uri"]))
    DriftReport.model_validate(report)
    assert report["embedding"]["status"] == "ok" and report["embedding"]["p_value"] > 0.01
    html = read_uri(result["report_uri"].replace("report.json", "report.html")).decode()
    assert html.count("data:image/png;base64,") == 3 and "<li>none</li>" in html


def test_drift_fires_on_another_class_mix_naming_the_class(champion: Champion,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert tl_main(["score", "--spec", str(champion.spec_file), "--date", MIX]) == 0
    out = capsys.readouterr().out
    assert "scored dt=2026-12-02" in out and "alerts: 3" in out
    assert "prediction shift: PSI" in out and "billing 33.3% -> 100.0%" in out
    assert "prediction shift: chi-square" in out


def test_drift_fires_on_another_input_domain(champion: Champion) -> None:
    step_score(str(champion.spec_file), "r", DOMAIN)
    result = step_drift(str(champion.spec_file), "drift-run", DOMAIN)
    report = json.loads(read_uri(result["report_uri"]))
    metrics = {a["metric"] for a in report["alerts"]}
    assert "embedding_mmd_p_value" in metrics
    embedding = next(a for a in report["alerts"] if a["metric"] == "embedding_mmd_p_value")
    assert embedding["value"] < embedding["threshold"] == champion.spec.monitor.embedding_alpha
    assert any(text.startswith("input drift: frozen-backbone embeddings differ") for text in result["alerts"])


def test_a_missing_training_snapshot_is_an_alert_not_a_silent_pass(champion: Champion, tmp_path: Path) -> None:
    """Scores kept in another store than the champion's run: the input-drift test cannot run, and says so."""
    raw = champion.spec.model_dump(mode="json")
    raw.update(store=(tmp_path / "elsewhere").as_uri(), registry=champion.spec.registry_root)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(raw))
    step_score(str(spec_file), "r", IN)
    result = step_drift(str(spec_file), "r", IN)
    assert len(result["alerts"]) == 1
    assert result["alerts"][0].startswith("input drift not measured: the champion's training snapshot cannot be read")


def _spec_file(champion: Champion, tmp_path: Path, **over: object) -> str:
    raw = champion.spec.model_dump(mode="json")
    raw.update(over)
    parse_spec(raw)
    path = tmp_path / "other.yaml"
    path.write_text(json.dumps(raw))
    return str(path)


def test_error_paths_name_what_is_wrong(champion: Champion, tmp_path: Path) -> None:
    no_champion = _spec_file(champion, tmp_path, registry=(tmp_path / "empty-registry").as_uri())
    with pytest.raises(MonitorError, match="model 'tiny-text' has no champion yet: promote a version before scoring"):
        step_score(no_champion, "r", IN)
    with pytest.raises(MonitorError, match=r"dt=2026-12-09/ has no Parquet files \(missing partition for 2026-12-09"):
        step_score(str(champion.spec_file), "r", "2026-12-09")
    put_partition(champion.spec, date(2026, 12, 10), unlabeled(in_distribution()).drop(columns=["text"]))
    with pytest.raises(MonitorError, match=r"part-0.parquet lacks columns \['text'\]"):
        step_score(str(champion.spec_file), "r", "2026-12-10")
    with pytest.raises(MonitorError, match="dt=2026-12-11 has not been scored"):
        step_drift(str(champion.spec_file), "r", "2026-12-11")
    with pytest.raises(DataError, match="scoring date '2026-13-01' is not a calendar date"):
        step_score(str(champion.spec_file), "r", "2026-13-01")
    assert tl_main(["score", "--spec", str(champion.spec_file), "--date", "2026-12-09"]) == 1
