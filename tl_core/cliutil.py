"""Helpers shared by the `tl` subcommand modules."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def emit(args: argparse.Namespace, payload: Any, text: str | None = None) -> None:
    """Print JSON with --json (or when there is no human form), else the human text."""
    if getattr(args, "json", False) or text is None:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def add_spec_run(p: argparse.ArgumentParser, run_required: bool = True) -> None:
    """The common `--spec S --run R` pair (plus --json)."""
    p.add_argument("--spec", required=True, help="model spec YAML")
    p.add_argument("--run", required=run_required, help="run id (Airflow run id or manual-<timestamp>)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
