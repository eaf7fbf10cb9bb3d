"""Split: newest days are test, determinism, group-awareness, near-duplicates never straddle, stratification."""

from __future__ import annotations

import hashlib
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_fixtures import base, distinct_image, examples, image_frame, image_spec, png, put, text_rows, text_spec
from tl_core.config import ModelSpec
from tl_core.data.audit import run_audit
from tl_core.data.snapshot import run_snapshot
from tl_core.data.split import assign_splits, run_split
from tl_core.errors import DataError
from tl_core.runs import SPLITS, RunContext
from tl_core.store import ObjectStore, open_store

D4 = date(2026, 11, 4)


def _split(ctx: RunContext) -> dict[str, object]:
    run_snapshot(ctx, D4)
    run_audit(ctx)
    run_split(ctx)
    out: dict[str, object] = ctx.read_json("split/split.json")
    return out


def test_split_deterministic_group_aware_newest_days_are_test(store_uri: str) -> None:
    spec = text_spec(store_uri)
    base(spec, n=30)
    groups = text_rows(date(2026, 11, 2), n=12, prefix="g-")
    groups["group_id"] = ["photo-1"] * 6 + ["photo-2"] * 6
    put(spec, date(2026, 11, 2), groups, "part-1.parquet")
    put(spec, D4, text_rows(D4, n=1, prefix="twin-", group_id="photo-1"), "part-2.parquet")
    results = []
    for run in ("s1", "s2"):
        ctx = RunContext.open(spec, run)
        results.append(_split(ctx))
        ex = examples(ctx)
        assert set(ex.loc[ex["dt"] == "2026-11-04", "split"]) == {"test"}
        for gid, g in ex.dropna(subset=["group_id"]).groupby("group_id"):
            assert g["split"].nunique() == 1, gid
        assert set(ex.loc[ex["group_id"] == "photo-1", "split"]) == {"test"}  # its newest member is on Nov 4
        assert set(ex["split"]) == set(SPLITS)
        assert list(ex.columns) == ["example_id", "label", "labeled_at", "dt", "split", "text", "group_id", "region"]
        assert sorted(ex["example_id"]) == sorted(sum(results[-1]["example_ids"].values(), []))  # type: ignore[attr-defined]
    assert results[0]["split_hash"] == results[1]["split_hash"]
    assert results[0]["counts"] == results[1]["counts"]
    other = text_spec(store_uri, split_seed=7)
    assert _split(RunContext.open(other, "s3"))["split_hash"] != results[0]["split_hash"]


def _frame(n_days: int = 6, per_day: int = 40) -> pd.DataFrame:
    rows = []
    for d in range(n_days):
        day = date(2026, 11, 1 + d)
        rows.append(text_rows(day, per_day).assign(dt=day.isoformat()))
    return pd.concat(rows, ignore_index=True)


def test_near_duplicate_text_never_straddles_and_goes_to_newest_side() -> None:
    df = _frame()
    df.loc[5, "text"] = "Refund   please!!"
    df.loc[len(df) - 1, "text"] = "refund, PLEASE"  # newest day: the pair goes to test
    df.loc[7, "text"] = "Same words here"
    df.loc[50, "text"] = "same   WORDS here."  # both before the test day: same side
    split = assign_splits(df, "text", 1, 0.2, 0.2, 0, 4)
    assert split[5] == split[len(df) - 1] == "test"
    assert split[7] == split[50] != "test"
    assert (split == assign_splits(df, "text", 1, 0.2, 0.2, 0, 4)).all()
    assert not (split == assign_splits(df, "text", 1, 0.2, 0.2, 1, 4)).all()


def test_chained_clusters_stay_together() -> None:
    df = _frame()
    # a ~ b by group, b ~ c by near-duplicate text, c on the test day: all three are test.
    df["group_id"] = None
    df.loc[[3, 45], "group_id"] = "g"
    df.loc[45, "text"] = "chain link"
    df.loc[len(df) - 2, "text"] = "CHAIN-link"
    split = assign_splits(df, "text", 1, 0.2, 0.2, 0, 4)
    assert split[3] == split[45] == split[len(df) - 2] == "test"


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 1000), st.floats(0.05, 0.3), st.floats(0.05, 0.3))
def test_stratified_fractions_property(seed: int, val: float, cal: float) -> None:
    df = _frame(n_days=5, per_day=60)
    split = assign_splits(df, "text", 1, val, cal, seed, 4)
    assert (split[df["dt"] == "2026-11-05"] == "test").all() and (split[df["dt"] != "2026-11-05"] != "test").all()
    rest = pd.DataFrame({"label": df["label"], "split": split})[split != "test"]
    for _, g in rest.groupby("label"):  # singletons: each label's share is within one row of the target
        share = g["split"].value_counts()
        assert abs(share.get("validation", 0) - val * len(g)) <= 1
        assert abs(share.get("calibration", 0) - cal * len(g)) <= 1


def test_image_near_duplicates_and_groups_never_straddle(tmp_path: Path) -> None:
    from PIL import Image, ImageFilter

    spec = image_spec(tmp_path.as_uri(), validation_fraction=0.2, calibration_fraction=0.2)
    for d in range(1, 5):
        day = date(2026, 11, d)
        n = 20
        imgs = [png(distinct_image(100 * d + i)) for i in range(n)]
        if d == 4:  # a blurred, rescaled copy of a Nov 1 image on the test day
            src = Image.fromarray(distinct_image(101).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
            imgs[0] = png(np.asarray(src.resize((40, 40)), dtype=np.float64))
        put(spec, day, pd.DataFrame({
            "example_id": [f"{d}-{i}" for i in range(n)], "label": [str(i % 10) for i in range(n)],
            "labeled_at": [datetime(2026, 11, d, 8)] * n, "scanner": ["fax", "phone"] * (n // 2), "image": imgs,
            "group_id": [f"g{d}-{i // 2}" for i in range(n)]}))
    ctx = RunContext.open(spec, "img")
    _split(ctx)
    ex = examples(ctx).set_index("example_id")
    assert ex.loc["1-1", "split"] == ex.loc["4-0", "split"] == "test"
    assert ex.loc["1-0", "split"] == "test"  # 1-0 shares a group with 1-1
    assert all(g["split"].nunique() == 1 for _, g in ex.groupby("group_id"))
    assert isinstance(ex.loc["1-2", "image"], bytes)


def test_empty_split_and_missing_audit_are_errors(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    put(spec, D4, text_rows(D4, n=30))
    ctx = RunContext.open(spec, "one-day")
    run_snapshot(ctx, D4)
    with pytest.raises(DataError, match=r"no audit/report.json / audit/quarantine.parquet; run `tl audit`"):
        run_split(ctx)
    run_audit(ctx)
    with pytest.raises(DataError, match=r"split\(s\) \['train', 'validation', 'calibration'\] would be empty .* "
                                        r"over 1 days; data.test_days 1"):
        run_split(ctx)


def _uri_days(spec: ModelSpec) -> ObjectStore:
    """Four days of 20 distinct images under the data root, referenced by image_uri (example ids d-i)."""
    data = open_store(spec.data.root)
    for d in range(1, 5):
        day = date(2026, 11, d)
        uris = []
        for i in range(20):
            data.put_bytes(f"images/{d}-{i}.png", png(distinct_image(100 * d + i)))
            uris.append(data.url(f"images/{d}-{i}.png"))
        put(spec, day, image_frame(day, uris, prefix=str(d), column="image_uri"))
    return data


def test_image_outside_the_root_never_reaches_a_split(tmp_path: Path) -> None:
    spec = image_spec(tmp_path.as_uri(), column="image_uri", validation_fraction=0.2, calibration_fraction=0.2)
    _uri_days(spec)
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(png(distinct_image(7)))
    put(spec, D4, image_frame(D4, [outside.as_uri()], prefix="x", column="image_uri"), "part-1.parquet")
    ctx = RunContext.open(spec, "out")
    _split(ctx)
    ex = examples(ctx)
    assert "x-0" not in set(ex["example_id"]) and len(ex) == 80
    assert set(ex["split"]) == set(SPLITS)


def test_split_verifies_images_against_the_snapshot(store_uri: str) -> None:
    spec = image_spec(store_uri, column="image_uri", validation_fraction=0.2, calibration_fraction=0.2)
    data = _uri_days(spec)
    ctx = RunContext.open(spec, "v")
    _split(ctx)
    ex = examples(ctx).set_index("example_id")
    assert ex.loc["2-3", "image_sha256"] == hashlib.sha256(data.get_bytes("images/2-3.png")).hexdigest()
    data.put_bytes("images/2-3.png", png(distinct_image(999)))  # changed after the audit read it
    with pytest.raises(DataError, match=r"example '2-3' \(digits/dt=2026-11-02/part-0.parquet row 3\): image "
                                        r".*/images/2-3.png changed after the snapshot"):
        run_split(ctx)
