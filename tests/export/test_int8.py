"""The int8 artifact end to end on a tiny BERT: made by export, gated on its own, registered beside fp32 only when
its gate passed, served by `tl predict --precision int8`; a failing int8 is recorded and the fp32 version still
registers.

One model is trained per module (3 epochs: a 1-epoch tiny model has near-tied logits that any rounding flips).
The failing case is a real corruption: outliers in an embedding row that no test text uses leave the fp32
outputs bit-identical but set the int8 scale of every embedding channel so that all other rows round to zero -
the classic way int8 breaks.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load, save

from model_fixtures import make_run, text_examples, text_spec, tiny_bert_dir
from tl_core.artifacts import Int8Report
from tl_core.cli import main as tl_main
from tl_core.config import ModelSpec
from tl_core.errors import PredictError
from tl_core.evaluate.metrics import metric_value
from tl_core.export.onnx_export import run_export
from tl_core.export.predict import open_model_dir, predict_file, score
from tl_core.registry import Registry
from tl_core.runs import INT8_FILE, RunContext
from tl_core.store import local_copy
from tl_core.train.run import run_train
from tl_core.train.select import run_select

UNUSED_TOKEN = 29999  # a word-piece id no text of text_examples() tokenizes to (checked below)


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("int8")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
            mp.delenv(var, raising=False)
        mp.setattr("tl_core.registry.CACHE_DIR", root / "cache")
        yield root


def int8_spec(root: Path) -> ModelSpec:
    spec = text_spec((root / "store").as_uri(), tiny_bert_dir(root / "models"), strategies=["full"], epochs=3)
    # 24 test examples: ECE over 15 bins moves by several points when one example changes bin, so the ECE
    # tolerance is loose here; agreement and the metric bound keep the spec's defaults.
    export = spec.export.model_copy(update={"quantize_int8": True, "int8_ece_tolerance": 0.1})
    return spec.model_copy(update={"export": export})


@pytest.fixture(scope="module")
def trained(isolated: Path) -> RunContext:
    spec = int8_spec(isolated)
    ctx = make_run(spec, text_examples())
    run_train(ctx, "full")
    run_select(ctx)
    (isolated / "spec.yaml").write_text(json.dumps(spec.model_dump(mode="json")))
    return ctx


def _test_split(ctx: RunContext) -> pd.DataFrame:
    examples = ctx.read_examples()
    return examples[examples["split"] == "test"].reset_index(drop=True)


@pytest.fixture(scope="module")
def input_file(trained: RunContext, isolated: Path) -> Path:
    path = isolated / "input.parquet"
    _test_split(trained).drop(columns=["label", "split"]).to_parquet(path, index=False)
    return path


def _copy_run(ctx: RunContext, run_id: str) -> RunContext:
    other = RunContext.open(ctx.spec, run_id)
    for key in ctx.store.list(ctx.prefix + "/"):
        if "/steps/" not in key:
            other.store.put_bytes(other.prefix + key[len(ctx.prefix):], ctx.store.get_bytes(key))
    return other


def test_int8_agrees_with_fp32_within_its_measured_bounds_and_is_served(trained: RunContext, isolated: Path,
                                                                        input_file: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    run_export(trained)
    report = trained.read(Int8Report)
    assert report.passed, report.failures
    measured = report.measured
    test = _test_split(trained)
    with local_copy(trained.store, trained.prefix) as run_dir:
        _, fp32 = score(open_model_dir(run_dir), test)
        _, int8 = score(open_model_dir(run_dir, precision="int8"), test)
    y = np.array([trained.spec.labels.index(v) for v in test["label"]])
    agreement = float((fp32.argmax(1) == int8.argmax(1)).mean())
    assert agreement == pytest.approx(measured.agreement) and agreement >= trained.spec.export.int8_min_agreement
    diff = metric_value(measured.metric, int8, y) - metric_value(measured.metric, fp32, y)
    assert measured.diff_interval is not None
    lo, hi = measured.diff_interval
    assert lo <= diff <= hi and lo >= -trained.spec.export.int8_margin
    assert report.size < 0.5 * report.fp32_size  # int8 weights: the point of the artifact

    registry = Registry.for_spec(trained.spec)
    version = registry.register(trained)
    manifest = registry.show(version)
    assert manifest["int8"]["registered"] and INT8_FILE in manifest["files"]
    out = isolated / "int8.parquet"
    rc = tl_main(["predict", "--spec", str(isolated / "spec.yaml"), "--model", f"tiny-text@{version}", "--input",
                  str(input_file), "--output", str(out), "--precision", "int8"])
    assert rc == 0 and f"scored 24 rows with tiny-text@{version} (int8)" in capsys.readouterr().out
    served = pd.read_parquet(out)
    assert served["prediction"].tolist() == [trained.spec.labels[i] for i in int8.argmax(1)]


def test_failing_int8_is_recorded_and_the_fp32_version_still_registers(trained: RunContext, isolated: Path,
                                                                       input_file: Path) -> None:
    ctx = _copy_run(trained, "outlier-run")
    key = ctx.model_key("full", "model.safetensors")
    state = load(ctx.store.get_bytes(key))
    table = next(k for k in state if k.endswith("word_embeddings.weight"))
    with local_copy(ctx.store, ctx.model_key("full")) as model_dir:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(Path(model_dir) / "preprocessing"))
    assert UNUSED_TOKEN not in set(np.concatenate(tokenizer(ctx.read_examples()["text"].tolist())["input_ids"]))
    state[table][UNUSED_TOKEN, :] = 1000.0  # fp32 never reads this row; every int8 scale becomes 1000 / 127
    ctx.store.put_bytes(key, save(state))

    run_export(ctx)  # fp32 parity (against the training-time logits too) still passes
    report = ctx.read(Int8Report)
    assert not report.passed
    assert any(re.search(r"top-1 agreement int8 vs fp32 0\.\d+ \(\d+ of 24 test examples differ\) < minimum 0\.97: "
                         "FAIL", f) for f in report.failures), report.failures

    registry = Registry.for_spec(ctx.spec)
    version = registry.register(ctx)
    manifest = registry.show(version)
    assert INT8_FILE not in manifest["files"] and "export/model.onnx" in manifest["files"]
    assert not manifest["int8"]["registered"] and manifest["int8"]["failures"] == report.failures
    with pytest.raises(PredictError, match=rf"model 'tiny-text' version {version} has no int8 artifact \(its int8 "
                                           r"gate failed: top-1 agreement int8 vs fp32 .*; use --precision fp32"):
        predict_file(ctx.spec, f"tiny-text@{version}", str(input_file),
                     str(isolated / "never.parquet"), precision="int8")
    assert not (isolated / "never.parquet").exists()
    fp32 = predict_file(ctx.spec, f"tiny-text@{version}", str(input_file),
                        str(isolated / "fp32.parquet"))
    assert fp32["precision"] == "fp32" and fp32["rows"] == 24
