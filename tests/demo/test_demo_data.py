"""Demo data (text + image) and the `tl demo-data / snapshot / audit / split` commands."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tl_core.cli import main
from tl_core.config import parse_spec
from tl_core.demo.data import write_demo_data
from tl_core.store import open_store

END = date(2026, 11, 14)


def _spec(path: str, tmp_path: Path) -> tuple[Path, object]:
    raw = yaml.safe_load(Path(path).read_text())
    raw["data"]["root"] = (tmp_path / "data").as_uri()
    raw["store"] = (tmp_path / "store").as_uri()
    spec_path = tmp_path / Path(path).name
    spec_path.write_text(yaml.safe_dump(raw))
    return spec_path, parse_spec(raw)


def _read(spec: object, uris: list[str]) -> pd.DataFrame:
    store = open_store(spec.data.root)  # type: ignore[attr-defined]
    days = [u.rsplit("/", 2)[1].replace("%3D", "=") for u in uris]
    keys = [f"{spec.data.dataset}/{d}/part-000.parquet" for d in days]  # type: ignore[attr-defined]
    return pd.concat([pd.read_parquet(io.BytesIO(store.get_bytes(k))) for k in keys], ignore_index=True)


def test_text_demo_noise_imbalance_drift_and_not_one_keyword(tmp_path: Path) -> None:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.tree import DecisionTreeClassifier

    _, spec = _spec("configs/support-tickets.yaml", tmp_path)
    uris = write_demo_data(spec, END, days=10, drift_from=date(2026, 11, 10))  # type: ignore[arg-type]
    assert len(uris) == 10 and uris[-1].endswith("2026-11-14/part-000.parquet")
    df = _read(spec, uris)
    assert len(df) == 1200 and df["example_id"].is_unique
    assert set(df["label"]) == set(spec.labels)  # type: ignore[attr-defined]
    assert set(df["channel"]) == {"email", "chat", "web"} and set(df["region"]) == {"eu", "us", "apac"}
    day = pd.to_datetime(df["labeled_at"]).dt.date.astype(str)
    assert (day == df["example_id"].str[2:10].map(lambda s: f"{s[:4]}-{s[4:6]}-{s[6:]}")).all()
    counts = df["label"].value_counts()
    assert counts.max() / counts.min() > 2  # imbalance
    drifted = pd.to_datetime(df["labeled_at"]).dt.date >= date(2026, 11, 10)
    assert not df.loc[~drifted, "text"].str.contains("novapay").any()
    assert df.loc[drifted, "text"].str.contains("novapay").mean() > 0.1
    before = df.loc[~drifted, "label"].value_counts(normalize=True)
    after = df.loc[drifted, "label"].value_counts(normalize=True)
    assert after["bug"] - before["bug"] > 0.05  # the class mix shifts
    # Not separable by one keyword: a depth-1 tree on word counts is far from perfect.
    x = CountVectorizer().fit_transform(df["text"])
    stump = DecisionTreeClassifier(max_depth=1, random_state=0).fit(x, df["label"])
    assert stump.score(x, df["label"]) < 0.5
    # Deterministic, and a day's rows do not depend on the range asked for.
    again = _read(spec, write_demo_data(spec, END, days=3, drift_from=date(2026, 11, 10)))  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(again, df.iloc[-360:].reset_index(drop=True))


def test_image_demo_scans_groups_and_fax_drift(tmp_path: Path) -> None:
    from PIL import Image

    _, spec = _spec("configs/digits.yaml", tmp_path)
    df = _read(spec, write_demo_data(spec, END, days=4, rows_per_day=80,  # type: ignore[arg-type]
                                     drift_from=date(2026, 11, 13)))
    assert len(df) == 320 and df["example_id"].is_unique and set(df["label"]) == {str(i) for i in range(10)}
    img = Image.open(io.BytesIO(df["image"][0]))
    assert img.format == "PNG" and img.size == (32, 32)
    sizes = df.groupby("group_id").size()
    assert sizes.max() == 2 and (sizes == 2).sum() > 20  # second crops share a group_id
    assert (df.groupby("group_id")["label"].nunique() == 1).all()
    assert set(df["scanner"]) == {"flatbed", "phone", "fax"} and set(df["site"]) == {"north", "south"}
    drifted = pd.to_datetime(df["labeled_at"]).dt.date >= date(2026, 11, 13)
    assert (df.loc[drifted, "scanner"] == "fax").mean() > (df.loc[~drifted, "scanner"] == "fax").mean() + 0.1
    # scanners differ measurably: fax scans are (nearly) black and white
    def grey_share(b: bytes) -> float:
        a = np.asarray(Image.open(io.BytesIO(b)))
        return float(((a > 40) & (a < 215)).mean())
    fax = df.loc[df["scanner"] == "fax", "image"].map(grey_share).mean()
    phone = df.loc[df["scanner"] == "phone", "image"].map(grey_share).mean()
    assert fax < phone


def test_cli_demo_snapshot_audit_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_path, _ = _spec("configs/support-tickets.yaml", tmp_path)
    s = str(spec_path)
    assert main(["demo-data", "--spec", s, "--end-date", "2026-11-14", "--days", "8", "--rows-per-day", "60",
                 "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["partitions"]) == 8
    assert main(["snapshot", "--spec", s, "--run", "cli", "--date", "2026-11-14", "--json"]) == 0
    snap = json.loads(capsys.readouterr().out)
    assert snap["rows"] == 480 and len(snap["content_hash"]) == 64
    assert main(["audit", "--spec", s, "--run", "cli"]) == 0
    assert "usable of 480 rows" in capsys.readouterr().out
    assert main(["split", "--spec", s, "--run", "cli", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)["counts"]
    assert sum(counts.values()) <= 480 and counts["test"] >= 3 * 50
    assert main(["snapshot", "--spec", s, "--run", "cli2", "--date", "2025-01-01"]) == 1
    assert "empty window" in capsys.readouterr().err
