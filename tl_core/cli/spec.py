"""`tl validate-spec`."""

from __future__ import annotations

import argparse
import sys

from tl_core.cli.util import emit


def cmd_validate_spec(args: argparse.Namespace) -> int:
    from tl_core.config import backbone_problems, load_spec, relative_store_uris, resolve_store_uri
    from tl_core.errors import SpecError

    for path in args.spec:
        spec = load_spec(path)
        problems = backbone_problems(spec.backbone)
        if problems:
            raise SpecError(f"{path}: the spec is valid but cannot run on this machine:\n  " + "\n  ".join(problems))
        warnings = [f"{field}: {uri} is relative: it resolves against the working directory (here "
                    f"{resolve_store_uri(uri)}), so commands run elsewhere see another store; use an absolute "
                    "file:///... path or s3://" for field, uri in relative_store_uris(spec).items()]
        for warning in warnings:
            print(f"{path}: warning: {warning}", file=sys.stderr)
        emit(
            args,
            {"spec": path, "name": spec.name, "valid": True, "fingerprint": spec.fingerprint(), "warnings": warnings},
            f"{path}: OK (model {spec.name!r}, {spec.modality}, strategies {', '.join(spec.train.strategies)})",
        )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("validate-spec", help="validate one or more model spec YAML files")
    p.add_argument("spec", nargs="+", help="path to a spec YAML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_validate_spec)
