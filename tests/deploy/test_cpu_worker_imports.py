"""Steps that run on CPU workers (the Airflow image has no torch) must not import torch."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
import tl_core.pipeline, tl_core.train.select, tl_core.registry, tl_core.gate
import tl_core.data.snapshot, tl_core.data.audit, tl_core.data.split, tl_core.evaluate.report
from tl_core.registry import Registry
reg = Registry(sys.argv[1], "cpu-check")
assert reg.champion() is None and reg.history() == []
print("ok", sorted(m for m in ("timm", "transformers", "peft") if m in sys.modules))
"""


def test_cpu_side_steps_do_not_need_torch(tmp_path) -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE, tmp_path.as_uri()], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok []"
