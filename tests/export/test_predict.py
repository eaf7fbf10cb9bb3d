"""`tl predict` / tl_core.export.predict on bad input: clear errors naming the value, nothing written on error,
and valid requests (any batch size, 0 rows) scoring exactly like the reference run.

One tiny BERT (and, for the image checks, one tiny timm model) is trained, exported and registered per module.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from model_fixtures import image_examples, image_spec, make_run, text_examples, text_spec, tiny_bert_dir
from tl_core.artifacts import ParityReport
from tl_core.cli import main as tl_main
from tl_core.config import ModelSpec
from tl_core.errors import DataError, PredictError
from tl_core.export.onnx_export import run_export
from tl_core.export.predict import check_batch_size, open_model_dir, predict_file, score
from tl_core.registry import Registry
from tl_core.runs import RunContext
from tl_core.train.run import run_train
from tl_core.train.select import run_select


@dataclass
class Registered:
    spec: ModelSpec
    spec_file: Path
    ctx: RunContext
    test: pd.DataFrame  # the run's test split: what the reference logits were computed on
    input: Path  # the test split as a Parquet file without labels
    cache: Path


def _register(root: Path, spec: ModelSpec, examples: pd.DataFrame) -> Registered:
    """Train, select, export and register one tiny model (v0001); no champion is set."""
    ctx = make_run(spec, examples)
    run_train(ctx, "full")
    run_select(ctx)
    run_export(ctx)
    assert Registry.for_spec(spec).register(ctx) == "v0001"
    spec_file = root / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    test = examples[examples["split"] == "test"].reset_index(drop=True)
    input_path = root / "input.parquet"
    test.drop(columns=["label", "split"]).to_parquet(input_path, index=False)
    return Registered(spec, spec_file, ctx, test, input_path, root / "cache")


@pytest.fixture(scope="module")
def isolated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("predict")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
            mp.delenv(var, raising=False)
        mp.setattr("tl_core.registry.CACHE_DIR", root / "cache")
        yield root


@pytest.fixture(scope="module")
def text_model(isolated: Path) -> Registered:
    root = isolated / "text"
    root.mkdir()
    spec = text_spec((root / "store").as_uri(), tiny_bert_dir(isolated / "models"), strategies=["full"], epochs=1)
    return _register(root, spec, text_examples())


@pytest.fixture(scope="module")
def image_model(isolated: Path) -> Registered:
    root = isolated / "image"
    root.mkdir()
    spec = image_spec((root / "store").as_uri(), strategies=["full"], epochs=1)
    return _register(root, spec, image_examples(n_per_class=10))


def predict(m: Registered, *extra: str, model: str = "tiny-text@v0001", input: Path | str | None = None,
            output: Path | str) -> int:
    return tl_main(["predict", "--spec", str(m.spec_file), "--model", model, "--input", str(input or m.input),
                    "--output", str(output), *extra])


def reference_probabilities(m: Registered) -> np.ndarray:
    """The reference run's test logits (stored at training time), calibrated with the exported temperature."""
    logits = m.ctx.read_npz("models/full/logits/test.npz")["logits"]
    t = m.ctx.read(ParityReport).temperature
    return torch.softmax(torch.from_numpy(logits) / t, dim=1).numpy()


# ---------------------------------------------------------------- valid requests


def test_small_batch_size_scores_like_the_default_and_the_reference(text_model: Registered, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert predict(text_model, "--batch-size", "1", output=tmp_path / "b1.parquet") == 0
    assert predict(text_model, "--batch-size", "3", output=tmp_path / "b3.parquet") == 0
    assert predict(text_model, output=tmp_path / "default.parquet") == 0
    assert "scored 24 rows with tiny-text@v0001" in capsys.readouterr().out
    default = pd.read_parquet(tmp_path / "default.parquet")
    labels = list(text_model.spec.labels)
    expected = reference_probabilities(text_model)
    assert default["example_id"].tolist() == text_model.test["example_id"].tolist()
    assert default["prediction"].tolist() == [labels[i] for i in expected.argmax(1)]
    np.testing.assert_allclose(default[[f"prob_{name}" for name in labels]].to_numpy(), expected, atol=1e-5)
    assert (default["model_version"] == "v0001").all()
    for name in ("b1", "b3"):
        small = pd.read_parquet(tmp_path / f"{name}.parquet")
        pd.testing.assert_frame_equal(small, default, check_exact=False, atol=1e-6)


def test_zero_rows_write_an_empty_output_with_the_usual_columns(text_model: Registered, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.parquet"
    pd.read_parquet(text_model.input).iloc[:0].to_parquet(empty, index=False)
    assert predict(text_model, "--json", input=empty, output=tmp_path / "out0.parquet") == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 0
    assert predict(text_model, output=tmp_path / "full.parquet") == 0
    got, usual = pq.read_schema(tmp_path / "out0.parquet"), pq.read_schema(tmp_path / "full.parquet")
    assert got.remove_metadata() == usual.remove_metadata()
    assert usual.names == ["example_id", "prediction", "confidence", "model_version", "prob_billing", "prob_login",
                           "prob_shipping"]
    assert [str(t) for t in usual.types] == ["large_string", "large_string", "float", "large_string", "float",
                                             "float", "float"]  # what tl predict has always written
    assert pd.read_parquet(tmp_path / "out0.parquet").empty


# ---------------------------------------------------------------- batch size


@pytest.mark.parametrize("value", ["-5", "0", "two", "1.5"])
def test_cli_batch_size_must_be_a_positive_integer(text_model: Registered, tmp_path: Path, value: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.parquet"
    with pytest.raises(SystemExit) as exit_info:
        predict(text_model, "--batch-size", value, output=out)
    assert exit_info.value.code == 2
    assert f"argument --batch-size: expected an integer >= 1, got '{value}'" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("value", [0, -5, True, 2.0])
def test_library_batch_size_must_be_a_positive_integer(text_model: Registered, value: object) -> None:
    with pytest.raises(PredictError, match=rf"batch size {value!r} is invalid: expected an integer >= 1"):
        check_batch_size(value)
    served = open_model_dir(Registry.for_spec(text_model.spec).load_version("v0001"), "v0001")
    with pytest.raises(PredictError, match=rf"batch size {value!r} is invalid"):
        score(served, text_model.test, batch_size=value)  # type: ignore[arg-type]


# ---------------------------------------------------------------- model reference, input and output files


def _cli_error(capsys: pytest.CaptureFixture[str], rc: int) -> str:
    err = capsys.readouterr().err
    assert rc == 1, err
    assert err.startswith("tl predict: error: ") and "Traceback" not in err
    return err


@pytest.mark.parametrize(("model", "message"), [
    ("other-model@v0001", "--model 'other-model@v0001' names model 'other-model' but the spec is for 'tiny-text'"),
    ("Tiny Text", "invalid model name 'Tiny Text': expected lowercase letters, digits"),
    ("tiny-text\n", "invalid model name 'tiny-text\\\\n'"),
    ("tiny-text@V0001", "version 'V0001' is not valid: expected 'champion' or 'v' followed by 4-9 digits, e.g. "
                        "tiny-text@v0001 \\(did you mean tiny-text@v0001\\?\\)"),
    ("tiny-text@1", "version '1' is not valid: expected 'champion' or 'v' followed by 4-9 digits"),
    ("tiny-text@v0001\n", "version 'v0001\\\\n' is not valid"),
    ("tiny-text@", "version '' is not valid"),
    ("tiny-text@v0009", "tiny-text: version v0009 does not exist"),
    ("tiny-text", "model 'tiny-text' has no champion yet: pass --model tiny-text@VERSION \\(registered: v0001\\)"),
    ("tiny-text@champion", "model 'tiny-text' has no champion yet"),
])
def test_cli_bad_model_reference_is_a_clear_error(text_model: Registered, tmp_path: Path, model: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.parquet"
    err = _cli_error(capsys, predict(text_model, model=model, output=out))
    assert re.search(message, err), err
    assert not out.exists()


def test_cli_int8_of_a_version_without_one_names_the_version(text_model: Registered, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.parquet"
    err = _cli_error(capsys, predict(text_model, "--precision", "int8", output=out))
    assert ("model 'tiny-text' version v0001 has no int8 artifact (it was exported without quantize_int8); use "
            "--precision fp32") in err, err
    assert not out.exists()
    with pytest.raises(PredictError, match=r"precision 'fp16' is not one of \['fp32', 'int8'\]"):
        predict_file(text_model.spec, "tiny-text@v0001", str(text_model.input), str(out), precision="fp16")


def test_cli_unreadable_input_is_a_clear_error(text_model: Registered, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.parquet"
    missing = tmp_path / "nope.parquet"
    err = _cli_error(capsys, predict(text_model, input=missing, output=out))
    assert f"input '{missing}' does not exist: expected a Parquet file" in err
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    err = _cli_error(capsys, predict(text_model, input=garbage, output=out))
    assert re.search(rf"input '{re.escape(str(garbage))}' cannot be read as Parquet \(\w+: .+\); expected a Parquet "
                     "file", err), err
    missing_uri = missing.as_uri()
    err = _cli_error(capsys, predict(text_model, input=missing_uri, output=out))
    assert f"input '{missing_uri}' cannot be read: no such key" in err
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(text_model.input.read_bytes()[:300])
    err = _cli_error(capsys, predict(text_model, input=truncated, output=out))
    assert f"input '{truncated}' cannot be read as Parquet (ArrowInvalid: " in err
    empty_folder = tmp_path / "no-parquet-here"
    empty_folder.mkdir()
    err = _cli_error(capsys, predict(text_model, input=empty_folder, output=out))
    assert "input is missing the column 'text' the model was trained on (has [])" in err
    assert not out.exists()


def test_cli_unwritable_output_is_refused_before_scoring(text_model: Registered, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "no-such-folder" / "out.parquet"
    err = _cli_error(capsys, predict(text_model, output=out))
    assert f"output folder '{out.parent}' does not exist (for output '{out}'): create it first" in err
    assert not out.parent.exists()
    err = _cli_error(capsys, predict(text_model, output=tmp_path))
    assert f"output '{tmp_path}' is a folder or empty: expected a Parquet file path" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_cli_errors_print_no_traceback_in_a_real_process(text_model: Registered, tmp_path: Path) -> None:
    env = {**os.environ, "TL_CACHE_DIR": str(text_model.cache)}
    for var in ("TL_STORE_URI", "TL_REGISTRY_URI", "TL_DATA_ROOT_URI"):
        env.pop(var, None)
    out = tmp_path / "out.parquet"
    base = [sys.executable, "-m", "tl_core.cli", "predict", "--spec", str(text_model.spec_file), "--input",
            str(text_model.input), "--output", str(out)]
    cases = [
        (["--model", "tiny-text@v0001", "--batch-size", "-5"], 2, "expected an integer >= 1, got '-5'"),
        (["--model", "tiny-text@V0001"], 1, "tl predict: error: --model 'tiny-text@V0001': version 'V0001' is not "
                                            "valid"),
    ]
    for argv, code, message in cases:
        proc = subprocess.run([*base, *argv], capture_output=True, text=True, env=env, timeout=300, check=False)
        assert proc.returncode == code, proc.stderr
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert not out.exists()


# ---------------------------------------------------------------- the input column


def _with(df: pd.DataFrame, column: str, values: list[object]) -> pd.DataFrame:
    return df.assign(**{column: pd.Series(values, dtype=object)})


def test_null_text_is_refused_naming_the_rows(text_model: Registered, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.read_parquet(text_model.input)
    texts: list[object] = df["text"].tolist()
    texts[1], texts[4] = None, None
    bad = tmp_path / "null.parquet"
    _with(df, "text", texts).to_parquet(bad, index=False)
    message = (f"input column 'text' is null in 2 rows \\(example_id '{df['example_id'][1]}', "
               f"'{df['example_id'][4]}'\\): every row needs strings")
    with pytest.raises(DataError, match=message):
        predict_file(text_model.spec, "tiny-text@v0001", str(bad), str(tmp_path / "lib.parquet"))
    out = tmp_path / "out.parquet"
    err = _cli_error(capsys, predict(text_model, input=bad, output=out))
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null.parquet"]


def test_null_text_without_example_ids_names_row_positions(text_model: Registered) -> None:
    served = open_model_dir(Registry.for_spec(text_model.spec).load_version("v0001"), "v0001")
    texts: list[object] = [f"text {i}" for i in range(8)]
    texts[7] = float("nan")
    with pytest.raises(DataError, match=r"input column 'text' is null in 1 row \(row '7'\)"):
        score(served, pd.DataFrame({"text": texts}))
    many: list[object] = [None] * 8
    with pytest.raises(DataError, match=r"null in 8 rows \(row '0', '1', '2', '3', '4' and 3 more\)"):
        score(served, pd.DataFrame({"text": pd.Series(many, dtype=object)}))


def test_non_string_text_is_refused_naming_the_dtype(text_model: Registered, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.read_parquet(text_model.input)
    ints = tmp_path / "ints.parquet"
    df.assign(text=np.arange(len(df), dtype=np.int64)).to_parquet(ints, index=False)
    with pytest.raises(DataError, match="input column 'text' has dtype int64; expected strings"):
        predict_file(text_model.spec, "tiny-text@v0001", str(ints), str(tmp_path / "lib.parquet"))
    err = _cli_error(capsys, predict(text_model, input=ints, output=tmp_path / "out.parquet"))
    assert "input column 'text' has dtype int64; expected strings" in err
    served = open_model_dir(Registry.for_spec(text_model.spec).load_version("v0001"), "v0001")
    mixed = _with(df, "text", [3, *df["text"].tolist()[1:]])
    with pytest.raises(DataError, match=rf"input column 'text' \(dtype object\) holds int values in 1 row "
                                        rf"\(example_id '{df['example_id'][0]}'\); expected strings"):
        score(served, mixed)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ints.parquet"]


def test_image_input_nulls_and_wrong_types_are_refused(image_model: Registered, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    df = pd.read_parquet(image_model.input)
    images: list[object] = df["image"].tolist()
    images[2] = None
    bad = tmp_path / "null-image.parquet"
    _with(df, "image", images).to_parquet(bad, index=False)
    message = (f"input column 'image' is null in 1 row \\(example_id '{df['example_id'][2]}'\\): every row needs "
               "image bytes or s3:// / file:// URIs")
    err = _cli_error(capsys, predict(image_model, model="tiny-image@v0001", input=bad,
                                     output=tmp_path / "out.parquet"))
    assert re.search(message, err), err
    served = open_model_dir(Registry.for_spec(image_model.spec).load_version("v0001"), "v0001")
    with pytest.raises(DataError, match="input column 'image' has dtype int64; expected image bytes"):
        score(served, df.assign(image=np.arange(len(df), dtype=np.int64)))
    with pytest.raises(DataError, match=rf"\(dtype object\) holds float values in 1 row \(example_id "
                                        rf"'{df['example_id'][0]}'\)"):
        score(served, _with(df, "image", [1.5, *df["image"].tolist()[1:]]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["null-image.parquet"]
    # The valid file still scores like the reference run.
    assert predict(image_model, model="tiny-image@v0001", output=tmp_path / "ok.parquet") == 0
    got = pd.read_parquet(tmp_path / "ok.parquet")
    np.testing.assert_allclose(got[[f"prob_{c}" for c in image_model.spec.labels]].to_numpy(),
                               reference_probabilities(image_model), atol=1e-5)
