"""run_evaluate / run_gate on runs laid out as tl_core/runs.py says (synthetic logits, real stores), the `tl`
commands, the evidence hash, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from eval_fixtures import LABELS, logits_for, make_synthetic_run, spec_dict
from tl_core.artifacts import EvaluationReport, GateDecision, LabelIssues, Selection
from tl_core.cli import main as tl_main
from tl_core.config import parse_spec
from tl_core.errors import TLError
from tl_core.evaluate.evidence import current_evidence_hash
from tl_core.evaluate.report import render_html
from tl_core.evaluate.run import ChampionScores, run_evaluate
from tl_core.export.champion import champion_for
from tl_core.gate.step import run_gate

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
def test_first_model_report_gate_and_evidence(store_uri: str) -> None:
    ctx = make_synthetic_run(parse_spec(spec_dict(store_uri)))
    uri = run_evaluate(ctx, champion_for(ctx))
    assert uri == ctx.uri("evaluation/report.json")
    report = ctx.read(EvaluationReport).model_dump(mode="json")
    assert report["schema_version"] == 2 and report["champion"]["status"] == "none"
    assert set(report["models"]) == {"frozen", "full", "majority"} and report["candidate"] == "full"
    assert report["test_size"] == 600
    # the source checkpoint the gate's licence check and the registry read (random init: nothing to license)
    assert report["provenance"] == {"id": "tiny", "revision": "main", "library": "transformers", "weights": "none",
                                    "path": None, "package": None, "package_version": None, "key_map": None,
                                    "licence": "none", "licence_source": "random init (no source checkpoint)",
                                    "fingerprint": None, "licence_override": None}
    assert report["slices"]["region=eu"] == 300 and report["slices"]["channel=web"] == 200
    assert report["slices"]["region=eu&channel=web"] == 100 and len(report["slices"]) == 2 + 3 + 6
    full = report["models"]["full"]
    # Over-confident logits (x3): temperature > 1 lowers log loss and keeps accuracy.
    assert full["temperature"] > 1.5
    assert full["overall"]["log_loss"] < full["before_temperature"]["log_loss"]
    assert full["overall"]["accuracy"] == full["before_temperature"]["accuracy"]
    lo, hi = full["intervals"]["macro_f1"]["overall"]
    assert lo < full["overall"]["macro_f1"] < hi
    comp = report["comparisons"]["majority"]["macro_f1"]["overall"]
    assert comp["lo"] > 0.3 and len(comp["quantiles"]) == len(report["bootstrap"]["quantile_levels"])
    assert report["curves"]["full"][2]["val_metric"] == pytest.approx(0.75)
    assert report["audit"]["findings"][0]["check"] == "class_balance"

    result = run_gate(ctx).model_dump(mode="json")
    assert result["passed"] is True and result["bootstrap"] is True, result["reasons"]
    assert result["champion_version"] is None and result["champion_etag"] is None
    decision = ctx.read(GateDecision).model_dump(mode="json")
    assert decision["passed"] is True and decision["evidence_hash"] == result["evidence_hash"]
    assert current_evidence_hash(ctx) == result["evidence_hash"]
    assert result["summary_markdown"].startswith("**Decision: PASS** (bootstrap")
    assert "| majority-class | macro_f1 | overall |" in result["summary_markdown"]
    html = ctx.store.get_bytes(ctx.key("gate/report.html")).decode()
    assert "Gate: PASS" in html and html.index("Gate: PASS") < html.index("All models")

    # Anything the decision rests on changes the evidence hash: candidate files, the reports, the champion.
    ctx.store.put_bytes(ctx.model_key("full", "model.safetensors"), b"retrained")
    assert current_evidence_hash(ctx) != result["evidence_hash"]
    run_gate(ctx)
    before = current_evidence_hash(ctx)
    ctx.write_json("audit/report.json", {"total_rows": 1})
    assert current_evidence_hash(ctx) != before


def test_champion_comparison_and_pointer_check(tmp_path: Path) -> None:
    ctx = make_synthetic_run(parse_spec(spec_dict(tmp_path.as_uri(), required_slices=["region=eu"])))
    cal = ctx.read_npz("models/frozen/logits/calibration.npz")
    test = ctx.read_npz("models/frozen/logits/test.npz")
    df = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))

    def rows(z: dict[str, np.ndarray], split: str) -> np.ndarray:
        pos = {e: i for i, e in enumerate(z["example_id"])}
        return z["logits"][[pos[e] for e in df[df["split"] == split]["example_id"]]]

    # The champion is the frozen model: the candidate (full, more accurate) is compared with it slice by slice.
    champion = ChampionScores("v0001", "etag-1", {"calibration": rows(cal, "calibration"), "test": rows(test, "test")},
                              LABELS)
    run_evaluate(ctx, champion)
    report = ctx.read(EvaluationReport).model_dump(mode="json")
    assert report["champion"] == {"status": "ok", "version": "v0001", "etag": "etag-1", "reason": ""}
    champ_vs_frozen = report["models"]["champion"]["overall"]["macro_f1"]
    assert champ_vs_frozen == pytest.approx(report["models"]["frozen"]["overall"]["macro_f1"])
    assert set(report["comparisons"]["champion"]["macro_f1"]) == {"overall", *report["slices"]}
    assert report["comparisons"]["champion"]["macro_f1"]["overall"]["diff"] > 0
    # No champion is registered in this store: the pointer moved (to none) after the evaluation -> FAIL.
    result = run_gate(ctx).model_dump(mode="json")
    assert not result["passed"]
    assert any("champion pointer changed after evaluation (evaluated v0001 etag etag-1, now None" in r
               for r in result["reasons"])
    assert result["champion_version"] == "v0001" and result["champion_etag"] == "etag-1"
    decision = ctx.read(GateDecision).model_dump(mode="json")
    slice_reasons = [r for r in decision["reasons"] if r["check"] == "slice"]
    assert sorted(r["slice"] for r in slice_reasons) == sorted(report["slices"])
    assert all(re.search(r"candidate - champion in \[.*\] \(95%\), margin -0.05, holm p\(non-inferior\)=.* "
                         r"p\(harm\)=.*, detects drops >= 0\.\d{3} \(80% power\)", r["text"]) for r in slice_reasons)
    assert all(r["outcome"] in ("harm", "non-inferior", "inconclusive") and r["detectable"] > 0.05
               for r in slice_reasons)
    html = ctx.store.get_bytes(ctx.key("gate/report.html")).decode()
    assert "Comparisons: outcome and power" in html and "detects drops ≥" in html
    overall = [r for r in decision["reasons"] if r["check"] == "non-inferiority"]
    assert {r["metric"] for r in overall} == {"macro_f1", "accuracy"} and all(r["status"] == "PASS" for r in overall)
    assert any(r["text"] == "required slice region=eu present with 300 test examples: PASS"
               for r in decision["reasons"])


def test_unreadable_champion_fails_closed(tmp_path: Path) -> None:
    spec = parse_spec(spec_dict(tmp_path.as_uri()))
    ctx = make_synthetic_run(spec)
    # A hand-written pointer (no promotion made it): unreadable evidence, and the gate fails closed naming it.
    ctx.store.put_bytes("registry/eval-demo/champion.json", json.dumps({"version": "v0007"}).encode())
    run_evaluate(ctx, champion_for(ctx))
    champion = ctx.read(EvaluationReport).model_dump(mode="json")["champion"]
    assert champion["status"] == "unreadable" and champion["version"] is None
    assert "champion pointer unreadable" in champion["reason"] and "champion.json" in champion["reason"]
    result = run_gate(ctx).model_dump(mode="json")
    assert not result["passed"] and not result["bootstrap"]
    assert any("could not be re-scored" in r and "champion.json is not a valid champion pointer" in r
               for r in result["reasons"]), result["reasons"]
    evidence = ctx.read(GateDecision).model_dump(mode="json")["evidence"]
    assert "champion.json is not a valid champion pointer" in evidence["champion_error"]
    # A corrupt pointer is unreadable too (never a silent bootstrap).
    ctx.store.put_bytes("registry/eval-demo/champion.json", b"{not json")
    run_evaluate(ctx, champion_for(ctx))
    champion = ctx.read(EvaluationReport).model_dump(mode="json")["champion"]
    assert champion["status"] == "unreadable" and "champion pointer unreadable" in champion["reason"]
    # Champion logits of the wrong shape are unreadable evidence, not a crash.
    bad = ChampionScores("v0002", "e", {"calibration": np.zeros((300, 3)), "test": np.zeros((10, 3))}, LABELS)
    run_evaluate(ctx, bad)
    champion = ctx.read(EvaluationReport).model_dump(mode="json")["champion"]
    assert champion["status"] == "unreadable"
    assert champion["reason"] == "champion logits: test logits have shape (10, 3), expected (600, 3)"


def test_empty_test_set_fails_closed(tmp_path: Path) -> None:
    ctx = make_synthetic_run(parse_spec(spec_dict(tmp_path.as_uri())), n_test=0)
    run_evaluate(ctx, champion_for(ctx))
    report = ctx.read(EvaluationReport).model_dump(mode="json")
    assert report["test_size"] == 0 and report["comparisons"] == {}
    result = run_gate(ctx).model_dump(mode="json")
    assert not result["passed"] and result["reasons"][0].startswith("empty test set: 0 labelled test examples")


def test_bad_run_inputs_name_the_file(tmp_path: Path) -> None:
    ctx = make_synthetic_run(parse_spec(spec_dict(tmp_path.as_uri())))
    ctx.store.delete(ctx.key("models/frozen/logits/test.npz"))
    with pytest.raises(TLError, match=r"models/frozen/logits/test\.npz is missing: strategy 'frozen' has no test"):
        run_evaluate(ctx, None)
    ctx.write_npz("models/frozen/logits/test.npz", example_id=np.array(["test-1"]), logits=np.zeros((1, 3)))
    with pytest.raises(TLError, match=r"test\.npz lacks 599 of the 600 test examples"):
        run_evaluate(ctx, champion_for(ctx))
    ctx.write_npz("models/frozen/logits/test.npz", example_id=np.array(["test-1"]), logits=np.zeros((1, 4)))
    with pytest.raises(TLError, match=r"logits must be \(n, 3\) with one row per example_id, got shape \(1, 4\)"):
        run_evaluate(ctx, champion_for(ctx))
    ctx.write(Selection(selected="lora", primary_metric="macro_f1",
                        strategies={"full": {"val_metric": 0.8, "strategy": "full", "backbone": "default"}}))
    with pytest.raises(TLError, match=r"selected strategy 'lora' is not among the trained strategies \['full'\]"):
        run_evaluate(ctx, champion_for(ctx))
    ctx.store.delete(ctx.key("evaluation/report.json")) if ctx.store.exists(ctx.key("evaluation/report.json")) \
        else None
    with pytest.raises(TLError, match=r"evaluation/report\.json \(EvaluationReport\) is missing: run `tl evaluate`"):
        run_gate(ctx)


def test_tl_evaluate_and_gate_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = spec_dict(tmp_path.as_uri(), absolute_minimums={"macro_f1": 0.99})
    spec_path = tmp_path / "spec.yaml"
    spec_path.write_text(yaml.safe_dump(raw))
    ctx = make_synthetic_run(parse_spec(raw))
    assert tl_main(["evaluate", "--spec", str(spec_path), "--run", ctx.run_id, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["report"] == ctx.uri("evaluation/report.json")
    assert tl_main(["gate", "--spec", str(spec_path), "--run", ctx.run_id]) == 3  # FAIL exits 3
    out = capsys.readouterr().out
    assert out.startswith("Decision: FAIL") and re.search(r"macro_f1 overall 0\.\d{3} < minimum 0\.99: FAIL", out)


def test_html_report_is_self_contained_and_renders(tmp_path: Path) -> None:
    ctx = make_synthetic_run(parse_spec(spec_dict(tmp_path.as_uri())))
    df = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("split/examples.parquet"))))
    rng = np.random.default_rng(9)
    index = {k: i for i, k in enumerate(LABELS)}
    y = {s: df[df["split"] == s]["label"].map(index).to_numpy().astype(int) for s in ("calibration", "test")}
    champion = ChampionScores("v0001", "etag-1", {s: logits_for(y[s], rng, 0.8, 1.0) for s in y}, LABELS)
    ctx.write(LabelIssues(
        severity="warning", count=7, rows=300, rate=7 / 300, oof_accuracy=0.8, over_limit=[], per_class={},
        per_slice={}, worst_slices=[], policy="warn", quarantined_ids=[], message="7 of 300 rows look mislabelled",
        top_examples=[{"example_id": "train-3", "given": "login", "suspected": "billing", "given_probability": 0.1}]))
    run_evaluate(ctx, champion)
    run_gate(ctx)
    html = ctx.store.get_bytes(ctx.key("gate/report.html")).decode()
    assert "7 of 300 rows look mislabelled" in html and "Suspected label issues" in html
    assert "<td>train-3</td><td>login</td><td>billing</td>" in html
    assert re.findall(r'(?:src|href)\s*=\s*(?!["\']?data:)', html) == []
    assert "http://" not in html and "https://" not in html and "<link" not in html
    # decision on top, models table, slice charts, reliability x2, confusion x2, learning curves, audit
    assert html.count('src="data:image/png;base64,') >= 6
    assert html.index("Gate: FAIL") < html.index("All models") < html.index("Per slice") < html.index("Calibration")
    assert "Data audit" in html and "class_balance" in html
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian chromium is required for the report check (make system-deps installs it)"
    ARTIFACTS.mkdir(exist_ok=True)
    page = ARTIFACTS / "evaluation-report.html"
    page.write_text(html)
    shot = ARTIFACTS / "evaluation-report.png"
    shot.unlink(missing_ok=True)
    profile = tmp_path / "chromium-profile"
    subprocess.run(["timeout", "-k", "5", "60", chromium, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={shot}",
                    "--window-size=1280,3000", page.as_uri()], check=True, capture_output=True)
    assert shot.exists() and shot.stat().st_size > 50_000
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 3000)
        pixels = np.asarray(img.convert("L"), dtype=float)
    # Non-trivial: plots and text, not a blank or error page.
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01


def test_render_html_escapes_text() -> None:
    report = {"model": "m<script>", "run_id": "r", "labels": ["a", "b"], "candidate": "full", "test_size": 0,
              "primary_metric": "macro_f1", "slices": {}, "champion": {"status": "none", "version": None, "reason": ""},
              "models": {"full": {"role": "candidate", "temperature": 1.0, "overall": {"n": 0},
                                  "before_temperature": {}, "slices": {}, "confusion": [[0, 0], [0, 0]],
                                  "reliability": {k: {"count": [0] * 15, "confidence": [None] * 15,
                                                      "accuracy": [None] * 15} for k in ("before", "after")}}},
              "comparisons": {}, "curves": {}, "audit": None, "bootstrap": {"confidence": 0.95}}
    html = render_html(report, {"passed": False, "bootstrap": True, "evidence_hash": "h",
                                "reasons": [{"status": "FAIL", "text": "empty test set <b>: FAIL"}]})
    assert "<script>" not in html and "m&lt;script&gt;" in html and "empty test set &lt;b&gt;: FAIL" in html


def test_evaluate_and_gate_on_really_trained_strategies(tmp_path: Path) -> None:
    """The training step's real outputs (tiny BERT, frozen + full) go through evaluate and gate."""
    from model_fixtures import make_run, text_examples, text_spec, tiny_bert_dir
    from tl_core.train.run import run_train
    from tl_core.train.select import run_select

    spec = text_spec(tmp_path.as_uri(), tiny_bert_dir(tmp_path), strategies=["frozen", "full"], epochs=2)
    ctx = make_run(spec, text_examples(n_per_class=60))
    for s in spec.train.strategies:
        run_train(ctx, s)
    run_select(ctx)
    run_evaluate(ctx, champion_for(ctx))
    report = ctx.read(EvaluationReport).model_dump(mode="json")
    assert report["champion"]["status"] == "none"
    assert set(report["models"]) == {"frozen", "full", "majority"}
    assert set(report["slices"]) == {"region=eu", "region=us"}
    assert report["test_size"] == sum(report["slices"].values()) == 36
    assert [sorted(c) for c in report["curves"]["full"]][:1] == [["epoch", "train_loss", "val_loss", "val_metric"]]
    result = run_gate(ctx).model_dump(mode="json")
    assert result["bootstrap"] is True and len(result["evidence_hash"]) == 64
    assert ctx.read(GateDecision).model_dump(mode="json")["passed"] == result["passed"]
