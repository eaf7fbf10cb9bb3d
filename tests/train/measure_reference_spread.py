"""Measure how far the seeded tiny learning curves legitimately move, and store curves + tolerance.

tests/train/test_train.py::test_seeded_tiny_training_matches_stored_curve compares three seeded tiny runs
(text-full, text-lora, image-full) with tests/train/reference_curves.json. Same code and pins still give
slightly different floats on another CPU (other SIMD kernels, thread count, oneDNN or not), so the test
allows a tolerance; this script measures where it comes from and checks that it still catches a recipe
change.

For every case it runs the training once per kernel configuration, each in a fresh subprocess, one at a time:
torch threads 1 and 2 x oneDNN (torch.backends.mkldnn.enabled) on and off x CPU kernels native, capped at
AVX2 and without SIMD (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS: how another CPU
computes), each with a different PYTHONHASHSEED (a seed the recipe must not depend on). Then, per case,
epoch and figure:

  reference  midpoint of the configurations' values (what the test compares with)
  spread     largest |value - reference| over the configurations
  tolerance  max(floor, SAFETY x spread)
  recipe     |value - reference| of the same run with the default weight decay changed

and it fails (exit 1) unless, for every case, the recipe change moves some figure by at least
MIN_RATIO x its tolerance. Run it after an intended recipe change and commit the JSON with the reason:

    .venv/bin/python tests/train/measure_reference_spread.py            # about 15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUT = HERE / "reference_curves.json"
FIGURES = ("train_loss", "val_loss", "val_metric")
# CPU kernel sets: what this CPU has, what an AVX2-only CPU has, and no SIMD beyond SSE4 at all.
KERNELS: dict[str, dict[str, str]] = {
    "native": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
# Each configuration: (torch threads, oneDNN on, CPU kernel set).
CONFIGS = [(threads, mkldnn, kernels) for kernels in KERNELS for mkldnn in (True, False) for threads in (1, 2)]
SAFETY = 10.0  # another CPU can land further out than the configurations measured here
# Floors, for figures that no configuration here moved: losses at 1e-5 (about 100 float32 roundings of a loss
# near 1; the text cases move by at most ~2e-7 here); macro-F1 on 12 validation rows: one flipped example
# moves it by up to about 0.2.
FLOOR = {"train_loss": 1e-5, "val_loss": 1e-5, "val_metric": 0.2}
RECIPE_CHANGE = {"weight_decay": 0.0}  # the default is 0.01: dropping it must fail the test
MIN_RATIO = 3.0
TIMEOUT_S = 900


def worker(case: str, threads: int, mkldnn: bool, overrides: dict[str, Any]) -> None:
    """Train one case in this process and print its curves as JSON (the last line of stdout)."""
    import torch

    torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = mkldnn
    sys.path.insert(0, str(HERE.parent))
    from model_fixtures import make_run, reference_case, tiny_bert_dir
    from tl_core.artifacts import TrainReport
    from tl_core.train.run import run_train

    with tempfile.TemporaryDirectory() as tmp:
        spec, examples = reference_case(case, Path(tmp).as_uri(), tiny_bert_dir(Path(tmp) / "models"), **overrides)
        ctx = make_run(spec, examples)
        strategy = spec.train.strategies[0]
        run_train(ctx, strategy)
        curves = [c.model_dump() for c in ctx.read(TrainReport, strategy).curves]
    print(json.dumps({"curves": curves, "capability": torch.backends.cpu.get_cpu_capability()}))


def run_one(case: str, threads: int, mkldnn: bool, kernels: str, hash_seed: int,
            overrides: dict[str, Any] | None = None) -> list[dict[str, float]]:
    env = {**os.environ, "PYTHONHASHSEED": str(hash_seed), **KERNELS[kernels]}
    cmd = [sys.executable, __file__, "--worker", case, "--threads", str(threads), "--mkldnn", str(int(mkldnn)),
           "--overrides", json.dumps(overrides or {})]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{case} threads={threads} mkldnn={mkldnn} kernels={kernels} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {case:10} threads={threads} mkldnn={int(mkldnn)} kernels={out['capability']:7} "
          f"overrides={overrides or {}}: train_loss {[round(c['train_loss'], 6) for c in out['curves']]}", flush=True)
    return out["curves"]  # type: ignore[no-any-return]


def per_epoch(runs: list[list[dict[str, float]]], fn: Any) -> list[dict[str, float]]:
    epochs = [c["epoch"] for c in runs[0]]
    if any([c["epoch"] for c in r] != epochs for r in runs):
        raise SystemExit(f"configurations ran different epochs: {[[c['epoch'] for c in r] for r in runs]}")
    return [{"epoch": e, **{f: fn([r[i][f] for r in runs]) for f in FIGURES}} for i, e in enumerate(epochs)]


def measure(case: str) -> dict[str, Any]:
    runs = [run_one(case, t, m, a, seed) for seed, (t, m, a) in enumerate(CONFIGS)]
    reference = per_epoch(runs, lambda v: (min(v) + max(v)) / 2)
    spread = per_epoch(runs, lambda v: (max(v) - min(v)) / 2)
    tolerance = [{"epoch": s["epoch"], **{f: max(FLOOR[f], SAFETY * s[f]) for f in FIGURES}} for s in spread]
    changed = run_one(case, 2, True, "native", 0, RECIPE_CHANGE)
    if [c["epoch"] for c in changed] != [c["epoch"] for c in reference]:
        raise SystemExit(f"{case}: the recipe change ran epochs {[c['epoch'] for c in changed]}")
    deviation = [{"epoch": r["epoch"], **{f: abs(c[f] - r[f]) for f in FIGURES}}
                 for c, r in zip(changed, reference, strict=True)]
    ratio = max(d[f] / t[f] for d, t in zip(deviation, tolerance, strict=True) for f in FIGURES)
    return {"reference": reference, "spread": spread, "tolerance": tolerance, "recipe_deviation": deviation,
            "recipe_ratio": ratio}


def report(case: str, m: dict[str, Any]) -> None:
    print(f"\n{case}: per epoch, spread (max |config - reference|) / tolerance / deviation with {RECIPE_CHANGE}")
    for s, t, d in zip(m["spread"], m["tolerance"], m["recipe_deviation"], strict=True):
        cells = "  ".join(f"{f} {s[f]:.2e} / {t[f]:.2e} / {d[f]:.2e}" for f in FIGURES)
        print(f"  epoch {s['epoch']}: {cells}")
    print(f"  recipe change / tolerance, largest over epochs and figures: {m['recipe_ratio']:.1f}x")


def main() -> int:
    import torch

    results = {}
    for case in ("text-full", "text-lora", "image-full"):
        print(f"{case}: {len(CONFIGS)} kernel configurations + 1 recipe change", flush=True)
        results[case] = measure(case)
    for case, m in results.items():
        report(case, m)
    weak = {c: round(m["recipe_ratio"], 2) for c, m in results.items() if m["recipe_ratio"] < MIN_RATIO}
    doc = {
        "about": "Written by tests/train/measure_reference_spread.py; read by tests/train/test_train.py. curves: "
                 "midpoint over the kernel configurations; tolerance: max(floor, safety x spread).",
        "measured_on": {"machine": platform.machine(), "processor": platform.processor() or "unknown",
                        "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()},
        "configurations": [{"threads": t, "mkldnn": m, "kernels": k, "pythonhashseed": i}
                           for i, (t, m, k) in enumerate(CONFIGS)],
        "safety_factor": SAFETY, "floor": FLOOR, "recipe_change": RECIPE_CHANGE, "min_ratio": MIN_RATIO,
        "curves": {c: m["reference"] for c, m in results.items()},
        "spread": {c: m["spread"] for c, m in results.items()},
        "tolerance": {c: m["tolerance"] for c, m in results.items()},
        "recipe_deviation": {c: m["recipe_deviation"] for c, m in results.items()},
        "recipe_ratio": {c: m["recipe_ratio"] for c, m in results.items()},
    }
    OUT.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"\nwrote {OUT}")
    if weak:
        print(f"FAIL: the recipe change {RECIPE_CHANGE} is not clearly outside the tolerance "
              f"(ratio below {MIN_RATIO}): {weak}")
        return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", metavar="CASE")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mkldnn", type=int, default=1)
    parser.add_argument("--overrides", default="{}")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.threads, bool(args.mkldnn), json.loads(args.overrides))
        sys.exit(0)
    sys.exit(main())
