"""Split: newest days are test, determinism, group-awareness, near-duplicates never straddle, stratification."""

from __future__ import annotations

import hashlib
import re
from datetime import date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_fixtures import (
    base,
    distinct_image,
    examples,
    icon_spec,
    image_frame,
    image_spec,
    png,
    put,
    put_days,
    real_frame,
    text_rows,
    text_spec,
)
from tl_core.artifacts import SplitCheck, SplitReport
from tl_core.config import ModelSpec
from tl_core.data.audit import run_audit
from tl_core.data.snapshot import run_snapshot
from tl_core.data.split import assign_splits, run_split
from tl_core.errors import BlockingAuditFinding, DataError
from tl_core.runs import SPLITS, RunContext
from tl_core.store import ObjectStore, open_store

D4 = date(2026, 11, 4)


def _split(ctx: RunContext) -> dict[str, object]:
    run_snapshot(ctx, D4)
    run_audit(ctx)
    run_split(ctx)
    out: dict[str, object] = ctx.read(SplitReport).model_dump(mode="json")
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


def _icons_with_one_swallowing_cluster(tmp_path: Path, **data: object) -> tuple[RunContext, list[str]]:
    """The real icon fixture where one test-day icon's group_id is also given to a third of the earlier rows."""
    df = real_frame("tango_icons")
    test_icon = df.loc[df["dt"] == df["dt"].max(), "group_id"].iloc[0]
    earlier = df.index[df["dt"] < sorted(df["dt"].unique())[-2]]
    swallowed = earlier[::3]
    df.loc[swallowed, "group_id"] = test_icon
    spec = icon_spec(tmp_path.as_uri(), **data)
    put_days(spec, df)
    ctx = RunContext.open(spec, "swallow")
    run_snapshot(ctx, date(2026, 11, 10))
    run_audit(ctx)
    return ctx, sorted(df.loc[df["group_id"] == test_icon, "example_id"].tolist())


def test_a_cluster_pulled_into_test_refuses_the_split_naming_the_cluster(tmp_path: Path) -> None:
    ctx, members = _icons_with_one_swallowing_cluster(tmp_path)
    with pytest.raises(BlockingAuditFinding, match=rf"test_share: test holds \d+ of 333 rows \(\d+\.\d%\), the "
                                                   rf"newest data.test_days 2 days hold 23\.4%: \d+ duplicate/group "
                                                   rf"clusters .* the largest has {len(members)} rows, e.g. example "
                                                   rf"ids \[{re.escape(repr(members[0]))}.*data.split_tolerance 10%"):
        run_split(ctx)
    rep = ctx.read(SplitCheck).model_dump(mode="json")
    assert rep["pulled_into_test"]["largest_cluster"] == len(members) and rep["pulled_into_test"]["clusters"] >= 1
    assert rep["pulled_into_test"]["largest_cluster_ids"] == members[:5]
    assert not ctx.store.exists(ctx.key("split/examples.parquet"))  # fails closed: nothing for training to read


def test_split_tolerance_is_the_specs(tmp_path: Path) -> None:
    ctx, members = _icons_with_one_swallowing_cluster(tmp_path, split_tolerance=0.5)
    run_split(ctx)
    rep = ctx.read(SplitCheck).model_dump(mode="json")
    assert not rep["blocking"] and rep["pulled_into_test"]["largest_cluster"] == len(members)
    assert rep["achieved"]["test"]["share"] > rep["requested"]["test"] + 0.1
    assert ctx.read(SplitReport).model_dump(mode="json")["achieved"] == rep["achieved"]


def test_class_without_train_rows_and_missing_required_slice_refuse_the_split(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    spec = spec.model_copy(update={"gate": spec.gate.model_copy(update={"required_slices": ["region=apac"]})})
    for d in (1, 2, 3):
        put(spec, date(2026, 11, d), text_rows(date(2026, 11, d), 12, label=["billing", "login"] * 6))
    put(spec, D4, text_rows(D4, 12))  # shipping only on the test day
    ctx = RunContext.open(spec, "degenerate")
    run_snapshot(ctx, D4)
    run_audit(ctx)
    with pytest.raises(BlockingAuditFinding) as err:
        run_split(ctx)
    assert re.search(r"class_missing: class 'shipping' has no train rows \(4 usable rows: \{'train': 0, "
                     r"'validation': 0, 'calibration': 0, 'test': 4\}\)", str(err.value))
    assert "class 'shipping' has no calibration rows" in str(err.value)
    assert re.search(r"required_slice_missing: gate.required_slices names 'region=apac', which has no test rows "
                     r"\(12 test rows\)", str(err.value))
    per_class = ctx.read(SplitCheck).model_dump(mode="json")["per_class"]
    assert per_class["shipping"] == {"train": 0, "validation": 0, "calibration": 0, "test": 4}
