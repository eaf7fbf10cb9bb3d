"""``tl``: the command line. Every subcommand calls the same tl_core function a DAG task calls."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable, Sequence

from tl_core.errors import TLError

logger = logging.getLogger(__name__)

Handler = Callable[[argparse.Namespace], int]


# One module per command group, each adding its subcommands (handlers import heavy dependencies lazily).
COMMAND_MODULES = (
    "tl_core.cli.spec",
    "tl_core.cli.data",
    "tl_core.cli.train",
    "tl_core.cli.export",
    "tl_core.cli.evaluate",
    "tl_core.cli.run",
    "tl_core.cli.registry",
    "tl_core.cli.ops",
    "tl_core.cli.monitor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tl", description="tl-retrain: transfer-learning retraining steps (the same ones the DAGs run)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")

    for module in COMMAND_MODULES:
        importlib.import_module(module).add_commands(sub)

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
    except (ValueError, OSError) as exc:
        # Not raised on purpose (a library's complaint about a value or a file): still one line naming the
        # command, never a traceback, unless -v asks for it.
        if args.verbose:
            traceback.print_exc(file=sys.stderr)
        detail = " ".join(str(exc).split()) or repr(exc)
        hint = "" if args.verbose else " (run with -v for the traceback)"
        sys.stderr.write(f"tl {args.command}: error: {type(exc).__name__}: {detail}{hint}\n")
        return 1

