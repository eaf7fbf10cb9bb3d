"""Scoring partitions at the edges (issue 29.13-15) on a real registered tiny champion and challenger: a 0-row
partition is scored as 0 rows and its drift step skips cleanly; a corrupt Parquet file is named; a partition below
monitor.min_rows is reported but its overall checks raise no alert."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from model_fixtures import tiny_bert_dir
from monitor_fixtures import Champion, build_champion, class_mix, in_distribution, put_partition, unlabeled
from tl_core.artifacts import DriftReport
from tl_core.cli import main as tl_main
from tl_core.config import MonitorSpec, parse_spec
from tl_core.errors import MonitorError
from tl_core.monitor.drift import decide_alerts
from tl_core.pipeline import step_drift, step_score
from tl_core.store import open_store, read_uri

EMPTY, CORRUPT, BROKEN_PAGE, ONE, FEW = "2026-12-20", "2026-12-21", "2026-12-22", "2026-12-23", "2026-12-24"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Champion]:
    root = tmp_path_factory.mktemp("edges")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
            mp.delenv(var, raising=False)
        mp.setattr("tl_core.registry.CACHE_DIR", root / "cache")
        ch = build_champion(root, tiny_bert_dir(root / "models"))
        put_partition(ch.spec, date.fromisoformat(EMPTY), unlabeled(in_distribution()).iloc[:0])
        put_partition(ch.spec, date.fromisoformat(ONE), unlabeled(class_mix()).iloc[:1])
        put_partition(ch.spec, date.fromisoformat(FEW), unlabeled(class_mix()).iloc[:60])
        yield ch


def _spec_file(champion: Champion, tmp_path: Path, **monitor: Any) -> str:
    raw = champion.spec.model_dump(mode="json")
    raw["monitor"].update(monitor)
    parse_spec(raw)
    path = tmp_path / "other.yaml"
    path.write_text(json.dumps(raw))
    return str(path)


def test_a_zero_row_partition_is_scored_as_0_rows_and_drift_skips_cleanly(
        champion: Champion, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    with caplog.at_level("WARNING", logger="tl_core.monitor.score"):
        uri = step_score(str(champion.spec_file), "r", EMPTY)
    record = json.loads(read_uri(f"{uri}/scoring.json"))
    assert record["rows"] == 0 and record["files"] == {}
    (warned,) = [r.getMessage() for r in caplog.records if r.name == "tl_core.monitor.score"]
    assert "dt=2026-12-20/ has 0 rows" in warned and "part-0.parquet" in warned
    result = step_drift(str(champion.spec_file), "r", EMPTY)
    assert result["alerts"] == [] and result["rows"] == 0 and result["champion_version"] == "v0001"
    assert result["not_judged"].startswith("0 rows, below monitor.min_rows 100: not judged")
    report = json.loads(read_uri(result["report_uri"]))
    DriftReport.model_validate(report)
    assert report["rows"] == 0 and report["alerts"] == [] and report["not_judged"] == result["not_judged"]
    assert report["embedding"]["status"] == "unavailable" and "0 rows" in report["embedding"]["reason"]
    assert report["predictions"]["psi"] == 0.0 and report["accuracy"]["expected_accuracy"] is None
    html = read_uri(result["report_uri"].replace("report.json", "report.html")).decode()
    assert "0 rows, below monitor.min_rows 100: not judged" in html
    assert tl_main(["score", "--spec", str(champion.spec_file), "--date", EMPTY]) == 0
    assert "overall checks: 0 rows, below monitor.min_rows 100: not judged" in capsys.readouterr().out


def test_a_corrupt_parquet_file_is_named_with_what_was_expected(champion: Champion) -> None:
    store = open_store(champion.spec.monitor.scoring_root)
    put_partition(champion.spec, date.fromisoformat(CORRUPT), unlabeled(in_distribution()).iloc[:20])
    key = f"{champion.spec.data.dataset}/dt={CORRUPT}/part-1.parquet"
    store.put_bytes(key, b"PAR1 this is not a parquet file")
    with pytest.raises(MonitorError, match=rf"scoring file {re.escape(store.url(key))} is not a readable Parquet "
                                           r"file \(.*\): expected a Parquet file with columns \['example_id', "
                                           r"'text', 'region'\]"):
        step_score(str(champion.spec_file), "r", CORRUPT)
    assert not open_store(champion.spec.store).exists(f"scores/{champion.spec.name}/dt={CORRUPT}/scoring.json")


def test_a_corrupt_page_inside_a_parquet_file_is_named(champion: Champion) -> None:
    buf = io.BytesIO()
    unlabeled(in_distribution()).to_parquet(buf, index=False, compression="snappy")
    data = bytearray(buf.getvalue())
    data[8:4000] = b"\xff" * (4000 - 8)  # the column chunks; the footer (the schema) stays readable
    store = open_store(champion.spec.monitor.scoring_root)
    key = f"{champion.spec.data.dataset}/dt={BROKEN_PAGE}/part-0.parquet"
    store.put_bytes(key, bytes(data))
    with pytest.raises(MonitorError, match=rf"scoring file {re.escape(store.url(key))} is not a readable Parquet "
                                           "file"):
        step_score(str(champion.spec_file), "r", BROKEN_PAGE)


def test_a_one_row_partition_raises_no_overall_alert(champion: Champion, tmp_path: Path) -> None:
    step_score(str(champion.spec_file), "r", ONE)
    result = step_drift(str(champion.spec_file), "r", ONE)
    assert result["alerts"] == [] and result["rows"] == 1
    assert result["not_judged"].startswith("1 rows, below monitor.min_rows 100: not judged")
    report = json.loads(read_uri(result["report_uri"]))
    assert report["predictions"]["psi"] > champion.spec.monitor.psi_threshold  # measured and reported...
    assert report["thresholds"]["min_rows"] == 100.0  # ...but not judged
    # the same partition judged from one row up: the prediction shift fires, so min_rows is what kept it quiet
    judged = step_drift(_spec_file(champion, tmp_path, min_rows=1), "r", ONE)
    assert any(a.startswith("prediction shift: PSI") for a in judged["alerts"]) and judged["not_judged"] is None


def test_below_min_rows_only_the_overall_checks_are_silenced(champion: Champion) -> None:
    step_score(str(champion.spec_file), "r", FEW)
    result = step_drift(str(champion.spec_file), "r", FEW)
    assert result["alerts"] == [] and result["not_judged"].startswith("60 rows, below monitor.min_rows 100")
    monitor = MonitorSpec(min_rows=100, min_slice_rows=30)
    report = {"rows": 60, "embedding": {"status": "unavailable", "reason": "gone"},
              "predictions": {"psi": 0.9, "chi2": 80.0, "chi2_p_value": 1e-9, "dof": 2,
                              "reference_counts": {"a": 50, "b": 50}, "current_counts": {"a": 60, "b": 0}},
              "accuracy": {"expected_accuracy": 0.5, "reference_accuracy": 0.9, "slices": {
                  "region=eu": {"rows": 40, "expected_accuracy": 0.5, "reference_accuracy": 0.9}}}}
    # a slice keeps its own rule (monitor.min_slice_rows): 40 rows of region=eu are judged
    assert [(a["metric"], a["slice"]) for a in decide_alerts(report, monitor)] == [
        ("expected_accuracy_drop", "region=eu")]
    assert {a["metric"] for a in decide_alerts({**report, "rows": 100}, monitor)} == {
        "embedding_drift_unmeasured", "prediction_psi", "prediction_chi2_p_value", "expected_accuracy_drop"}
