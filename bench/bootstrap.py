"""Paired bootstrap speed: 1,000 replicates over 100,000 test examples and 30 slices, two models.

Goal (issue 5): under 5 seconds on the 2-core CI machine. Prints the median of --repeats timings.

    .venv/bin/python bench/bootstrap.py [--n 100000] [--slices 30] [--replicates 1000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from tl_core.evaluate.bootstrap import paired_bootstrap
from tl_core.evaluate.metrics import softmax
from tl_core.evaluate.run import compare_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--slices", type=int, default=30)
    parser.add_argument("--classes", type=int, default=5)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, args.classes, args.n)
    probs = {}
    for name in ("candidate", "champion"):
        logits = rng.normal(size=(args.n, args.classes))
        logits[np.arange(args.n), y] += 1.5
        probs[name] = softmax(logits)
    # 30 slices from two slice columns (25 regions + 5 channels), as a spec would define them
    region = rng.integers(0, args.slices - 5, args.n)
    channel = rng.integers(0, 5, args.n)
    groups = {"overall": np.ones(args.n, bool)}
    groups.update({f"region={r}": region == r for r in range(args.slices - 5)})
    groups.update({f"channel={c}": channel == c for c in range(5)})
    core, full, cpu = [], [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        paired_bootstrap(y, probs, groups, args.replicates, 0, ("ece",))
        core.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        t0 = time.perf_counter()
        compare_models(y, probs, groups, "candidate", args.replicates, 0, 0.95, ("ece",))
        full.append(time.perf_counter() - t0)
    print(f"paired bootstrap: {args.replicates} replicates x {args.n} examples x {len(groups) - 1} slices, "
          f"{args.classes} classes, 2 models; accuracy, balanced accuracy, macro-F1 per slice, ECE overall")
    for label, times in (("resampling + metrics (paired_bootstrap)", core),
                         ("with intervals and quantiles (compare_models)", full)):
        print(f"{label}: median {statistics.median(times):.2f}s over {args.repeats} runs "
              f"(min {min(times):.2f}s, max {max(times):.2f}s); goal < 5 s")
    print(f"paired_bootstrap CPU time (all threads): median {statistics.median(cpu):.2f}s; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other work slows the wall time)")


if __name__ == "__main__":
    main()
