"""Snapshot: window, manifest contents, byte-for-byte determinism, late partitions, errors (file:// and s3://)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from data_fixtures import base, distinct_image, image_frame, image_spec, png, put, text_rows, text_spec
from tl_core.artifacts import AuditReport, ImageList, SnapshotManifest, parse_artifact
from tl_core.data.audit import run_audit
from tl_core.data.partitions import mark_complete
from tl_core.data.snapshot import run_snapshot
from tl_core.errors import BlockingAuditFinding, DataError, IncompletePartition
from tl_core.runs import RunContext
from tl_core.store import open_store


def test_manifest_window_counts_hashes_and_determinism(store_uri: str) -> None:
    spec = text_spec(store_uri)
    base(spec)
    put(spec, date(2026, 10, 20), text_rows(date(2026, 10, 20)))  # outside the window
    a = RunContext.open(spec, "a")
    uri = run_snapshot(a, date(2026, 11, 4))
    assert uri == a.uri("snapshot/manifest.json")
    m = a.read(SnapshotManifest).model_dump(mode="json")
    # window_days=3: [Nov 1, Nov 4] inclusive.
    assert m["window"] == {"start": "2026-11-01", "end": "2026-11-04"}
    assert [p["dt"] for p in m["partitions"]] == ["2026-11-01", "2026-11-02", "2026-11-03", "2026-11-04"]
    assert m["total_rows"] == 48 and m["rows_per_label"] == {"billing": 16, "login": 16, "shipping": 16}
    assert all(p["rows"] == 12 and p["rows_per_label"] == {"billing": 4, "login": 4, "shipping": 4}
               for p in m["partitions"])
    data = open_store(spec.data.root)
    for p in m["partitions"]:
        (f,) = p["files"]
        assert f["sha256"] == hashlib.sha256(data.get_bytes(f["key"])).hexdigest()
    assert m["spec_fingerprint"] == spec.fingerprint() and m["logical_date"] == "2026-11-04"
    assert "created" not in json.dumps(m)
    b = RunContext.open(spec, "b")
    run_snapshot(b, date(2026, 11, 4))
    assert b.store.get_bytes(b.key("snapshot/manifest.json")) == a.store.get_bytes(a.key("snapshot/manifest.json"))
    run_snapshot(a, date(2026, 11, 4))  # an identical re-run of the same run is a no-op


def test_late_partitions_only_in_runs_covering_them(store_uri: str) -> None:
    spec = text_spec(store_uri)
    base(spec)
    a = RunContext.open(spec, "a")
    run_snapshot(a, date(2026, 11, 4))
    first = a.read(SnapshotManifest).model_dump(mode="json")
    # Late labels for Nov 2 land after run a.
    put(spec, date(2026, 11, 2), text_rows(date(2026, 11, 2), n=5, prefix="late-"), "part-1.parquet")
    c = RunContext.open(spec, "c")
    run_snapshot(c, date(2026, 11, 4))
    later = c.read(SnapshotManifest).model_dump(mode="json")
    assert later["content_hash"] != first["content_hash"] and later["total_rows"] == 53
    assert [len(p["files"]) for p in later["partitions"]] == [1, 2, 1, 1]
    # run a keeps its snapshot; re-snapshotting it with the new data is refused
    with pytest.raises(DataError, match="already has a snapshot with content hash .* start a new run"):
        run_snapshot(a, date(2026, 11, 4))
    assert a.read(SnapshotManifest).model_dump(mode="json") == first
    run_audit(a)  # the audit of run a reads only the files its manifest lists
    assert a.read(AuditReport).total_rows == 48
    # A run for Oct 31 (window [Oct 28, Oct 31]) covers none of it; one for Nov 1 does not see Nov 2.
    d = RunContext.open(spec, "d")
    run_snapshot(d, date(2026, 11, 1))
    assert [p["dt"] for p in d.read(SnapshotManifest).model_dump(mode="json")["partitions"]] == ["2026-11-01"]


def test_empty_window_blocks(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    with pytest.raises(BlockingAuditFinding, match=r"empty window: no partitions .*/t in \[2026-01-01, 2026-01-04\] "
                                                   r"\(window_days 3; the dataset has 4 partitions, 2026-11-01"):
        run_snapshot(RunContext.open(spec, "e"), date(2026, 1, 4))


@pytest.mark.parametrize(("mutate", "match"), [
    (lambda df: df.drop(columns=["region"]), r"dt=2026-12-01/part-0.parquet: missing column\(s\) \['region'\]"),
    (lambda df: df.assign(labeled_at="2026-12-01"), r"column 'labeled_at' must be timestamp, got (large_)?string"),
    (lambda df: df.assign(label=1), r"column 'label' must be string, got int64"),
    (lambda df: df.assign(text=b"x"), r"column 'text' must be string, got (large_)?binary"),
])
def test_schema_errors_name_file_column_and_types(tmp_path: Path, mutate: object, match: str) -> None:
    spec = text_spec(tmp_path.as_uri())
    put(spec, date(2026, 12, 1), mutate(text_rows(date(2026, 12, 1))))  # type: ignore[operator]
    with pytest.raises(DataError, match=match):
        run_snapshot(RunContext.open(spec, "f"), date(2026, 12, 1))


def test_unreadable_parquet_and_bad_dt_folder(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    store = open_store(spec.data.root)
    store.put_bytes("t/dt=2026-12-01/part-0.parquet", b"not parquet")
    store.put_bytes("t/dt=2026-12-01/_SUCCESS", b"")
    with pytest.raises(DataError, match=r"t/dt=2026-12-01/part-0.parquet: not a readable parquet file"):
        run_snapshot(RunContext.open(spec, "g"), date(2026, 12, 1))
    store.put_bytes("t/dt=2026-13-45/part-0.parquet", b"x")
    with pytest.raises(DataError, match=r"t/dt=2026-13-45: '2026-13-45' is not a valid date"):
        run_snapshot(RunContext.open(spec, "h"), date(2026, 12, 1))


def test_changed_partition_after_snapshot_is_refused_naming_the_file(store_uri: str) -> None:
    spec = text_spec(store_uri)
    base(spec)
    ctx = RunContext.open(spec, "r")
    run_snapshot(ctx, date(2026, 11, 4))
    put(spec, date(2026, 11, 3), text_rows(date(2026, 11, 3), prefix="x"))
    with pytest.raises(DataError, match=r"partition file t/dt=2026-11-03/part-0.parquet changed after the snapshot"):
        run_audit(ctx)


def test_null_labels_are_counted_as_missing(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    df = text_rows(date(2026, 11, 1))
    df["label"] = pd.Series([None] * 3 + list(df["label"][3:]), dtype=object)
    put(spec, date(2026, 11, 1), df)
    ctx = RunContext.open(spec, "n")
    run_snapshot(ctx, date(2026, 11, 1))
    assert ctx.read(SnapshotManifest).rows_per_label == {
        "<missing>": 3, "billing": 3, "login": 3, "shipping": 3}


def test_keys_that_are_not_partition_files_are_listed_as_ignored(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    store = open_store(spec.data.root)
    part = open_store(spec.data.root).get_bytes("t/dt=2026-11-01/part-0.parquet")
    for key in ("t/dt=2026-11-5/part-0.parquet", "t/dt=2026-11-03T00/part-0.parquet",
                "t/dt=2026-11-02/nested/part-0.parquet", "t/dt=2026-11-02/_started", "t/dt=2026-11-02/notes.txt",
                "t/readme.md", "t/dt=2026-10-01/sub/old.parquet"):
        store.put_bytes(key, part)
    ctx = RunContext.open(spec, "i")
    with caplog.at_level("WARNING", logger="tl_core.data.snapshot"):
        run_snapshot(ctx, date(2026, 11, 4))
    m = ctx.read(SnapshotManifest).model_dump(mode="json")
    assert m["total_rows"] == 48 and m["ignored_count"] == 6
    assert m["ignored"] == [  # listing order; the dt=2026-10-01 folder is outside the window
        {"key": "t/dt=2026-11-02/_started", "dt": "2026-11-02",
         "reason": "hidden or temporary file (name starts with '.' or '_')"},
        {"key": "t/dt=2026-11-02/nested/part-0.parquet", "dt": "2026-11-02",
         "reason": "nested below the dt= folder (only <dataset>/dt=YYYY-MM-DD/*.parquet is read)"},
        {"key": "t/dt=2026-11-02/notes.txt", "dt": "2026-11-02", "reason": "not a .parquet file"},
        {"key": "t/dt=2026-11-03T00/part-0.parquet", "dt": "",
         "reason": "folder name 'dt=2026-11-03T00' is not dt=YYYY-MM-DD"},
        {"key": "t/dt=2026-11-5/part-0.parquet", "dt": "", "reason": "folder name 'dt=2026-11-5' is not dt=YYYY-MM-DD"},
        {"key": "t/readme.md", "dt": "", "reason": "not inside a dt=YYYY-MM-DD folder"},
    ]
    (record,) = [r for r in caplog.records if "ignored 6 key(s)" in r.getMessage()]
    assert record.levelname == "WARNING" and "t/dt=2026-11-5/part-0.parquet (folder name" in record.getMessage()


def test_partition_without_its_completion_marker_is_refused(store_uri: str) -> None:
    """A partition in the window with data but no marker is refused, naming the partition and the marker; once
    the writer marks it complete the same snapshot goes through (the marker is not data: not listed as ignored)."""
    spec = text_spec(store_uri)
    base(spec)
    put(spec, date(2026, 11, 5), text_rows(date(2026, 11, 5)), complete=False)  # still being written
    folder = re.escape(f"{spec.data.root}/t/dt=2026-11-05")
    with pytest.raises(IncompletePartition, match=rf"^partition {folder} has 1 data file\(s\) but no completion "
                       rf"marker '_SUCCESS' \(expected {folder}/_SUCCESS, written last by the partition's writer\): "
                       r".*set data.completion_marker: null if this dataset's writers do not write markers$"):
        run_snapshot(RunContext.open(spec, "early"), date(2026, 11, 5))
    # an older day of the window without its marker is refused too, and every unmarked day is counted
    open_store(spec.data.root).delete("t/dt=2026-11-03/_SUCCESS")
    with pytest.raises(IncompletePartition, match=r"dt=2026-11-03 has 1 data file\(s\) .*\(and 1 more partition\(s\) "
                       r"of the window: 2026-11-05\)"):
        run_snapshot(RunContext.open(spec, "early"), date(2026, 11, 5))
    assert mark_complete(spec, date(2026, 11, 3)) == f"{spec.data.root}/t/dt=2026-11-03/_SUCCESS"
    mark_complete(spec, date(2026, 11, 5))
    ctx = RunContext.open(spec, "early")
    run_snapshot(ctx, date(2026, 11, 5))
    m = ctx.read(SnapshotManifest).model_dump(mode="json")
    assert [p["dt"] for p in m["partitions"]] == ["2026-11-02", "2026-11-03", "2026-11-04", "2026-11-05"]
    assert m["completion_marker"] == "_SUCCESS" and m["ignored"] == [] and m["ignored_count"] == 0


def test_markers_not_used_and_a_custom_marker_name(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), completion_marker=None)  # this dataset's writers write no markers
    put(spec, date(2026, 11, 1), text_rows(date(2026, 11, 1)))
    assert mark_complete(spec, date(2026, 11, 1)) is None
    assert not open_store(spec.data.root).exists("t/dt=2026-11-01/_SUCCESS")
    ctx = RunContext.open(spec, "n")
    run_snapshot(ctx, date(2026, 11, 1))
    assert ctx.read(SnapshotManifest).completion_marker is None
    done = text_spec(tmp_path.as_uri(), completion_marker="_DONE", dataset="d")
    put(done, date(2026, 11, 1), text_rows(date(2026, 11, 1)))
    open_store(done.data.root).put_bytes("d/dt=2026-11-02/part-0.parquet",
                                         open_store(done.data.root).get_bytes("d/dt=2026-11-01/part-0.parquet"))
    open_store(done.data.root).put_bytes("d/dt=2026-11-02/_SUCCESS", b"")  # not this dataset's marker
    with pytest.raises(IncompletePartition,
                       match=r"dt=2026-11-02 has 1 data file\(s\) but no completion marker '_DONE'"):
        run_snapshot(RunContext.open(done, "d"), date(2026, 11, 2))
    assert done.data.marker_uri("2026-11-02") == f"{done.data.root}/d/dt=2026-11-02/_DONE"
    assert spec.data.marker_uri("2026-11-02") is None


def test_empty_window_names_the_ignored_folders(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    put(spec, date(2026, 11, 1), text_rows(date(2026, 11, 1)))
    store = open_store(spec.data.root)
    store.put_bytes("t/dt=2026-12-5/part-0.parquet", store.get_bytes("t/dt=2026-11-01/part-0.parquet"))
    with pytest.raises(BlockingAuditFinding, match=r"empty window: .*the dataset has 1 partitions, 2026-11-01 .. "
                       r"2026-11-01; 1 key\(s\) ignored, e.g. t/dt=2026-12-5/part-0.parquet \(folder name "
                       r"'dt=2026-12-5' is not dt=YYYY-MM-DD\)\)"):
        run_snapshot(RunContext.open(spec, "w"), date(2026, 12, 5))


def test_image_bytes_are_in_the_content_hash(store_uri: str) -> None:
    spec = image_spec(store_uri, column="image_uri")
    data = open_store(spec.data.root)
    uris = []
    for i in range(4):
        data.put_bytes(f"images/img-{i}.png", png(distinct_image(i)))
        uris.append(data.url(f"images/img-{i}.png"))
    put(spec, date(2026, 11, 4), image_frame(date(2026, 11, 4), [*uris, uris[0], "file:///etc/passwd"],
                                             column="image_uri"))
    a = RunContext.open(spec, "a")
    run_snapshot(a, date(2026, 11, 4))
    first = a.read(SnapshotManifest).model_dump(mode="json")
    listed = parse_artifact(ImageList, a.store.get_bytes(a.key(first["images"]["key"])), "images").model_dump()
    assert listed == {"schema_version": 1, "images": {
        u: hashlib.sha256(data.get_bytes(f"images/img-{i}.png")).hexdigest() for i, u in enumerate(uris)}}
    assert first["images"]["count"] == 4 and first["images"]["unreadable"] == 0
    assert first["images"]["sha256"] == hashlib.sha256(a.store.get_bytes(a.key(first["images"]["key"]))).hexdigest()
    b = RunContext.open(spec, "b")
    run_snapshot(b, date(2026, 11, 4))  # same data, same manifest bytes
    assert b.store.get_bytes(b.key("snapshot/manifest.json")) == a.store.get_bytes(a.key("snapshot/manifest.json"))
    data.put_bytes("images/img-2.png", png(distinct_image(42)))  # the partition file is unchanged
    c = RunContext.open(spec, "c")
    run_snapshot(c, date(2026, 11, 4))
    assert c.read(SnapshotManifest).content_hash != first["content_hash"]
    with pytest.raises(DataError, match="already has a snapshot with content hash .* start a new run"):
        run_snapshot(a, date(2026, 11, 4))


def test_categorical_label_column_passes_the_schema_check(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri())
    df = text_rows(date(2026, 12, 1))
    df["label"] = df["label"].astype("category")
    put(spec, date(2026, 12, 1), df)
    ctx = RunContext.open(spec, "cat")
    run_snapshot(ctx, date(2026, 12, 1))
    assert ctx.read(SnapshotManifest).rows_per_label == {"billing": 4, "login": 4, "shipping": 4}
