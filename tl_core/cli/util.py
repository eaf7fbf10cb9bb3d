"""Helpers shared by the `tl` subcommand modules."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any


def emit(args: argparse.Namespace, payload: Any, text: str | None = None) -> None:
    """Print JSON with --json (or when there is no human form), else the human text."""
    if getattr(args, "json", False) or text is None:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def run_id_arg(value: str) -> str:
    """argparse type of --run: a run id that can name one run folder (see tl_core.runs.check_run_id)."""
    from tl_core.errors import InvalidRunId
    from tl_core.runs import check_run_id

    try:
        return check_run_id(value)
    except InvalidRunId as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def date_arg(value: str) -> str:
    """argparse type of a calendar-date flag: YYYY-MM-DD that exists (2026-02-30 does not); returns it as given."""
    try:
        date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a calendar date YYYY-MM-DD, got {value!r}") from None
    if len(value) != 10:
        raise argparse.ArgumentTypeError(f"expected a calendar date YYYY-MM-DD, got {value!r}")
    return value


def positive_int(value: str) -> int:
    """argparse type of a count that must be 1 or more."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value!r}")
    return number


def add_spec_run(p: argparse.ArgumentParser, run_required: bool = True) -> None:
    """The common `--spec S --run R` pair (plus --json)."""
    p.add_argument("--spec", required=True, help="model spec YAML")
    p.add_argument("--run", required=run_required, type=run_id_arg,
                   help="run id (Airflow run id or manual-<timestamp>)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
