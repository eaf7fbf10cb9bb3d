"""Audit: every finding with a small crafted partition, quarantined and blocking outcomes, label shift."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.stats import chi2_contingency

from data_fixtures import (
    LABELS,
    base,
    distinct_image,
    examples,
    finding,
    image_frame,
    image_spec,
    png,
    put,
    put_table,
    quarantine,
    strict_json,
    text_rows,
    text_spec,
)
from tl_core.artifacts import AuditReport, SnapshotManifest
from tl_core.config import ModelSpec
from tl_core.data.audit import label_shift, run_audit
from tl_core.data.partitions import MAX_IMAGE_PIXELS, confine_image_uri
from tl_core.data.snapshot import read_image_hashes, run_snapshot
from tl_core.data.split import run_split
from tl_core.errors import BlockingAuditFinding, DataError, UnsafeImageUri
from tl_core.runs import RunContext
from tl_core.store import open_store

D4 = date(2026, 11, 4)


def _audit(spec: ModelSpec, run: str = "r", day: date = D4) -> tuple[RunContext, dict[str, Any]]:
    ctx = RunContext.open(spec, run)
    run_snapshot(ctx, day)
    run_audit(ctx)
    return ctx, ctx.read(AuditReport).model_dump(mode="json")


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
    report = ctx.read(AuditReport).model_dump(mode="json")  # written before stopping
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
    prev = RunContext.open(spec, "prev").read(SnapshotManifest).rows_per_label
    a = np.array([current[k] for k in spec.labels], float)
    b = np.array([prev[k] for k in spec.labels], float)
    assert shift["tvd"] == pytest.approx(0.5 * np.abs(a / a.sum() - b / b.sum()).sum())
    assert shift["p_value"] == pytest.approx(chi2_contingency(np.stack([a, b]), correction=False)[1])
    assert shift["flagged"] and finding(report, "label_shift")["severity"] == "warning"
    same = label_shift(spec.labels, {"billing": 10, "login": 10, "shipping": 10}, {"billing": 20, "login": 20,
                                                                                    "shipping": 20})
    assert same["tvd"] == pytest.approx(0.0) and same["p_value"] == pytest.approx(1.0)


def test_label_shift_is_against_the_champion_per_class_and_slice(tmp_path: Path) -> None:
    from registry_fixtures import MODEL, evidence_of, fake_run
    from tl_core.registry import Registry

    spec = text_spec(tmp_path.as_uri()).model_copy(update={"name": MODEL})
    base(spec)
    champion_run = RunContext.open(spec, "champ-run")
    run_snapshot(champion_run, D4)
    run_audit(champion_run)  # its report keeps class and slice x label counts
    reg = Registry.for_spec(spec)
    version = reg.register(fake_run(spec.store, "champ-run"))
    reg.promote(version, None, {"approver": "t"}, "t", "first model", evidence_of("champ-run"))
    put(spec, D4, text_rows(D4, n=40, prefix="s-", label="billing", region="eu"), "part-1.parquet")  # same date
    _, report = _audit(spec, run="now")
    shift = report["label_shift"]
    assert shift["champion_version"] == version and shift["previous_run"] == "champ-run"
    assert shift["flagged"] and shift["flagged_slices"] == ["region=eu"]
    assert shift["per_slice"]["region=eu"]["tvd"] > 0.3 and not shift["per_slice"]["region=us"]["flagged"]
    message = finding(report, "label_shift")["message"]
    assert message.startswith(f"label distribution vs the champion {version} (run champ-run, 2026-11-04): TVD")
    assert "per slice: region=eu TVD" in message


def test_no_previous_snapshot_is_info(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    _, report = _audit(spec)
    assert report["label_shift"] is None and finding(report, "label_shift")["severity"] == "info"
    assert finding(report, "label_shift")["message"] == ("no champion and no earlier snapshot of this model to "
                                                         "compare with")
    assert finding(report, "slice_sizes")["sizes"] == {"region=eu": 24, "region=us": 24}


def test_small_test_slices_are_reported(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), slice_crosses=[])
    spec = spec.model_copy(update={"gate": spec.gate.model_copy(update={"min_slice_size": 7})})
    base(spec)
    _, report = _audit(spec)
    f = finding(report, "slice_sizes")
    assert f["severity"] == "warning" and f["test_sizes"] == {"region=eu": 6, "region=us": 6} and f["count"] == 2


def test_image_findings_zero_size_undecodable_and_near_duplicates(tmp_path: Path) -> None:
    from PIL import Image, ImageFilter

    spec = image_spec(tmp_path.as_uri())
    good = [png(distinct_image(i)) for i in range(20)]
    blurred = Image.fromarray(distinct_image(3).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    images: list[bytes | str] = [*good, png(np.asarray(blurred.resize((40, 40)), dtype=np.float64)), b"",
                                 b"\x89PNG\r\n\x1a\n truncated", good[5]]
    put(spec, date(2026, 11, 3), image_frame(date(2026, 11, 3), images[:12], "a"))
    put(spec, D4, image_frame(D4, images[12:], "b"))
    ctx, report = _audit(spec)
    assert finding(report, "zero_size_image")["example_ids"] == ["b-9"]
    assert finding(report, "undecodable_image")["example_ids"] == ["b-10"]
    assert finding(report, "exact_duplicates")["count"] == 2  # a-5 and b-11
    assert sorted(finding(report, "near_duplicates")["example_ids"]) == ["a-3", "b-8"]
    assert finding(report, "duplicates_straddle_test")["clusters"] == 2
    assert sorted(quarantine(ctx)["reason"]) == ["undecodable image", "zero-size image"]


def _uri_images(spec: ModelSpec, n: int = 12) -> tuple[Any, list[str]]:
    """n distinct PNGs under the data root (images/img-i.png) and their URIs."""
    data = open_store(spec.data.root)
    uris = []
    for i in range(n):
        data.put_bytes(f"images/img-{i}.png", png(distinct_image(i)))
        uris.append(data.url(f"images/img-{i}.png"))
    return data, uris


def test_image_uri_unreadable_and_fetched_content(store_uri: str) -> None:
    spec = image_spec(store_uri, column="image_uri")
    data, uris = _uri_images(spec)
    data.put_bytes("images/broken.png", b"garbage")
    data.put_bytes("images/empty.png", b"")
    put(spec, D4, image_frame(D4, [*uris, data.url("images/missing.png"), data.url("images/broken.png"),
                                   data.url("images/empty.png"), uris[0]], column="image_uri"))
    _, report = _audit(spec)
    assert finding(report, "unreadable_image")["example_ids"] == ["i-12"]
    assert finding(report, "undecodable_image")["example_ids"] == ["i-13"]
    assert finding(report, "zero_size_image")["example_ids"] == ["i-14"]
    assert finding(report, "exact_duplicates")["count"] == 2  # same object content, i-0 and i-15


def test_image_uri_outside_the_data_root_is_quarantined_unread(store_uri: str) -> None:
    spec = image_spec(store_uri, column="image_uri")
    data, uris = _uri_images(spec)
    outside = open_store(store_uri + "/outside")  # a sibling of the data root, holding a valid image
    outside.put_bytes("img.png", png(distinct_image(99)))
    root = spec.data.root
    refused = [outside.url("img.png"), "file:///etc/passwd", "images/img-0.png", f"{root}/images/../../outside/img.png",
               f"{root}/images/./img-1.png", "http://example.com/x.png", f"{root}/images/img-2.png?x=1",
               f"{root}/images//img-3.png"]
    put(spec, D4, image_frame(D4, [*uris, *refused], column="image_uri"))
    ctx, report = _audit(spec)
    f = finding(report, "image_uri_outside_root")
    assert f["severity"] == "warning" and f["count"] == len(refused) and f["values"] == refused
    assert f["example_ids"] == [f"i-{12 + i}" for i in range(5)] and root in f["message"]
    q = quarantine(ctx)
    assert set(q["example_id"]) == {f"i-{12 + i}" for i in range(len(refused))}
    assert set(q["reason"]) == {"image_uri outside the data root"}
    images = read_image_hashes(ctx, ctx.read(SnapshotManifest))
    assert sorted(images) == sorted(uris)  # nothing outside the root was read or listed


def test_image_uri_symlink_out_of_the_data_root_is_refused(tmp_path: Path) -> None:
    spec = image_spec(tmp_path.as_uri(), column="image_uri")
    data, uris = _uri_images(spec)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(distinct_image(50)))
    link = tmp_path / "data" / "images" / "link.png"
    link.symlink_to(secret)
    put(spec, D4, image_frame(D4, [*uris, link.as_uri()], column="image_uri"))
    ctx, report = _audit(spec)
    assert finding(report, "image_uri_outside_root")["example_ids"] == ["i-12"]
    assert list(quarantine(ctx)["reason"]) == ["image_uri outside the data root"]


def test_image_changed_after_the_snapshot_is_refused_naming_example_and_uri(store_uri: str) -> None:
    spec = image_spec(store_uri, column="image_uri")
    data, uris = _uri_images(spec)
    put(spec, D4, image_frame(D4, uris, column="image_uri"))
    ctx = RunContext.open(spec, "r")
    run_snapshot(ctx, D4)
    data.put_bytes("images/img-3.png", png(distinct_image(77)))
    with pytest.raises(DataError, match=r"example 'i-3' \(digits/dt=2026-11-04/part-0.parquet row 3\): image "
                                        r".*images/img-3.png changed after the snapshot"):
        run_audit(ctx)
    data.delete("images/img-3.png")
    with pytest.raises(DataError, match=r"example 'i-3' .*img-3.png changed after the snapshot \(sha256 nothing"):
        run_audit(ctx)


def test_oversized_image_is_quarantined_from_its_header_without_decoding(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image, ImageFile

    buf = io.BytesIO()
    Image.new("1", (11_000, 11_000)).save(buf, format="PNG")  # 121 megapixels, a few kB on disk
    spec = image_spec(tmp_path.as_uri())
    good = [png(distinct_image(i)) for i in range(12)]
    put(spec, D4, image_frame(D4, [*good, buf.getvalue()]))
    loaded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load

    def spy(self: Any) -> Any:
        loaded.append(self.size)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", spy)
    ctx, report = _audit(spec)
    f = finding(report, "oversized_image")
    assert f["example_ids"] == ["i-12"] and f["max_pixels"] == MAX_IMAGE_PIXELS == 50_000_000
    assert list(quarantine(ctx)["reason"]) == ["image above the pixel limit"]
    assert (11_000, 11_000) not in loaded and len(loaded) >= 12


def _invalid_utf8_table(day: date) -> pa.Table:
    df = text_rows(day, n=6, prefix="u-")
    table = pa.Table.from_pandas(df, preserve_index=False)
    text = [t.encode() for t in df["text"]]
    text[1] = b"caf\xe9 \xff broken"
    labels = [v.encode() for v in df["label"]]
    labels[4] = b"bill\xffing"
    for name, values in (("text", text), ("label", labels)):
        table = table.set_column(table.schema.get_field_index(name), name,
                                 pa.array(values, pa.binary()).view(pa.string()))
    return table


def test_invalid_utf8_rows_are_quarantined_naming_file_column_and_rows(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    put_table(spec, D4, _invalid_utf8_table(D4), "part-1.parquet")
    ctx, report = _audit(spec)
    f = finding(report, "invalid_utf8")
    assert f["severity"] == "warning" and f["count"] == 2 and f["columns"] == ["label", "text"]
    assert f["rows"] == [{"partition": "t/dt=2026-11-04/part-1.parquet", "row_in_file": 1},
                         {"partition": "t/dt=2026-11-04/part-1.parquet", "row_in_file": 4}]
    assert f["example_ids"] == ["u-1104-1", "u-1104-4"]
    q = quarantine(ctx)
    assert list(q["example_id"]) == ["u-1104-1", "u-1104-4"] and "\ufffd" in q["text"].iloc[0]
    assert list(q["reason"]) == ["invalid UTF-8", "invalid UTF-8; label not in the spec's label set"]
    run_split(ctx)
    assert not {"u-1104-1", "u-1104-4"} & set(examples(ctx)["example_id"])


def test_null_example_ids_are_quarantined_and_the_report_is_strict_json(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    df = text_rows(D4, n=5, prefix="n-")
    df["example_id"] = pd.Series([None, None, "", "n-3", "n-4"], dtype=object)
    put(spec, D4, df, "part-1.parquet")
    ctx, _ = _audit(spec)
    report = strict_json(ctx.store.get_bytes(ctx.key("audit/report.json")))
    f = finding(report, "missing_example_id")
    assert f["count"] == 3 and f["severity"] == "warning" and f["example_ids"] == [None, None, ""]
    assert [r["row_in_file"] for r in f["rows"]] == [0, 1, 2]
    assert finding(report, "duplicate_example_id")["count"] == 0
    assert report["quarantine_reasons"] == {"missing example_id": 3}
    run_split(ctx)
    ex = examples(ctx)
    assert len(ex) == 50 and ex["example_id"].notna().all() and "n-3" in set(ex["example_id"])
    strict_json(ctx.store.get_bytes(ctx.key("split/split.json")))


def test_timezone_aware_labeled_at_in_one_partition_is_converted_to_utc(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    df = text_rows(D4, n=3, prefix="z-")
    df["labeled_at"] = pd.to_datetime(df["labeled_at"]).dt.tz_localize("Europe/Berlin")  # 10:0x CET = 09:0x UTC
    df.loc[0, "example_id"] = "1101-0"  # repeats a naive Nov 1 id: the comparison needs one time scale
    put(spec, D4, df, "part-1.parquet")
    ctx, report = _audit(spec)
    f = finding(report, "labeled_at_timezone")
    assert f["severity"] == "warning" and f["timezones"] == ["Europe/Berlin"] and f["count"] == 3
    assert f["partitions"] == [{"partition": "t/dt=2026-11-04/part-1.parquet", "count": 3}]
    assert finding(report, "duplicate_example_id")["count"] == 1
    run_split(ctx)
    ex = examples(ctx).set_index("example_id")
    assert ex.loc["z-1104-1", "labeled_at"] == pd.Timestamp("2026-11-04 09:01")


def test_missing_labeled_at_is_quarantined(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    df = text_rows(D4, n=3, prefix="t-")
    df["labeled_at"] = pd.Series([pd.NaT, *df["labeled_at"][1:]], dtype="datetime64[us]")
    put(spec, D4, df, "part-1.parquet")
    ctx, report = _audit(spec)
    f = finding(report, "missing_labeled_at")
    assert f["count"] == 1 and f["example_ids"] == ["t-1104-0"] and f["severity"] == "warning"
    assert list(quarantine(ctx)["reason"]) == ["missing labeled_at"]


def test_categorical_label_column_is_accepted(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    for d in (1, 2, 3, 4):
        df = text_rows(date(2026, 11, d))
        df["label"] = df["label"].astype(pd.CategoricalDtype(["shipping", "login", "billing"]))
        df["region"] = df["region"].astype("category")
        put(spec, date(2026, 11, d), df)
    ctx, report = _audit(spec)
    assert ctx.read(SnapshotManifest).rows_per_label == {"billing": 16, "login": 16, "shipping": 16}
    assert report["class_counts"] == {"billing": 16, "login": 16, "shipping": 16} and report["usable_rows"] == 48
    run_split(ctx)
    assert examples(ctx)["label"].astype(str).isin(LABELS).all()


@pytest.mark.parametrize("uri", ["file:///srv/my%20data/images/a.png",  # Path.as_uri() percent-encodes
                                 "file:///srv/my data/images/a.png"])
def test_confine_image_uri_accepts_encoded_and_plain_paths(uri: str) -> None:
    assert confine_image_uri(uri, "file:///srv/my data") == "images/a.png"


@pytest.mark.parametrize(("uri", "why"), [
    ("file:///srv/my%20data/images/%2e%2e/%2e%2e/etc/passwd", r"'\.', '\.\.' and empty"),
    ("file:///srv/my%20data/images/a%00.png", "control character"),
    ("file:///srv/my%20data", "names the data root itself"),
    ("file:///srv/my%20data2/a.png", "resolves outside the data root"),
    ("s3://bucket/my data/a.png", "expected a file:// URI"),
])
def test_confine_image_uri_decodes_before_it_checks(uri: str, why: str) -> None:
    with pytest.raises(UnsafeImageUri, match=rf"image_uri .* is not under the data root file:///srv/my data: .*{why}"):
        confine_image_uri(uri, "file:///srv/my data")
