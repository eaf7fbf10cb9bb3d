"""The training lease: a superseded training (an orphan of a dead worker) stops instead of writing."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from model_fixtures import make_run, text_examples, text_spec, tiny_bert_dir
from tl_core.artifacts import TrainReport
from tl_core.errors import TrainingSuperseded
from tl_core.runs import RunContext
from tl_core.train.lease import TrainLease
from tl_core.train.run import run_train


def test_the_newest_taker_owns_the_lease(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), tmp_path / "unused", strategies=["full"])
    ctx = RunContext.open(spec, "r1")
    first = TrainLease.take(ctx, "full")
    first.check("anything")  # still its own
    second = TrainLease.take(ctx, "full")
    second.check("anything")
    with pytest.raises(TrainingSuperseded, match=re.escape(
            f"run r1: full is now trained by pid {second.owner['pid']} on {second.owner['host']} (lease taken "
            f"{second.owner['taken_at']}, after this training's {first.owner['taken_at']}") + ".*stops before "
                                                                                             "writing the report"):
        first.check("writing the report")
    ctx.store.delete(second.key)
    with pytest.raises(TrainingSuperseded, match=r"the training lease .*lease.json cannot be read .*stopping before x"):
        second.check("x")
    ctx.store.put_bytes(second.key, b"not json")
    with pytest.raises(TrainingSuperseded, match="cannot be read"):
        second.check("x")


class RetryStartsAfterFirstCheckpoint:
    """The run's store as the first try sees it: right after that try's first epoch checkpoint, a retry of the task
    takes the lease (what the retry's run_train does when it starts)."""

    def __init__(self, inner: Any, ctx: RunContext) -> None:
        self.inner, self.ctx, self.retry_lease = inner, ctx, None

    def put_bytes(self, key: str, data: bytes, **kwargs: Any) -> str:
        etag = self.inner.put_bytes(key, data, **kwargs)
        if key.endswith("/resume/state.pt") and self.retry_lease is None:
            self.retry_lease = TrainLease.take(self.ctx, "full")
        return str(etag)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_superseded_training_writes_nothing_and_the_retry_resumes(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), tiny_bert_dir(tmp_path), strategies=["full"], epochs=4, warmup_epochs=0,
                     patience=10)
    ctx = make_run(spec, text_examples())
    interloper = RetryStartsAfterFirstCheckpoint(ctx.store, ctx)
    first_try = dataclasses.replace(ctx, store=interloper)
    with pytest.raises(TrainingSuperseded, match="stops before writing an epoch's resume checkpoint"):
        run_train(first_try, "full")
    # the first try stopped at its second checkpoint: one epoch saved, no weights, no report
    assert not ctx.store.exists(ctx.model_key("full", "train_report.json"))
    assert not ctx.store.exists(ctx.model_key("full", "model.safetensors"))
    assert ctx.store.exists(ctx.model_key("full", "resume", "state.pt"))
    # the retry (a new taker) resumes after that epoch and finishes
    run_train(ctx, "full")
    report = ctx.read(TrainReport, "full")
    assert report.resumed_from_epoch == 1 and [c.epoch for c in report.curves] == [1, 2, 3, 4]
