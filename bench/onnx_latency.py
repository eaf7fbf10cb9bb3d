"""int8 vs fp32 onnxruntime vs eager PyTorch on the real all-MiniLM-L6-v2 + a fitted linear head.

Prints median latency at batch 1 and batch 32 (real Debian package descriptions, tokenized as served, padded to
the batch's longest), measured side by side in one process with the engines interleaved, and the ratios. Then
the accuracy cost of int8 on the 200 held-out texts, as the int8 gate measures it (paired bootstrap, default
ExportSpec policy). Goals: onnxruntime fp32 >= 1.5x eager at batch 1 (issue 7); int8 >= 1.5x fp32 at batch 1 on
CPU (issue 19).

    .venv/bin/python bench/onnx_latency.py [--device cuda] [--repeats 50] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from text_model import build, export_pair, workdir

from tl_core.config import ExportSpec
from tl_core.evaluate.int8 import measure_int8
from tl_core.export.onnx_export import onnx_inputs
from tl_core.export.predict import score
from tl_core.gate.int8 import decide_int8

ROUNDS = 5


def median_s(fn: Callable[[], Any], repeats: int) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def quiet_options() -> ort.SessionOptions:
    """No spinning worker threads between runs: spinning onnxruntime threads would slow the interleaved eager
    runs (and each other) on a small machine."""
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def latency_rows(tm: Any, fp32: Any, int8: Any, device: torch.device, repeats: int) -> list[tuple[Any, ...]]:
    providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
    s32 = ort.InferenceSession(str(fp32), quiet_options(), providers=providers)
    s8 = ort.InferenceSession(str(int8), quiet_options(), providers=["CPUExecutionProvider"])  # integer kernels
    model = tm.model.to(device)
    rows = []
    for size in (1, 32):
        batches = tm.batches(tm.test, size)[:8]  # 8 different real batches, cycled
        feeds = [onnx_inputs("transformers", b) for b in batches]
        on_device = [tuple(t.to(device) for t in b) for b in batches]
        it = {"e": 0, "f": 0, "i": 0}

        def eager(on_device: list[Any] = on_device, it: dict[str, int] = it) -> None:
            it["e"] += 1
            model(*on_device[it["e"] % len(on_device)])
            if device.type == "cuda":
                torch.cuda.synchronize()

        def run32(feeds: list[Any] = feeds, it: dict[str, int] = it) -> None:
            it["f"] += 1
            s32.run(["logits"], feeds[it["f"] % len(feeds)])

        def run8(feeds: list[Any] = feeds, it: dict[str, int] = it) -> None:
            it["i"] += 1
            s8.run(["logits"], feeds[it["i"] % len(feeds)])

        times: dict[str, list[float]] = {"eager": [], "fp32": [], "int8": []}
        for _ in range(ROUNDS):  # interleave the engines in rounds so background load affects all alike
            for name, fn in (("eager", eager), ("fp32", run32), ("int8", run8)):
                times[name].append(median_s(fn, max(1, repeats // ROUNDS)))
        seq = float(np.mean([b[0].shape[1] for b in batches]))
        rows.append((size, seq, *(statistics.median(times[k]) for k in ("eager", "fp32", "int8"))))
    tm.model.to("cpu")
    return rows


def accuracy_cost(tm: Any, fp32: Any, int8: Any, n_boot: int) -> None:
    test = tm.test
    _, p32 = score(tm.served(fp32), test)
    _, p8 = score(tm.served(int8), test)
    y = np.array([tm.labels.index(v) for v in test["label"]])
    policy = ExportSpec()
    for metric in ("accuracy", "macro_f1"):
        m = measure_int8(y, p32, p8, metric, n_boot, 0, 0.95)
        lo, hi = m["diff_interval"]
        print(f"{metric:<9} fp32 {m['fp32']:.4f}  int8 {m['int8']:.4f}  int8-fp32 {m['int8'] - m['fp32']:+.4f} "
              f"(95% paired bootstrap [{lo:+.4f}, {hi:+.4f}])")
    lo, hi = m["ece_diff_interval"]
    print(f"ECE       fp32 {m['ece_fp32']:.4f}  int8 {m['ece_int8']:.4f}  (int8-fp32 95% [{lo:+.4f}, {hi:+.4f}])")
    print(f"top-1 agreement {m['agreement']:.4f} ({m['disagreements']} of {m['examples']} differ); "
          f"max |prob diff| {np.abs(p32 - p8).max():.4f}")
    passed, reasons = decide_int8(m, policy)
    print(f"int8 gate with the default ExportSpec policy: {'PASS' if passed else 'FAIL'}")
    for r in reasons:
        print(f"  {r.text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--smoke", action="store_true", help="few repeats and bootstrap replicates (a quick check)")
    args = parser.parse_args()
    repeats, n_boot = (6, 100) if args.smoke else (args.repeats, 1000)
    torch.set_grad_enabled(False)
    with workdir() as tmp:
        from pathlib import Path

        tm = build(Path(tmp))
        fp32, int8 = export_pair(tm)
        sizes = fp32.stat().st_size / 1e6, int8.stat().st_size / 1e6
        rows = latency_rows(tm, fp32, int8, torch.device(args.device), repeats)
        print(f"{tm.spec.backbone.name} + linear head ({len(tm.labels)} classes), real Debian descriptions, device "
              f"{args.device}, torch threads {torch.get_num_threads()}, onnxruntime {ort.__version__}, median of "
              f"{repeats}; ONNX fp32 {sizes[0]:.1f} MB, int8 {sizes[1]:.1f} MB")
        print(f"{'batch':>5}{'seq':>6}{'eager ms':>10}{'fp32 ms':>10}{'int8 ms':>10}{'fp32/eager':>12}"
              f"{'int8/fp32':>11}{'int8/eager':>12}   (speed-up: higher is faster)")
        for size, seq, e, f, i in rows:
            print(f"{size:>5}{seq:>6.0f}{e * 1e3:>10.2f}{f * 1e3:>10.2f}{i * 1e3:>10.2f}{e / f:>11.2f}x"
                  f"{f / i:>10.2f}x{e / i:>11.2f}x")
        print(f"load average (1 min) {os.getloadavg()[0]:.2f} after the latency runs on {os.cpu_count()} CPUs")
        print(f"accuracy cost of int8 on {len(tm.test)} held-out texts (head fitted on the other {len(tm.train)}):")
        accuracy_cost(tm, fp32, int8, n_boot)


if __name__ == "__main__":
    main()
