"""Snapshot of a run whose own logical date has no data file (issue 29.12): data.missing_day warn / fail."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from data_fixtures import base, text_spec
from tl_core.artifacts import SnapshotManifest
from tl_core.data.partitions import mark_complete
from tl_core.data.snapshot import run_snapshot
from tl_core.errors import DataError
from tl_core.runs import RunContext

DAY = date(2026, 11, 5)  # base() writes Nov 1 .. Nov 4; the window of Nov 5 (3 days) is [Nov 2, Nov 5]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelname == "WARNING" and r.name == "tl_core.data.snapshot" and "2026-11-05" in r.getMessage()]


def test_marker_without_a_data_file_warns_and_is_recorded(store_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    spec = text_spec(store_uri)
    base(spec)
    mark_complete(spec, DAY)  # the writer says the day is done, but wrote no parquet file
    ctx = RunContext.open(spec, "m")
    with caplog.at_level("WARNING", logger="tl_core.data.snapshot"):
        run_snapshot(ctx, DAY)
    manifest = ctx.read(SnapshotManifest)
    assert manifest.missing_day == "2026-11-05"
    assert [p.dt for p in manifest.partitions] == ["2026-11-02", "2026-11-03", "2026-11-04"]
    (message,) = _warnings(caplog)
    assert f"{spec.data.root}/t/dt=2026-11-05" in message
    assert "completion marker '_SUCCESS' but no .parquet file" in message
    assert "data.missing_day" in message


def test_missing_folder_warns_and_is_recorded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    ctx = RunContext.open(spec, "f")
    with caplog.at_level("WARNING", logger="tl_core.data.snapshot"):
        run_snapshot(ctx, DAY)
    assert ctx.read(SnapshotManifest).missing_day == "2026-11-05"
    (message,) = _warnings(caplog)
    assert f"{spec.data.root}/t/dt=2026-11-05" in message and "no such folder" in message


def test_a_day_with_data_records_no_missing_day(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = text_spec(tmp_path.as_uri())
    base(spec)
    ctx = RunContext.open(spec, "d")
    with caplog.at_level("WARNING", logger="tl_core.data.snapshot"):
        run_snapshot(ctx, date(2026, 11, 4))
    assert ctx.read(SnapshotManifest).missing_day is None
    assert not [r for r in caplog.records if "missing_day" in r.getMessage()]
    assert '"missing_day": null' in ctx.store.get_bytes(ctx.key("snapshot/manifest.json")).decode()


@pytest.mark.parametrize("marker", [True, False])
def test_fail_refuses_naming_the_day_the_folder_and_the_setting(store_uri: str, marker: bool) -> None:
    spec = text_spec(store_uri, missing_day="fail")
    base(spec)
    if marker:
        mark_complete(spec, DAY)
    ctx = RunContext.open(spec, "x")
    with pytest.raises(DataError, match=rf"logical date 2026-11-05 has no data: {spec.data.root}/t/dt=2026-11-05 "
                                        r".*data\.missing_day: fail"):
        run_snapshot(ctx, DAY)
    assert not ctx.store.exists(ctx.key("snapshot/manifest.json"))
