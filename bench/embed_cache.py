"""Embedding cache on the text demo: a second nightly run where ~10% of the examples are new.

Runs snapshot -> audit -> split -> frozen training for two consecutive logical dates in a temporary
file store (the real all-MiniLM-L6-v2, CPU) and prints each run's embedding time, hits and misses,
and the ratio. Goal (issue 4): the second run spends at most 0.2 of the first run's embedding time.

    .venv/bin/python bench/embed_cache.py [--rows-per-day 120]
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import date, timedelta
from pathlib import Path

import yaml

from tl_core.artifacts import TrainReport
from tl_core.config import parse_spec
from tl_core.demo.data import write_demo_data
from tl_core.pipeline import step_audit, step_snapshot, step_split, step_train
from tl_core.runs import RunContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spec", default="configs/support-tickets.yaml")
    parser.add_argument("--rows-per-day", type=int, default=120)
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.spec).read_text())
    with tempfile.TemporaryDirectory() as tmp:
        uri = Path(tmp).as_uri()
        raw["data"]["root"] = uri + "/data"
        raw["store"] = uri + "/store"
        raw["train"]["strategies"] = ["frozen"]
        spec = parse_spec(raw)
        spec_path = Path(tmp) / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec.model_dump(mode="json")))
        day1 = date(2026, 11, 1)
        # window_days + 1 days: the next day's window drops the oldest day and adds one new day (~1/15 new)
        write_demo_data(spec, end_date=day1 + timedelta(days=1), days=spec.data.window_days + 2,
                        rows_per_day=args.rows_per_day)
        rows = []
        for i, d in enumerate((day1, day1 + timedelta(days=1))):
            run_id = f"bench-{i}"
            step_snapshot(str(spec_path), run_id, d.isoformat())
            step_audit(str(spec_path), run_id)
            step_split(str(spec_path), run_id)
            step_train(str(spec_path), run_id, "frozen")
            used = RunContext.open(spec, run_id).read(TrainReport, "frozen").cache
            cache = used.model_dump() if used is not None else {"hits": 0, "misses": 0, "embed_s": 0.0}
            rows.append((d, cache))
    print(f"text demo, {spec.backbone.name}, frozen strategy, CPU")
    print(f"{'logical date':<14}{'examples':>9}{'hits':>7}{'misses':>8}{'embed s':>9}")
    for d, c in rows:
        print(f"{d.isoformat():<14}{c['hits'] + c['misses']:>9}{c['hits']:>7}{c['misses']:>8}{c['embed_s']:>9.2f}")
    first, second = rows[0][1]["embed_s"], rows[1][1]["embed_s"]
    new_share = rows[1][1]["misses"] / max(1, rows[1][1]["hits"] + rows[1][1]["misses"])
    print(f"second/first embedding time: {second / first:.3f} (new examples: {new_share:.1%})")


if __name__ == "__main__":
    main()
