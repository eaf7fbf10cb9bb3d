from __future__ import annotations

import io
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tl_core.config import parse_spec
from tl_core.data.audit import run_audit
from tl_core.data.demo import write_demo_data
from tl_core.data.partitions import dhash, partition_key
from tl_core.data.snapshot import run_snapshot
from tl_core.data.split import assign_splits, run_split
from tl_core.errors import BlockingAuditFinding, DataError
from tl_core.runs import RunContext
from tl_core.store import open_store

LABELS = ["billing", "login", "shipping"]


def spec_for(uri: str, **data: Any) -> Any:
    return parse_spec({
        "name": "tickets", "modality": "text", "labels": LABELS,
        "backbone": {"library": "transformers", "name": "x", "weights": "none"},
        "data": {"root": uri + "/data", "dataset": "t", "window_days": 3, "slice_columns": ["region"],
                 "min_examples_per_class": 2, "test_days": 1, "max_unknown_label_fraction": 0.2, **data},
        "store": uri + "/store",
    })


def rows(day: date, n: int = 12, prefix: str = "", **over: Any) -> pd.DataFrame:
    df = pd.DataFrame({
        "example_id": [f"{prefix}{day:%m%d}-{i}" for i in range(n)],
        "label": [LABELS[i % 3] for i in range(n)],
        "text": [f"ticket {i} about {LABELS[i % 3]} on {day} number {i * 7}" for i in range(n)],
        "labeled_at": [datetime(day.year, day.month, day.day, 10, i % 60) for i in range(n)],
        "region": ["eu" if i % 2 else "us" for i in range(n)],
    })
    for k, v in over.items():
        df[k] = v
    return df


def put(spec: Any, day: date, df: pd.DataFrame, name: str = "part-0.parquet") -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    open_store(spec.data.root).put_bytes(partition_key(spec.data.dataset, day, name), buf.getvalue())


def base(spec: Any) -> None:
    for d in (1, 2, 3, 4):
        put(spec, date(2026, 11, d), rows(date(2026, 11, d)))


def test_snapshot_window_hash_and_late_partitions(store_uri: str) -> None:
    spec = spec_for(store_uri)
    base(spec)
    put(spec, date(2026, 10, 20), rows(date(2026, 10, 20)))  # outside every window used below
    a = RunContext.open(spec, "a")
    run_snapshot(a, date(2026, 11, 4))
    m = a.read_json("snapshot/manifest.json")
    assert [p["dt"] for p in m["partitions"]] == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert m["total_rows"] == 48 and m["rows_per_label"] == {"billing": 16, "login": 16, "shipping": 16}
    b = RunContext.open(spec, "b")
    run_snapshot(b, date(2026, 11, 4))
    assert b.store.get_bytes(b.key("snapshot/manifest.json")) == a.store.get_bytes(a.key("snapshot/manifest.json"))
    # Late labels for Nov 2 land after run a: only a run covering Nov 2 created afterwards sees them.
    put(spec, date(2026, 11, 2), rows(date(2026, 11, 2), prefix="late-"), "part-1.parquet")
    c = RunContext.open(spec, "c")
    run_snapshot(c, date(2026, 11, 4))
    assert c.read_json("snapshot/manifest.json")["content_hash"] != m["content_hash"]
    with pytest.raises(DataError, match="already has a snapshot with content hash"):
        run_snapshot(a, date(2026, 11, 4))
    d = RunContext.open(spec, "d")
    run_snapshot(d, date(2026, 11, 1))  # window [Oct 29, Nov 1] does not cover Nov 2
    assert all(p["dt"] != "2026-11-02" for p in d.read_json("snapshot/manifest.json")["partitions"])


def test_empty_window_and_bad_schema_block(store_uri: str) -> None:
    spec = spec_for(store_uri)
    base(spec)
    with pytest.raises(BlockingAuditFinding, match=r"empty window: no partitions .* in \[2026-01-01, 2026-01-04\]"):
        run_snapshot(RunContext.open(spec, "e"), date(2026, 1, 4))
    put(spec, date(2026, 12, 1), rows(date(2026, 12, 1)).drop(columns=["region"]))
    with pytest.raises(DataError, match=r"dt=2026-12-01/part-0.parquet: missing column\(s\) \['region'\]"):
        run_snapshot(RunContext.open(spec, "f"), date(2026, 12, 1))


def test_changed_partition_after_snapshot_is_refused(store_uri: str) -> None:
    spec = spec_for(store_uri)
    base(spec)
    ctx = RunContext.open(spec, "r")
    run_snapshot(ctx, date(2026, 11, 4))
    put(spec, date(2026, 11, 3), rows(date(2026, 11, 3), prefix="x"))
    with pytest.raises(DataError, match="dt=2026-11-03/part-0.parquet changed after the snapshot"):
        run_audit(ctx)


def _audit(spec: Any, run: str = "r") -> tuple[RunContext, dict[str, Any]]:
    ctx = RunContext.open(spec, run)
    run_snapshot(ctx, date(2026, 11, 4))
    run_audit(ctx)
    return ctx, ctx.read_json("audit/report.json")


def _finding(report: dict[str, Any], check: str) -> dict[str, Any]:
    return next(f for f in report["findings"] if f["check"] == check)


def test_quarantined_findings(tmp_path: Path) -> None:
    spec = spec_for(tmp_path.as_uri())
    base(spec)
    bad = rows(date(2026, 11, 4), n=6, prefix="bad-")
    bad.loc[0, "label"] = None
    bad.loc[1, "label"] = "refund"  # unknown, 1/54 < 20%: quarantined, not blocking
    bad.loc[2, "text"] = "   "
    bad.loc[3, "example_id"] = "1101-0"  # repeats an earlier id
    put(spec, date(2026, 11, 4), bad, "part-1.parquet")
    ctx, report = _audit(spec)
    assert report["blocking"] is False and report["quarantined_rows"] == 4
    assert _finding(report, "missing_label")["count"] == 1
    assert _finding(report, "unknown_label")["severity"] == "warning"
    assert _finding(report, "unknown_label")["example_ids"] == ["bad-1104-1"]
    assert _finding(report, "empty_text")["example_ids"] == ["bad-1104-2"]
    assert _finding(report, "duplicate_example_id")["count"] == 1
    q = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("audit/quarantine.parquet"))))
    assert sorted(q["reason"]) == sorted(["missing label", "label not in the spec's label set",
                                          "empty or whitespace-only text", "duplicate example_id"])
    run_split(ctx)
    ex = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))
    assert len(ex) == report["usable_rows"] == report["total_rows"] - 4  # nothing dropped silently
    assert report["slice_sizes"]["region=eu"] + report["slice_sizes"]["region=us"] == report["usable_rows"]
    assert report["class_counts"] == {"billing": 18, "login": 17, "shipping": 17}


def test_blocking_unknown_labels_name_partition_and_ids(tmp_path: Path) -> None:
    spec = spec_for(tmp_path.as_uri())
    base(spec)
    bad = rows(date(2026, 11, 4), n=20, prefix="u-", label="refund")
    put(spec, date(2026, 11, 4), bad, "part-1.parquet")
    with pytest.raises(BlockingAuditFinding, match=r"unknown_label: .*column 'label', 20 rows in "
                                                   r"t/dt=2026-11-04/part-1.parquet \(20\), e\.g\. example ids "
                                                   r"\['u-1104-0', 'u-1104-1', 'u-1104-2', 'u-1104-3', 'u-1104-4'\]"):
        _audit(spec)
    ctx = RunContext.open(spec, "r")
    assert ctx.read_json("audit/report.json")["blocking"] is True  # the report is written before stopping


def test_blocking_small_class(tmp_path: Path) -> None:
    spec = spec_for(tmp_path.as_uri(), min_examples_per_class=30)
    base(spec)
    with pytest.raises(BlockingAuditFinding, match="classes below min_examples_per_class 30"):
        _audit(spec)


def test_duplicates_imbalance_and_label_shift(tmp_path: Path) -> None:
    spec = spec_for(tmp_path.as_uri())
    base(spec)
    ctx_prev = RunContext.open(spec, "prev")
    run_snapshot(ctx_prev, date(2026, 11, 3))
    dup = rows(date(2026, 11, 4), n=30, prefix="d-", label="billing")
    dup["text"] = "Ticket 1 about billing on 2026-11-01 number 7!!"  # near-dup of an older row (case/punct.)
    put(spec, date(2026, 11, 4), dup, "part-1.parquet")
    _, report = _audit(spec)
    f = _finding(report, "duplicates")
    assert "spans" not in f["message"] and "1 groups span the test days" in f["message"]
    assert report["imbalance_ratio"] == pytest.approx(46 / 16)
    shift = report["label_shift"]
    assert shift["previous_run"] == "prev" and shift["tvd"] > 0.2 and shift["p_value"] < 0.01
    assert _finding(report, "label_shift")["severity"] == "warning"


def test_split_is_deterministic_group_aware_and_newest_days_test(tmp_path: Path) -> None:
    spec = spec_for(tmp_path.as_uri())
    base(spec)
    groups = rows(date(2026, 11, 2), n=12, prefix="g-")
    groups["group_id"] = ["photo-1"] * 6 + ["photo-2"] * 6
    put(spec, date(2026, 11, 2), groups, "part-1.parquet")
    late_twin = rows(date(2026, 11, 4), n=1, prefix="twin-", group_id="photo-1")
    put(spec, date(2026, 11, 4), late_twin, "part-2.parquet")
    results = []
    for run in ("s1", "s2"):
        ctx, _ = _audit(spec, run)
        run_split(ctx)
        results.append(ctx.read_json("split/split.json"))
        ex = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))
        assert set(ex.loc[ex["dt"] == "2026-11-04", "split"]) == {"test"}
        for gid, g in ex.dropna(subset=["group_id"]).groupby("group_id"):
            assert g["split"].nunique() == 1, gid
        # photo-1 has a member on the newest day, so the whole group is test.
        assert set(ex.loc[ex["group_id"] == "photo-1", "split"]) == {"test"}
        assert {"train", "validation", "calibration", "test"} <= set(ex["split"])
    assert results[0]["split_hash"] == results[1]["split_hash"]


def test_near_duplicate_text_never_straddles() -> None:
    df = rows(date(2026, 11, 1), n=30)
    df["dt"] = ["2026-11-01"] * 29 + ["2026-11-02"]
    df.loc[29, "text"] = df.loc[3, "text"].upper() + "!!"
    split = assign_splits(df, "text", 1, 0.2, 0.2, 0, 4)
    assert split[3] == split[29] == "test"
    other = assign_splits(df, "text", 1, 0.2, 0.2, 1, 4)
    assert (split == assign_splits(df, "text", 1, 0.2, 0.2, 0, 4)).all() and not (split == other).all()


def test_image_perceptual_hash_and_audit(tmp_path: Path) -> None:
    from PIL import Image, ImageFilter

    img = Image.fromarray((np.indices((32, 32)).sum(0) * 4 % 255).astype(np.uint8))
    buf1, buf2, buf3 = io.BytesIO(), io.BytesIO(), io.BytesIO()
    img.save(buf1, format="PNG")
    img.filter(ImageFilter.GaussianBlur(0.5)).resize((40, 40)).save(buf2, format="PNG")
    Image.fromarray(np.rot90(np.asarray(img))).save(buf3, format="PNG")
    h1, h2, h3 = (dhash(b.getvalue()) for b in (buf1, buf2, buf3))
    assert bin(h1 ^ h2).count("1") <= 4 < bin(h1 ^ h3).count("1")
    spec = parse_spec({"name": "digits", "modality": "image", "labels": [str(i) for i in range(10)],
                       "backbone": {"library": "timm", "name": "x", "weights": "none"},
                       "data": {"root": tmp_path.as_uri() + "/data", "dataset": "digits", "input_column": "image",
                                "slice_columns": ["scanner", "site"], "window_days": 3, "test_days": 1,
                                "min_examples_per_class": 2},
                       "store": tmp_path.as_uri() + "/store"})
    write_demo_data(spec, end_date=date(2026, 11, 4), days=4, rows_per_day=60)
    broken = pd.DataFrame({"example_id": ["zero", "junk"], "label": ["1", "2"], "image": [b"", b"not a png"],
                           "labeled_at": [datetime(2026, 11, 4)] * 2, "scanner": ["fax"] * 2,
                           "site": ["north"] * 2, "group_id": ["z", "j"]})
    put(spec, date(2026, 11, 4), broken, "part-9.parquet")
    ctx = RunContext.open(spec, "img")
    run_snapshot(ctx, date(2026, 11, 4))
    run_audit(ctx)
    report = ctx.read_json("audit/report.json")
    assert _finding(report, "zero_size_image")["example_ids"] == ["zero"]
    assert _finding(report, "undecodable_image")["example_ids"] == ["junk"]
    run_split(ctx)
    ex = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))
    assert len(ex) == 240 and set(ex["scanner"]) == {"flatbed", "phone", "fax"}
    for _, g in ex.groupby("group_id"):
        assert g["split"].nunique() == 1
