"""`tl audit`, `tl split` and `tl label-issues` print their findings at a glance (real Tango icons)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_fixtures import icon_spec, put_days, real_frame
from tl_core.cli import main


def _icons(tmp_path: Path, **data: object) -> str:
    spec = icon_spec(tmp_path.as_uri(), **data)
    df = real_frame("tango_icons")
    if data.get("max_unknown_label_fraction") == 0.0:
        df.loc[df.index[:5], "label"] = "wallpapers"  # not in the label set: blocking above 0%
    put_days(spec, df)
    path = tmp_path / "icons.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
    return str(path)


def test_audit_and_split_print_findings_at_a_glance(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _icons(tmp_path)
    assert main(["snapshot", "--spec", spec, "--run", "r", "--date", "2026-11-10"]) == 0
    capsys.readouterr()
    assert main(["audit", "--spec", spec, "--run", "r"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("audit/report.json: 333 usable of 333 rows, 0 quarantined; 0 blocking, 1 warning(s)")
    assert lines[1].startswith("  clusters: 10 near-duplicate (largest 3, e.g. ['status/audio-volume-")
    assert "straddle the test days (largest 6, 6 earlier rows go to test)" in lines[1]
    assert lines[2].startswith("  [warning] duplicates_straddle_test: ")  # worst first
    assert main(["split", "--spec", spec, "--run", "r"]) == 0
    out = capsys.readouterr().out
    assert "test 84 (25.2% vs 23.4% asked)" in out and "calibration " in out


def test_blocking_audit_still_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = _icons(tmp_path, max_unknown_label_fraction=0.0)
    assert main(["snapshot", "--spec", spec, "--run", "r", "--date", "2026-11-10"]) == 0
    capsys.readouterr()
    assert main(["audit", "--spec", spec, "--run", "r"]) == 1
    got = capsys.readouterr()
    assert "328 usable of 333 rows, 5 quarantined; 1 blocking" in got.out
    assert "  [blocking] unknown_label: 5 rows (1.50%) have labels outside the label set" in got.out
    assert "tl audit: error: run r: blocking data audit findings" in got.err
