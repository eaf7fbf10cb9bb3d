"""``tl``: the command line. Every subcommand calls the same tl_core function a DAG task calls."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tl_core.errors import TLError

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


def _emit(args: argparse.Namespace, payload: Any, text: str | None = None) -> None:
    """Print JSON with --json, else the human text (or JSON when there is none)."""
    if getattr(args, "json", False) or text is None:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(text.rstrip("\n") + "\n")


def cmd_validate_spec(args: argparse.Namespace) -> int:
    from tl_core.config import load_spec

    for path in args.spec:
        spec = load_spec(path)
        _emit(
            args,
            {"spec": path, "name": spec.name, "valid": True, "fingerprint": spec.fingerprint()},
            f"{path}: OK (model {spec.name!r}, {spec.modality}, strategies {', '.join(spec.train.strategies)})",
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl", description="tl-retrain: transfer-learning retraining steps (the same ones the DAGs run)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    p = sub.add_parser("validate-spec", help="validate one or more model spec YAML files")
    p.add_argument("spec", nargs="+", help="path to a spec YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_validate_spec)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except TLError as exc:
        sys.stderr.write(f"tl {args.command}: error: {exc}\n")
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
