"""The project against the peers a user would otherwise pick, side by side in one process (issue 19).

One line per workload: same model (the real all-MiniLM-L6-v2), same data (real Debian package descriptions from
tests/fixtures/debian_descriptions.parquet), same batch size and maximum sequence length, the median of
``--runs`` runs of each side (interleaved), and the ratio: the median over runs of peer time / project time,
each run's sides back to back (> 1: the project is faster).

  frozen embedding   tl's frozen path (encode_split + embed_with_cache into a fresh store cache: tokenization
                     and cache writes included) vs sentence_transformers.SentenceTransformer.encode
  LoRA / full step   tl_core.train.finetune.finetune (1 epoch of ``--steps`` batches + its validation pass on
                     one batch) vs Hugging Face Trainer (+ peft for LoRA; length-grouped sampling, cosine
                     schedule, same lr, warm-up, clip, weight decay) for the same number of steps
  paired bootstrap   tl_core.evaluate.bootstrap.paired_bootstrap vs scipy.stats.bootstrap(paired=True) and a
                     plain numpy loop: intervals of accuracy and macro-F1 differences of two models, same
                     replicate count (synthetic predictions: the workload is the resampling)
  batch scoring      tl predict's scoring path (tl_core.export.predict.score) vs a bare onnxruntime session on
                     the same batches (tokenizer + session.run), and vs torch eager

A peer that cannot be imported is printed as such (never skipped silently). Every run is appended to
``.tl/bench/peers.jsonl`` with library versions and hardware. ``--smoke``: tiny settings, to check the script.

    .venv/bin/python bench/peers.py [--runs 3] [--steps 6] [--texts 400] [--device cuda] [--smoke]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from text_model import ROOT, TextModel, build, export_pair, hardware, minilm_dir, texts, workdir

PACKAGES = ("tl-retrain", "torch", "transformers", "sentence-transformers", "peft", "accelerate", "scipy", "numpy",
            "onnxruntime")
Line = dict[str, Any]


def versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    try:
        out["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True, check=False, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out["git"] = "unknown"
    return out


class Rates(dict[str, float]):
    """Units of work per second per side (median over runs), and the runs' times for paired ratios."""

    def __init__(self, rates: dict[str, float], times: dict[str, list[float]]) -> None:
        super().__init__(rates)
        self.times = times

    def ratio(self, peer: str, project: str = "tl") -> float:
        """Median over runs of peer time / project time, each run's sides measured back to back: robust to the
        slow drifts of a shared machine that a ratio of two medians picks up."""
        return float(statistics.median(p / q for p, q in zip(self.times[peer], self.times[project], strict=True)))


def median_rate(work: float, fns: dict[str, Callable[[], Callable[[], Any]]], runs: int) -> Rates:
    """Units of ``work`` per second for each side, median of ``runs`` interleaved runs. Each side is a setup
    (untimed, e.g. loading a fresh pretrained copy) that returns the timed call."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, setup in fns.items():
            fn = setup()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return Rates({name: work / statistics.median(ts) for name, ts in times.items()}, times)


def timed(fn: Callable[[], Any]) -> Callable[[], Callable[[], Any]]:
    """A side without setup."""
    return lambda: fn


def line(workload: str, unit: str, rates: Rates, side: str, peer: str, goal: float | None = None,
         note: str = "") -> Line:
    """One workload's line: the rates (median of runs) and the paired ratio tl / ``side``."""
    project, peer_value, ratio = rates["tl"], rates[side], rates.ratio(side)
    return {"workload": workload, "unit": unit, "project": project, "peer": peer, "peer_value": peer_value,
            "ratio": ratio, "goal": goal, "note": note}


def unavailable(workload: str, peer: str, exc: BaseException) -> Line:
    return {"workload": workload, "unit": "", "project": None, "peer": peer, "peer_value": None, "ratio": None,
            "goal": None, "note": f"peer not importable: {type(exc).__name__}: {exc}"}


def fmt(ln: Line) -> str:
    if ln["project"] is None:
        return f"{ln['workload']}: {ln['peer']}: {ln['note']}"
    goal = f" (goal >= {ln['goal']:g})" if ln["goal"] is not None else ""
    ratio = f"{ln['ratio']:.2f}" if ln["ratio"] is not None else "n/a"
    note = f"  [{ln['note']}]" if ln["note"] else ""
    return (f"{ln['workload']}: tl {ln['project']:.1f} {ln['unit']} | {ln['peer']} {ln['peer_value']:.1f} "
            f"{ln['unit']} | ratio {ratio}{goal}{note}")


# ---------------------------------------------------------------- frozen embedding


def frozen_embedding(tm: TextModel, df: Any, batch: int, runs: int, device: str) -> list[Line]:
    from tl_core.models.embeddings import CacheStats, EmbeddingCache, embed_with_cache
    from tl_core.store import FileStore

    workload = f"frozen embedding ({len(df)} texts, batch {batch}, max len {tm.spec.backbone.max_length})"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        return [unavailable(workload, "sentence-transformers", exc)]
    st = SentenceTransformer(str(minilm_dir()), device=device)
    st.max_seq_length = tm.spec.backbone.max_length
    spec = tm.spec.model_copy(update={"train": tm.spec.train.model_copy(update={"eval_batch_size": batch})})
    backbone = tm.backbone
    text = df["text"].tolist()
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in text]
    out: dict[str, np.ndarray] = {}

    def ours() -> None:
        with tempfile.TemporaryDirectory() as tmp:  # a fresh cache: every example is embedded and written
            enc = tm.encode(df)
            cache = EmbeddingCache(FileStore(Path(tmp)), "cache/embeddings/bench")
            out["tl"] = embed_with_cache(tm.model, backbone, spec, enc, hashes, cache, "bench", None, CacheStats(),
                                         torch.device(device))

    def peer() -> None:
        out["st"] = st.encode(text, batch_size=batch, convert_to_numpy=True)

    with torch.inference_mode():
        rates = median_rate(len(text), {"tl": timed(ours), "st": timed(peer)}, runs)
    tm.model.to("cpu")  # embed() moved it; batch scoring's eager peer runs on the CPU beside onnxruntime
    a = out["tl"] / np.linalg.norm(out["tl"], axis=1, keepdims=True)
    cos = float((a * out["st"]).sum(1).min())
    return [line(workload, "texts/s", rates, "st", f"sentence-transformers {version('sentence-transformers')} encode",
                 1.0, f"min cosine tl vs st {cos:.5f}")]


# ---------------------------------------------------------------- fine-tuning step throughput


def _spec_for(tm: TextModel, strategy: str, batch: int, device: str) -> Any:
    from tl_core.config import parse_spec

    raw = tm.spec.model_dump(mode="json")
    raw["labels"] = tm.labels
    raw["train"].update(strategies=[strategy], epochs=1, warmup_epochs=0, batch_size=batch, eval_batch_size=batch,
                        patience=5, device=device)
    return parse_spec(raw)


def _ours_finetune(tm: TextModel, strategy: str, train: Any, val: Any, batch: int, device: str) -> Callable[[], Any]:
    from tl_core.models.backbones import Classifier
    from tl_core.train.finetune import finetune

    bb = tm.fresh_backbone()
    model = Classifier(bb.module, bb.kind, bb.num_features, len(tm.labels))
    spec = _spec_for(tm, strategy, batch, device)
    return lambda: finetune(model, bb, strategy, spec, train, val, (None, None), lambda: None, lambda blob: None,
                            device=torch.device(device))


def _hf_trainer(tm: TextModel, strategy: str, rows: list[dict[str, Any]], batch: int, steps: int,
                tmp: str, device: str) -> Callable[[], Any]:
    from tl_core.models.backbones import Classifier

    spec = _spec_for(tm, strategy, batch, device)
    bb = tm.fresh_backbone()
    clf = Classifier(bb.module, bb.kind, bb.num_features, len(tm.labels))
    return lambda: _hf_train(clf, bb, spec, strategy, rows, steps, tmp, tm.loaded.tokenizer)


def _hf_train(clf: Any, bb: Any, spec: Any, strategy: str, rows: list[dict[str, Any]], steps: int, tmp: str,
              tokenizer: Any) -> None:
    """peft wrap (LoRA), Trainer construction and training: the peer's side of what finetune() times."""
    from torch import nn
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    batch = spec.train.batch_size
    lr = spec.train.backbone_lr
    if strategy == "lora":
        from peft import LoraConfig, get_peft_model

        from tl_core.models.adapters import default_lora_targets

        lora = spec.train.lora
        clf.backbone = get_peft_model(clf.backbone, LoraConfig(r=lora.r, lora_alpha=lora.alpha,
                                                               lora_dropout=lora.dropout, bias="none",
                                                               target_modules=default_lora_targets(bb)))
        lr = lora.lr or spec.train.lr

    class WithLoss(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.clf = clf

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    labels: torch.Tensor) -> dict[str, torch.Tensor]:
            logits = self.clf(input_ids, attention_mask)
            return {"loss": nn.functional.cross_entropy(logits, labels), "logits": logits}

    args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=batch, max_steps=steps, learning_rate=lr,
                             lr_scheduler_type="cosine", warmup_steps=spec.train.warmup_fraction,
                             weight_decay=spec.train.weight_decay, max_grad_norm=spec.train.grad_clip,
                             train_sampling_strategy="group_by_length", logging_strategy="no", save_strategy="no",
                             report_to=[], use_cpu=spec.train.device == "cpu", bf16=spec.train.device == "cuda",
                             dataloader_num_workers=0, seed=0, disable_tqdm=True,
                             remove_unused_columns=False)
    trainer = Trainer(model=WithLoss(), args=args, train_dataset=rows,  # type: ignore[arg-type]
                      data_collator=DataCollatorWithPadding(tokenizer))
    with contextlib.redirect_stdout(io.StringIO()):  # its end-of-training metrics line
        trainer.train()


def finetuning(tm: TextModel, df: Any, batch: int, steps: int, runs: int, device: str) -> list[Line]:
    from tl_core.models.preprocessing import Encoded

    enc = tm.encode(df)
    n = min(len(enc) - batch, batch * steps)
    train = Encoded(enc.kind, enc.ids[:n], enc.values[:n], enc.labels[:n])
    val = Encoded(enc.kind, enc.ids[n:n + batch], enc.values[n:n + batch], enc.labels[n:n + batch])
    rows = [{"input_ids": list(map(int, v)), "attention_mask": [1] * len(v), "labels": int(y)}
            for v, y in zip(train.values, train.labels, strict=True)]
    lines = []
    for strategy in ("lora", "full"):
        workload = f"{strategy} fine-tuning ({n // batch} steps, batch {batch}, max len {tm.spec.backbone.max_length})"
        try:
            import transformers.trainer  # noqa: F401
            if strategy == "lora":
                import peft  # noqa: F401
        except ImportError as exc:
            lines.append(unavailable(workload, "transformers Trainer + peft", exc))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            sides = {"tl": lambda s=strategy: _ours_finetune(tm, s, train, val, batch, device),
                     "hf": lambda s=strategy, t=tmp: _hf_trainer(tm, s, rows, batch, n // batch, t, device)}
            rates = median_rate(n, sides, runs)  # type: ignore[arg-type]
        peer = f"transformers {version('transformers')} Trainer" + (f" + peft {version('peft')}"
                                                                     if strategy == "lora" else "")
        lines.append(line(workload, "examples/s", rates, "hf", peer, 1.0,
                          "tl includes one validation batch; both include setup (peft wrap, optimizer)"))
    return lines


# ---------------------------------------------------------------- paired bootstrap


def _f1_acc(y: np.ndarray, pred: np.ndarray, c: int, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """accuracy and macro-F1 along ``axis`` (classes present in y or pred), vectorised over the other axes."""
    acc = (y == pred).mean(axis)
    f1s = np.zeros(acc.shape)
    used = np.zeros(acc.shape)
    for k in range(c):
        tp = ((y == k) & (pred == k)).sum(axis)
        denom = (y == k).sum(axis) + (pred == k).sum(axis)
        f1s = f1s + np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)
        used = used + (denom > 0)
    return acc, f1s / used


def bootstrap(n: int, n_boot: int, runs: int) -> list[Line]:
    from tl_core.evaluate.bootstrap import interval, paired_bootstrap

    rng = np.random.default_rng(0)
    c = 8
    y = rng.integers(0, c, n)
    pa = np.where(rng.random(n) < 0.80, y, rng.integers(0, c, n))
    pb = np.where(rng.random(n) < 0.78, y, rng.integers(0, c, n))
    probs = {m: np.eye(c)[p] * 0.9 + 0.1 / c for m, p in (("a", pa), ("b", pb))}
    workload = f"paired bootstrap (accuracy + macro-F1 diff, {n} examples, {c} classes, {n_boot} replicates)"
    out: dict[str, Any] = {}

    def ours() -> None:
        r = paired_bootstrap(y, probs, {"overall": np.ones(n, bool)}, n_boot, 0)
        out["tl"] = [interval(r.samples["a"][m][:, 0] - r.samples["b"][m][:, 0], 0.95) for m in ("accuracy",
                                                                                                  "macro_f1")]

    def loop() -> None:
        g = np.random.default_rng(0)
        diffs = np.empty((n_boot, 2))
        for i in range(n_boot):
            idx = g.integers(0, n, n)
            acc_a, f1_a = _f1_acc(y[idx], pa[idx], c)
            acc_b, f1_b = _f1_acc(y[idx], pb[idx], c)
            diffs[i] = acc_a - acc_b, f1_a - f1_b
        out["loop"] = np.quantile(diffs, [0.025, 0.975], axis=0)

    sides: dict[str, Callable[[], Callable[[], Any]]] = {"tl": timed(ours), "loop": timed(loop)}
    try:
        from scipy import stats
    except ImportError as exc:
        scipy_line: Line | None = unavailable(workload, "scipy.stats.bootstrap", exc)
    else:
        def scipy_boot() -> None:
            def stat(yy: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
                acc_a, f1_a = _f1_acc(yy, a, c, axis)
                acc_b, f1_b = _f1_acc(yy, b, c, axis)
                return np.stack([acc_a - acc_b, f1_a - f1_b])

            out["scipy"] = stats.bootstrap((y, pa, pb), stat, paired=True, vectorized=True, n_resamples=n_boot,
                                           batch=100, method="percentile", random_state=0).confidence_interval
        sides["scipy"] = timed(scipy_boot)
        scipy_line = None
    rates = median_rate(1, sides, runs)  # runs per second
    note = f"acc diff 95% tl [{out['tl'][0][0]:+.4f}, {out['tl'][0][1]:+.4f}]"
    lines = []
    if scipy_line is None:
        lo, hi = out["scipy"]
        note_s = f"{note}, scipy [{lo[0]:+.4f}, {hi[0]:+.4f}]"
        lines.append(line(workload, "runs/s", rates, "scipy", f"scipy {version('scipy')} stats.bootstrap(paired)",
                          note=note_s))
    else:
        lines.append(scipy_line)
    lines.append(line(workload, "runs/s", rates, "loop", "plain numpy loop",
                      note=f"{note}, loop [{out['loop'][0][0]:+.4f}, {out['loop'][1][0]:+.4f}]"))
    return lines


# ---------------------------------------------------------------- batch scoring


def batch_scoring(tm: TextModel, df: Any, batch: int, runs: int) -> list[Line]:
    from tl_core.export.onnx_export import onnx_inputs
    from tl_core.export.predict import score

    fp32, _ = export_pair(tm)
    served = tm.served(fp32)
    tok = tm.loaded.tokenizer
    max_len = tm.spec.backbone.max_length
    text = df["text"].tolist()
    chunks = [text[i:i + batch] for i in range(0, len(text), batch)]
    workload = f"batch scoring ({len(text)} texts, batch {batch}, max len {max_len})"

    def tokens(chunk: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        t = tok(chunk, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return t["input_ids"], t["attention_mask"]

    def bare() -> None:
        for chunk in chunks:
            served.session.run(["logits", "probabilities"], onnx_inputs("transformers", tokens(chunk)))

    def eager() -> None:
        with torch.inference_mode():
            for chunk in chunks:
                torch.softmax(tm.model(*tokens(chunk)), -1)

    rates = median_rate(len(text), {"tl": timed(lambda: score(served, df, batch_size=batch)), "ort": timed(bare),
                                    "eager": timed(eager)}, runs)
    return [line(workload, "texts/s", rates, "ort", "bare onnxruntime session", 0.9,
                 "both tokenize per batch; tl also checks inputs and encodes with the stored preprocessing"),
            line(workload, "texts/s", rates, "eager", f"torch {torch.__version__} eager")]


# ---------------------------------------------------------------- main


def record(lines: list[Line], settings: dict[str, Any]) -> Path:
    path = ROOT / ".tl" / "bench" / "peers.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    entry = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "versions": versions(), "hardware": hardware(),
             "settings": settings, "lines": lines}
    with path.open("a") as fh:
        fh.write(json.dumps(entry, default=float) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per side; the median is printed")
    parser.add_argument("--texts", type=int, default=400, help="real texts for embedding and scoring (<= 400)")
    parser.add_argument("--batch", type=int, default=32, help="batch size of every workload")
    parser.add_argument("--steps", type=int, default=6, help="fine-tuning steps per run")
    parser.add_argument("--examples", type=int, default=10_000, help="examples of the bootstrap workload")
    parser.add_argument("--replicates", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--smoke", action="store_true", help="tiny settings: checks the script, not the figures")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="embedding and fine-tuning on this device (bf16 autocast on CUDA on both sides); "
                             "the bootstrap and batch scoring stay on the CPU")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    if args.smoke:
        args.runs, args.texts, args.steps, args.examples, args.replicates = 1, 64, 2, 2000, 100
    settings = {k: v for k, v in vars(args).items()}
    df = texts(args.texts)
    with workdir() as tmp:
        tm = build(Path(tmp))
        print(f"bench/peers.py: {tm.spec.backbone.name} on {args.device}, torch threads {torch.get_num_threads()}, "
              f"median of {args.runs} runs per side; ratio = median over runs of peer time / tl time (> 1: tl faster)",
              flush=True)
        lines: list[Line] = []
        for make in (lambda: frozen_embedding(tm, df, args.batch, args.runs, args.device),
                     lambda: finetuning(tm, texts(), args.batch, args.steps, args.runs, args.device),
                     lambda: bootstrap(args.examples, args.replicates, args.runs),
                     lambda: batch_scoring(tm, df, args.batch, args.runs)):
            for ln in make():
                lines.append(ln)
                print(fmt(ln), flush=True)
    print(f"recorded in {record(lines, settings)}")


if __name__ == "__main__":
    main()
