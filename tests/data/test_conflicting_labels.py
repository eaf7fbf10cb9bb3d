"""One input under several labels (issue 29.16): the audit names the input and its labels, and a split refused
because of such a cluster says so and points at the audit, not at the window."""

from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from data_fixtures import distinct_image, finding, image_frame, image_spec, png, put, text_rows
from tl_core.artifacts import AuditReport, SplitCheck
from tl_core.config import ModelSpec, parse_spec
from tl_core.data.audit import run_audit
from tl_core.data.snapshot import run_snapshot
from tl_core.data.split import run_split
from tl_core.errors import BlockingAuditFinding, DataError
from tl_core.runs import RunContext

FIVE = ["a", "b", "c", "d", "e"]
SAME = "same input everywhere"
ADVICE = "fix the labels (see the audit's conflicting_labels)"


def _spec(uri: str) -> ModelSpec:
    return parse_spec({
        "name": "tickets", "modality": "text", "labels": FIVE,
        "backbone": {"library": "transformers", "name": "x", "weights": "none"},
        "data": {"root": uri + "/data", "dataset": "t", "window_days": 3, "slice_columns": ["region"],
                 "min_examples_per_class": 2, "test_days": 1, "max_unknown_label_fraction": 0.2},
        "gate": {"min_slice_size": 1}, "store": uri + "/store",
    })


def _run(tmp_path: Path, same: int, per_day: int, days: tuple[int, ...]) -> RunContext:
    """``per_day`` tickets a day, labels cycling a..e; the first ``same`` of each day share one text."""
    spec = _spec(tmp_path.as_uri())
    for d in days:
        day = date(2026, 11, d)
        df = text_rows(day, per_day, label=[FIVE[i % 5] for i in range(per_day)])
        df.loc[: same - 1, "text"] = SAME
        put(spec, day, df)
    ctx = RunContext.open(spec, "conflict")
    run_snapshot(ctx, date(2026, 11, max(days)))
    run_audit(ctx)
    return ctx


def test_audit_names_the_input_its_labels_and_example_ids(tmp_path: Path) -> None:
    ctx = _run(tmp_path, same=5, per_day=10, days=(3, 4))
    found: dict[str, Any] = finding(ctx.read(AuditReport).model_dump(mode="json"), "conflicting_labels")
    assert found["severity"] == "warning" and found["count"] == 10 and found["column"] == "text"
    (group,) = found["conflicts"]
    assert group == {"rows": 10, "labels": {"a": 2, "b": 2, "c": 2, "d": 2, "e": 2}, "input": repr(SAME),
                     "example_ids": ["1103-0", "1103-1", "1103-2", "1103-3", "1103-4"]}
    assert found["message"].startswith(
        f"1 input(s) carry more than one label (10 rows); the largest: 10 rows of one input carry 5 different "
        f"labels (a: 2, b: 2, c: 2, d: 2, e: 2; input {SAME!r}; example ids ['1103-0', ")
    exact = finding(ctx.read(AuditReport).model_dump(mode="json"), "exact_duplicates")
    assert exact["conflicting_label_groups"] == 1 and "see conflicting_labels" in exact["message"]


def test_empty_split_caused_by_the_cluster_blames_the_labels_not_the_window(tmp_path: Path) -> None:
    # 10 of the 12 rows of Nov 3 share the input of 10 rows of Nov 4 (the test day): the cluster goes to test and
    # leaves 2 rows; were its rows free, Nov 3 would fill validation and calibration
    ctx = _run(tmp_path, same=10, per_day=12, days=(3, 4))
    with pytest.raises(DataError) as err:
        run_split(ctx)
    message = str(err.value)
    assert re.search(r"split\(s\) \['validation', 'calibration'\] would be empty .*: 20 rows of one input carry 5 "
                     r"different labels \(a: 4, b: 4, c: 4, d: 4, e: 4; input 'same input everywhere'; example ids "
                     r"\['1103-0'.*\]\)", message)
    assert message.endswith(ADVICE) and "window" not in message


def test_degenerate_split_caused_by_the_cluster_blames_the_labels(tmp_path: Path) -> None:
    ctx = _run(tmp_path, same=10, per_day=12, days=(1, 2, 3, 4))
    with pytest.raises(BlockingAuditFinding) as err:
        run_split(ctx)
    blocking = ctx.read(SplitCheck).blocking
    assert blocking and all(m.endswith(ADVICE) for m in blocking), blocking
    assert blocking[0].startswith("test_share: ") and "40 rows of one input carry 5 different labels" in blocking[0]
    assert any(m.startswith("class_missing: class 'c' has no train rows") for m in blocking)
    assert "window_days" not in str(err.value) and "raise the tolerance" not in str(err.value)


def test_a_one_day_window_still_advises_the_window(tmp_path: Path) -> None:
    ctx = _run(tmp_path, same=5, per_day=10, days=(4,))  # every row is on the test day: the cluster is not why
    with pytest.raises(DataError, match=r"would be empty .*: widen data.window_days or lower data.test_days$"):
        run_split(ctx)


def test_image_conflict_names_the_image(tmp_path: Path) -> None:
    spec = image_spec(tmp_path.as_uri())
    same = png(distinct_image(7))
    for d in (3, 4):
        day = date(2026, 11, d)
        images = [same, same, same, *[png(distinct_image(100 * d + i)) for i in range(17)]]
        put(spec, day, image_frame(day, images, prefix=str(d)))
    ctx = RunContext.open(spec, "img")
    run_snapshot(ctx, date(2026, 11, 4))
    run_audit(ctx)
    found = finding(ctx.read(AuditReport).model_dump(mode="json"), "conflicting_labels")
    (group,) = found["conflicts"]
    assert group["rows"] == 6 and group["labels"] == {"0": 2, "1": 2, "2": 2}
    assert group["input"] == f"image of {len(same)} bytes, sha256 {hashlib.sha256(same).hexdigest()[:12]}"
    assert group["example_ids"] == ["3-0", "3-1", "3-2", "4-0", "4-1"]


def test_no_conflict_is_info(tmp_path: Path) -> None:
    ctx = _run(tmp_path, same=1, per_day=10, days=(3, 4))
    found = finding(ctx.read(AuditReport).model_dump(mode="json"), "conflicting_labels")
    assert found["severity"] == "info" and found["count"] == 0 and found["conflicts"] == []
