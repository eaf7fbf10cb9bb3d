"""Label issues on real Debian package descriptions (labelled by Section): planted noise in one slice is named,
clean data raises no blocking finding; the check runs on the frozen MiniLM embeddings before any training."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data_fixtures import descriptions_spec, put_days, real_frame
from tl_core.artifacts import LabelIssues
from tl_core.config import ModelSpec
from tl_core.data.audit import run_audit
from tl_core.data.label_issues import find_label_issues
from tl_core.data.snapshot import run_snapshot
from tl_core.data.split import run_split
from tl_core.errors import BlockingAuditFinding, DataError
from tl_core.runs import RunContext
from tl_core.train.label_check import drop_quarantined, ensure_label_issues, frozen_embeddings

LAST = date(2026, 11, 8)
NOISY = "s2"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store for the module: the embedding cache fills once and every later run reads it."""
    return tmp_path_factory.mktemp("label-issues").as_uri()


def _planted(df: pd.DataFrame) -> pd.DataFrame:
    """The labels of every row of one shard permuted (seeded): most of them now name another Section."""
    out = df.copy()
    rows = out["shard"] == NOISY
    out.loc[rows, "label"] = np.random.default_rng(0).permutation(out.loc[rows, "label"].to_numpy())
    return out


def _split_run(root: str, run: str, df: pd.DataFrame, **data: object) -> RunContext:
    spec = descriptions_spec(root, dataset=run, **data)
    put_days(spec, df)
    ctx = RunContext.open(spec, run)
    run_snapshot(ctx, LAST)
    run_audit(ctx)
    run_split(ctx)
    return ctx


def test_clean_descriptions_raise_no_blocking_finding(root: str) -> None:
    ctx = _split_run(root, "clean", real_frame("debian_descriptions"))
    finding = ensure_label_issues(ctx)
    print(f"\nclean: {finding.message}")
    assert finding.severity == "info" and not finding.over_limit
    assert sorted(finding.per_slice) == ["shard=s0", "shard=s1", "shard=s2", "shard=s3"]
    assert set(finding.per_class) == set(ctx.spec.labels) and (finding.oof_accuracy or 0.0) > 0.6
    assert ctx.read(LabelIssues).message == finding.message
    assert ensure_label_issues(ctx) == ctx.read(LabelIssues)  # later train tasks read the same finding


def test_planted_noise_in_one_slice_is_named_and_blocks(root: str) -> None:
    df = real_frame("debian_descriptions")
    noisy = _planted(df)
    ctx = _split_run(root, "noisy", noisy)
    with pytest.raises(BlockingAuditFinding, match=rf"label_issues: .* over the limit .*: shard={NOISY} \d+\.\d% "
                                                   r"\(\d+ of \d+\) vs \d+\.\d% in the other rows \(Fisher p "
                                                   r".*data.label_issues 'block': the run stops before any "
                                                   r"fine-tuning"):
        ensure_label_issues(ctx)
    finding = ctx.read(LabelIssues)
    print(f"\nplanted: {finding.message}")
    assert finding.worst_slices[0] == f"shard={NOISY}" and len(finding.over_limit) == 1
    changed = set(noisy.loc[noisy["label"] != df["label"], "example_id"])
    top = finding.top_examples
    assert sum(t.example_id in changed for t in top) >= 0.8 * len(top)
    truth = df.set_index("example_id")["label"]
    assert sum(t.suspected == truth[t.example_id] for t in top) >= 0.6 * len(top)


def _variant(spec: ModelSpec, policy: str) -> ModelSpec:
    return spec.model_copy(update={"data": spec.data.model_copy(update={"label_issues": policy})})


def test_quarantine_keeps_flagged_rows_of_the_slice_out_of_train_and_warn_only_reports(root: str) -> None:
    ctx = _split_run(root, "policy", _planted(real_frame("debian_descriptions")))
    rows = ctx.read_examples()
    rows = rows[rows["split"] != "test"].reset_index(drop=True)
    feats = frozen_embeddings(ctx, rows)  # all cached by the earlier runs of this module
    quarantine = find_label_issues(rows, feats, _variant(ctx.spec, "quarantine"))
    assert quarantine.severity == "warning" and quarantine.quarantined_ids
    shard = rows.set_index("example_id")["shard"]
    assert {shard[i] for i in quarantine.quarantined_ids} == {NOISY}
    train = rows[rows["split"] == "train"]
    kept = drop_quarantined(train, quarantine)
    assert len(kept) < len(train) and not set(kept["example_id"]) & set(quarantine.quarantined_ids)
    warn = find_label_issues(rows, feats, _variant(ctx.spec, "warn"))
    assert warn.severity == "warning" and warn.quarantined_ids == [] and drop_quarantined(train, warn) is train
    assert warn.message.endswith("data.label_issues 'warn': reported only")


def test_label_issues_need_a_split(tmp_path: Path) -> None:
    spec = descriptions_spec(tmp_path.as_uri())
    with pytest.raises(DataError, match=r"split/examples.parquet is missing; run `tl split` first"):
        ensure_label_issues(RunContext.open(spec, "no-split"))
