"""Audit: every finding with a small crafted partition, quarantined and blocking outcomes, label shift."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency
from test_data_helpers import (
    base,
    distinct_image,
    examples,
    finding,
    image_spec,
    png,
    put,
    quarantine,
    text_rows,
    text_spec,
)

from tl_core.config import ModelSpec
from tl_core.data.audit import label_shift, run_audit
from tl_core.data.snapshot import run_snapshot
from tl_core.data.split import run_split
from tl_core.errors import BlockingAuditFinding, DataError
from tl_core.runs import RunContext
from tl_core.store import open_store

D4 = date(2026, 11, 4)


def _audit(spec: ModelSpec, run: str = "r", day: date = D4) -> tuple[RunContext, dict[str, Any]]:
    ctx = RunContext.open(spec, run)
    run_snapshot(ctx, day)
    run_audit(ctx)
    return ctx, ctx.read_json("audit/report.json")


def test_quarantined_findings_are_counted_and_never_dropped(store_uri: str) -> None:
    spec = text_spec(store_uri)
    base(spec)
    bad = text_rows(D4, n=6, prefix="bad-")
    bad["label"] = pd.Series([None, "refund", *bad["label"][2:]], dtype=object)
    bad.loc[2, "text"] = "  \t "
    bad.loc[3, "example_id"] = "1101-0"  # repeats an earlier id (Nov 1 is labeled earlier)
    bad.loc[4, "text"] = ""
    bad.loc[4, "label"] = None  # two reasons on one row
    put(spec, D4, bad, "part-1.parquet")
    ctx, report = _audit(spec)
    assert report["blocking"] is False and report["total_rows"] == 54 and report["quarantined_rows"] == 5
    assert finding(report, "missing_label")["example_ids"] == ["bad-1104-0", "bad-1104-4"]
    unknown = finding(report, "unknown_label")
    assert unknown["severity"] == "warning" and unknown["example_ids"] == ["bad-1104-1"]
    assert unknown["partitions"] == [{"partition": "t/dt=2026-11-04/part-1.parquet", "count": 1}]
    assert finding(report, "empty_text")["example_ids"] == ["bad-1104-2", "bad-1104-4"]
    dup = finding(report, "duplicate_example_id")
    assert dup["count"] == 1 and dup["example_ids"] == ["1101-0"] and dup["severity"] == "warning"
    q = quarantine(ctx)
    assert dict(zip(q["example_id"], q["reason"], strict=True)) == {
        "bad-1104-0": "missing label", "bad-1104-1": "label not in the spec's label set",
        "bad-1104-2": "empty or whitespace-only text", "1101-0": "duplicate example_id",
        "bad-1104-4": "missing label; empty or whitespace-only text"}
    assert set(q["partition"]) == {"t/dt=2026-11-04/part-1.parquet"} and sorted(q["row_in_file"]) == [0, 1, 2, 3, 4]
    assert report["quarantine_reasons"]["missing label"] == 2
    run_split(ctx)
    ex = examples(ctx)
    assert len(ex) == report["usable_rows"] == 49  # usable + quarantined = total
    assert not set(q["example_id"]) - {"1101-0"} & set(ex["example_id"])
    assert (ex["example_id"] == "1101-0").sum() == 1  # the original (earliest) row is kept
    assert report["slice_sizes"]["region=eu"] + report["slice_sizes"]["region=us"] == 49
    assert report["class_counts"] == {"billing": 16, "login": 16, "shipping": 17}
    assert report["imbalance_ratio"] == pytest.approx(17 / 16)


def test_blocking_unknown_labels_name_partition_column_count_and_ids(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    put(spec, D4, text_rows(D4, n=20, prefix="u-", label="refund"), "part-1.parquet")
    with pytest.raises(BlockingAuditFinding, match=r"unknown_label: 20 rows \(29\.41%\) .*partition\(s\) "
                       r"t/dt=2026-11-04/part-1.parquet \(20\), column 'label', count 20, example ids "
                       r"\['u-1104-0', 'u-1104-1', 'u-1104-2', 'u-1104-3', 'u-1104-4'\]"):
        _audit(spec)
    ctx = RunContext.open(spec, "r")
    report = ctx.read_json("audit/report.json")  # written before stopping
    assert report["blocking"] is True and finding(report, "unknown_label")["severity"] == "blocking"
    assert len(quarantine(ctx)) == 20
    with pytest.raises(BlockingAuditFinding, match="refusing to split"):
        run_split(ctx)


def test_blocking_small_class_and_missing_class(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), min_examples_per_class=17)
    base(spec)
    put(spec, D4, text_rows(D4, n=3, prefix="b-", label="billing"), "part-1.parquet")
    with pytest.raises(BlockingAuditFinding, match=r"class_too_small: classes below min_examples_per_class 17: "
                       r"\{'login': 16, 'shipping': 16\}; .*column 'label', count 32"):
        _audit(spec)
    spec2 = text_spec(tmp_path.as_uri() + "/two")
    put(spec2, D4, text_rows(D4, n=12, label="login"))
    with pytest.raises(BlockingAuditFinding, match=r"'billing': 0, 'shipping': 0\}; partition\(s\) the whole window"):
        _audit(spec2)


def test_empty_window_of_empty_files_blocks(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    put(spec, D4, text_rows(D4).iloc[:0])
    with pytest.raises(BlockingAuditFinding, match=r"empty_window: the snapshot window 2026-11-01 .. 2026-11-04 has "
                                                   "no rows"):
        _audit(spec)


def test_audit_without_snapshot_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no snapshot/manifest.json .* run `tl snapshot` first"):
        run_audit(RunContext.open(text_spec(tmp_path.as_uri()), "none"))


def test_exact_and_near_duplicates_and_straddling(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    older = text_rows(date(2026, 11, 1))["text"]
    dup = text_rows(D4, n=4, prefix="d-")
    dup.loc[0, "text"] = older[0]  # exact copy of an older row, same label -> straddles the test day
    dup.loc[1, "text"] = "  " + older[1].upper().replace(" ", " ,  ") + "!!"  # near-duplicate
    dup.loc[2, "text"] = older[0]  # a third copy, with a different label
    dup.loc[2, "label"] = "shipping"
    put(spec, D4, dup, "part-1.parquet")
    _, report = _audit(spec)
    exact = finding(report, "exact_duplicates")
    assert exact["count"] == 3 and exact["conflicting_label_groups"] == 1 and exact["severity"] == "warning"
    near = finding(report, "near_duplicates")
    assert near["count"] == 2 and sorted(near["example_ids"]) == ["1101-1", "d-1104-1"]
    straddle = finding(report, "duplicates_straddle_test")
    assert straddle["clusters"] == 2 and straddle["severity"] == "warning" and straddle["count"] == 5


def test_label_shift_matches_scipy_and_picks_previous_run(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec, days=(1, 2, 3, 4, 5))
    for run, day in (("older", date(2026, 11, 2)), ("prev", date(2026, 11, 3)), ("future", date(2026, 11, 7))):
        run_snapshot(RunContext.open(spec, run), day)
    put(spec, D4, text_rows(D4, n=40, prefix="s-", label="billing"), "part-1.parquet")
    _, report = _audit(spec, day=D4)
    shift = report["label_shift"]
    assert shift["previous_run"] == "prev" and shift["previous_logical_date"] == "2026-11-03"
    current = report["class_counts"]
    prev = RunContext.open(spec, "prev").read_json("snapshot/manifest.json")["rows_per_label"]
    a = np.array([current[k] for k in spec.labels], float)
    b = np.array([prev[k] for k in spec.labels], float)
    assert shift["tvd"] == pytest.approx(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())
    assert shift["p_value"] == pytest.approx(chi2_contingency(np.stack([a, b]), correction=False)[1])
    assert shift["flagged"] and finding(report, "label_shift")["severity"] == "warning"
    same = label_shift(spec.labels, {"billing": 10, "login": 10, "shipping": 10}, {"billing": 20, "login": 20,
                                                                                    "shipping": 20})
    assert same["tvd"] == pytest.approx(0.0) and same["p_value"] == pytest.approx(1.0)


def test_no_previous_snapshot_is_info(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    _, report = _audit(spec)
    assert report["label_shift"] is None and finding(report, "label_shift")["severity"] == "info"
    assert finding(report, "slice_sizes")["sizes"] == {"region=eu": 24, "region=us": 24}


def test_small_test_slices_are_reported(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), slice_crosses=[])
    spec = spec.model_copy(update={"gate": spec.gate.model_copy(update={"min_slice_size": 7})})
    base(spec)
    _, report = _audit(spec)
    f = finding(report, "slice_sizes")
    assert f["severity"] == "warning" and f["test_sizes"] == {"region=eu": 6, "region=us": 6} and f["count"] == 2


def _image_frame(day: date, images: list[bytes | str], prefix: str = "i") -> pd.DataFrame:
    n = len(images)
    return pd.DataFrame({"example_id": [f"{prefix}-{i}" for i in range(n)], "label": [str(i % 10) for i in range(n)],
                         "labeled_at": [datetime(day.year, day.month, day.day, 9)] * n,
                         "scanner": ["flatbed"] * n, "image": images})


def test_image_findings_zero_size_undecodable_and_near_duplicates(tmp_path: Path) -> None:
    from PIL import Image, ImageFilter

    spec = image_spec(tmp_path.as_uri())
    good = [png(distinct_image(i)) for i in range(20)]
    blurred = Image.fromarray(distinct_image(3).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    images: list[bytes | str] = [*good, png(np.asarray(blurred.resize((40, 40)), dtype=np.float64)), b"",
                                 b"\x89PNG\r\n\x1a\n truncated", good[5]]
    put(spec, date(2026, 11, 3), _image_frame(date(2026, 11, 3), images[:12], "a"))
    put(spec, D4, _image_frame(D4, images[12:], "b"))
    ctx, report = _audit(spec)
    assert finding(report, "zero_size_image")["example_ids"] == ["b-9"]
    assert finding(report, "undecodable_image")["example_ids"] == ["b-10"]
    assert finding(report, "exact_duplicates")["count"] == 2  # a-5 and b-11
    assert sorted(finding(report, "near_duplicates")["example_ids"]) == ["a-3", "b-8"]
    assert finding(report, "duplicates_straddle_test")["clusters"] == 2
    assert sorted(quarantine(ctx)["reason"]) == ["undecodable image", "zero-size image"]


def test_image_uri_unreadable_and_fetched_content(store_uri: str) -> None:
    spec = image_spec(store_uri, column="image_uri")
    img_store = open_store(store_uri + "/images")
    uris = []
    for i in range(12):
        img_store.put_bytes(f"img-{i}.png", png(distinct_image(i)))
        uris.append(img_store.url(f"img-{i}.png"))
    img_store.put_bytes("broken.png", b"garbage")
    img_store.put_bytes("empty.png", b"")
    frame = _image_frame(D4, [*uris, img_store.url("missing.png"), img_store.url("broken.png"),
                              img_store.url("empty.png"), "http://example.com/x.png", uris[0]])
    frame = frame.rename(columns={"image": "image_uri"})
    put(spec, D4, frame)
    _, report = _audit(spec)
    assert finding(report, "unreadable_image")["example_ids"] == ["i-12", "i-15"]
    assert finding(report, "undecodable_image")["example_ids"] == ["i-13"]
    assert finding(report, "zero_size_image")["example_ids"] == ["i-14"]
    assert finding(report, "exact_duplicates")["count"] == 2  # same object content, i-0 and i-16
