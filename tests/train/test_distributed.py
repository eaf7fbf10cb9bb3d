"""DDP inside one train task: 2 gloo processes on CPU reach the 1-process result.

Every rank takes its half of each batch and DDP averages the gradients, so with dropout off and unweighted loss
the two runs differ only by float reduction order: measured max |test logit diff| 2.2e-7 with 1 torch thread and
2.4e-7 with 2, validation-loss points within 1.8e-7 (tiny BERT, full strategy, 1 + 2 epochs, fused AdamW on CPU).
The stated tolerance is 1e-4 on logits and 1e-5 on every validation-curve point.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model_fixtures import make_run, text_examples, text_spec, tiny_bert_dir, without_dropout
from tl_core.artifacts import TrainReport
from tl_core.train.run import run_train


def test_two_gloo_processes_reach_the_one_process_result(tmp_path: Path) -> None:
    bert = without_dropout(tiny_bert_dir(tmp_path / "models"), tmp_path / "models")
    runs = {}
    for n in (1, 2):
        spec = text_spec(tmp_path.as_uri(), bert, strategies=["full"], epochs=2, class_weighting="none",
                         distributed={"nproc_per_node": n})
        ctx = make_run(spec, text_examples(), run_id=f"nproc-{n}")
        run_train(ctx, "full")
        runs[n] = (ctx.read(TrainReport, "full"), ctx.read_npz("models/full/logits/test.npz"))
    (one, one_logits), (two, two_logits) = runs[1], runs[2]
    assert len(one.curves) == len(two.curves) == 3
    for a, b in zip(one.curves, two.curves, strict=True):
        assert b.val_loss == pytest.approx(a.val_loss, abs=1e-5)
        assert b.val_metric == pytest.approx(a.val_metric, abs=1e-5)
    assert np.abs(one_logits["logits"] - two_logits["logits"]).max() <= 1e-4
    assert two.val_metric == pytest.approx(one.val_metric, abs=1e-5)


def test_more_ranks_than_gpus_is_refused_naming_both(tmp_path: Path) -> None:
    import torch

    from tl_core.models.preprocessing import Encoded
    from tl_core.train.distributed import DistributedError, finetune_distributed

    spec = text_spec(tmp_path.as_uri(), tmp_path, strategies=["full"],
                     distributed={"nproc_per_node": torch.cuda.device_count() + 1})
    empty = Encoded("text", [], [], np.zeros(0, np.int64))
    n = torch.cuda.device_count()
    with pytest.raises(DistributedError, match=rf"nproc_per_node is {n + 1} but {n} CUDA devices are visible"):
        finetune_distributed(None, None, "full", spec, "r", "k", empty, empty, (None, None),  # type: ignore[arg-type]
                             torch.device("cuda"))
