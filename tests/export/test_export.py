from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch

from model_fixtures import MINILM_DIR, image_examples, image_spec, make_run, text_examples, text_spec, tiny_bert_dir
from tl_core.artifacts import ModelConfig, ParityReport
from tl_core.export.onnx_export import ParityError, encode_for, export_onnx, parity_report, run_export
from tl_core.export.predict import open_model_dir, predictions_frame, score
from tl_core.models.artifacts import load_model_dir
from tl_core.models.preprocessing import collate
from tl_core.store import local_copy
from tl_core.train.run import run_train
from tl_core.train.select import run_select


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert_dir(tmp_path_factory.mktemp("models"))


def _trained(tmp_path: Path, spec, examples: pd.DataFrame, strategy: str):
    ctx = make_run(spec, examples)
    run_train(ctx, strategy)
    run_select(ctx)
    return ctx


def _check_export(ctx, examples: pd.DataFrame, strategy: str, tmp_path: Path) -> None:
    run_export(ctx)
    parity = ctx.read(ParityReport)
    assert parity.passed and parity.max_abs_logit_diff <= 1e-4 and parity.top1_mismatches == []
    onnx_bytes = ctx.store.get_bytes(ctx.key("export/model.onnx"))
    model = onnx.load_from_string(onnx_bytes)
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    # Probabilities carry the fitted temperature; logits are the raw model outputs.
    with local_copy(ctx.store, ctx.prefix) as run_dir:
        served = open_model_dir(run_dir)
        test = examples[examples["split"] == "test"].reset_index(drop=True)
        logits, probs = score(served, test, batch_size=7)  # an odd batch size exercises the dynamic batch axis
    stored = ctx.read_npz(f"models/{strategy}/logits/test.npz")
    np.testing.assert_allclose(logits, stored["logits"], atol=1e-4, rtol=1e-4)
    t = parity.temperature
    expected = torch.softmax(torch.from_numpy(stored["logits"]) / t, dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    frame = predictions_frame(served, test, logits, probs)
    assert list(frame.columns[:4]) == ["example_id", "prediction", "confidence", "model_version"]
    assert (frame["prediction"].to_numpy() == np.array(served.labels)[stored["logits"].argmax(1)]).all()
    golden = ctx.read_npz("export/golden.npz")
    sess = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    feeds = {k.removeprefix("input."): v for k, v in golden.items() if k.startswith("input.")}
    np.testing.assert_allclose(sess.run(["logits"], feeds)[0], golden["logits"], atol=1e-5)


def test_export_tiny_text(tmp_path: Path, bert_dir: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), bert_dir, strategies=["full"], epochs=1)
    ex = text_examples()
    _check_export(_trained(tmp_path, spec, ex, "full"), ex, "full", tmp_path)


def test_export_tiny_image(tmp_path: Path) -> None:
    spec = image_spec(tmp_path.as_uri(), strategies=["full"], epochs=1)
    ex = image_examples(n_per_class=20)
    _check_export(_trained(tmp_path, spec, ex, "full"), ex, "full", tmp_path)


@pytest.mark.slow
def test_export_real_minilm_with_lora_merged(tmp_path: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), MINILM_DIR, strategies=["lora"], epochs=1, warmup_epochs=0)
    ex = text_examples(n_per_class=30)
    ctx = _trained(tmp_path, spec, ex, "lora")
    _check_export(ctx, ex, "lora", tmp_path)


def test_corrupted_graph_fails_parity(tmp_path: Path, bert_dir: Path) -> None:
    spec = text_spec(tmp_path.as_uri(), bert_dir, strategies=["full"], epochs=1)
    ex = text_examples()
    ctx = _trained(tmp_path, spec, ex, "full")
    test = ex[ex["split"] == "test"].reset_index(drop=True)
    with local_copy(ctx.store, ctx.model_key("full")) as model_dir:
        loaded = load_model_dir(model_dir)
        enc, transform, pad_id = encode_for(loaded, test)
        path = tmp_path / "model.onnx"
        export_onnx(loaded, 1.0, collate(enc, np.arange(4), pad_id, transform), path, 18)
        graph = onnx.load(str(path))
        head_bias = next(i for i in graph.graph.initializer if i.name.endswith("head.bias"))
        values = onnx.numpy_helper.to_array(head_bias).copy()
        values[0] += 0.5  # a silently corrupted weight
        head_bias.CopyFrom(onnx.numpy_helper.from_array(values, head_bias.name))
        sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
        report = parity_report(loaded, sess, test, 1.0, 1e-4, 1e-3)
    assert not report["passed"]
    assert report["max_abs_logit_diff"] == pytest.approx(0.5, abs=1e-3)
    assert any("max |logit diff|" in f for f in report["failures"])
    assert len(report["worst_examples"]) == 5


def test_preprocessing_mismatch_fails_parity_gate(tmp_path: Path, bert_dir: Path) -> None:
    """A model whose preprocessing no longer matches what it was trained with is caught before registration."""
    spec = text_spec(tmp_path.as_uri(), bert_dir, strategies=["full"], epochs=1)
    ex = text_examples()
    ctx = _trained(tmp_path, spec, ex, "full")
    # Tamper with the stored preprocessing contract (the model config's): truncate to 3 tokens instead of 16.
    config = ctx.read(ModelConfig, "full")
    ctx.write(config.model_copy(update={"preprocessing": {**config.preprocessing, "max_length": 3}}), "full")
    with pytest.raises(ParityError, match="ONNX parity failed"):
        run_export(ctx)
    assert not ctx.store.exists(ctx.key("export/model.onnx"))
    assert ctx.read(ParityReport).passed is False


def test_the_temperature_is_fitted_once_by_training_and_reused(tmp_path: Path, bert_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Training fits the temperature on the calibration split and stores it in model_config.json; export folds
    that number into the ONNX graph and evaluation reports with it: neither fits one again."""
    from tl_core.artifacts import EvaluationReport
    from tl_core.evaluate.calibration import fit_on_labelled
    from tl_core.evaluate.run import run_evaluate

    spec = text_spec(tmp_path.as_uri(), bert_dir, strategies=["full"], epochs=1)
    ex = text_examples()
    ctx = _trained(tmp_path, spec, ex, "full")
    stored = ctx.read(ModelConfig, "full").temperature
    cal = ctx.read_npz("models/full/logits/calibration.npz")
    labels = dict(zip(ex["example_id"].astype(str), ex["label"], strict=True))
    y = np.array([spec.labels.index(labels[str(e)]) for e in cal["example_id"]])
    assert stored is not None and stored == pytest.approx(fit_on_labelled(cal["logits"], y), rel=1e-6)
    assert stored != pytest.approx(1.0, abs=1e-3)  # a fitted value, not the neutral one

    def refit(*args: object) -> float:
        raise AssertionError("the temperature was fitted again")

    monkeypatch.setattr("tl_core.export.onnx_export.fit_temperature_for", refit)
    monkeypatch.setattr("tl_core.evaluate.run.fit_temperature", refit)  # no champion: only stored temperatures
    run_export(ctx)
    run_evaluate(ctx, None)
    assert ctx.read(ParityReport).temperature == stored
    assert ctx.read(EvaluationReport).models["full"].temperature == stored
