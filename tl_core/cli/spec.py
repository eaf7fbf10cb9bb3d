"""`tl validate-spec`."""

from __future__ import annotations

import argparse

from tl_core.cli.util import emit


def cmd_validate_spec(args: argparse.Namespace) -> int:
    from tl_core.config import backbone_problems, load_spec
    from tl_core.errors import SpecError

    for path in args.spec:
        spec = load_spec(path)
        problems = backbone_problems(spec.backbone)
        if problems:
            raise SpecError(f"{path}: the spec is valid but cannot run on this machine:\n  " + "\n  ".join(problems))
        emit(
            args,
            {"spec": path, "name": spec.name, "valid": True, "fingerprint": spec.fingerprint()},
            f"{path}: OK (model {spec.name!r}, {spec.modality}, strategies {', '.join(spec.train.strategies)})",
        )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("validate-spec", help="validate one or more model spec YAML files")
    p.add_argument("spec", nargs="+", help="path to a spec YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_validate_spec)
