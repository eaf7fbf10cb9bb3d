"""`tl export`, `tl predict`."""

from __future__ import annotations

import argparse

from tl_core.cli.util import add_spec_run, emit, positive_int


def cmd_export(args: argparse.Namespace) -> int:
    from tl_core.artifacts import Int8Report, ParityReport
    from tl_core.pipeline import _ctx, step_export

    uri = step_export(args.spec, args.run)
    ctx = _ctx(args.spec, args.run)
    parity = ctx.read(ParityReport)
    int8 = ctx.read_optional(Int8Report)
    text = (f"exported {uri}\nparity on {parity.examples} held-out examples: max |logit diff| "
            f"{parity.max_abs_logit_diff:.2e}, ECE torch {parity.ece_torch:.4f} vs onnx {parity.ece_onnx:.4f}")
    if int8 is not None:
        text += f"\nint8 gate: {int8.decision}" + "".join(f"\n  {r.text}" for r in int8.reasons)
    emit(args, {"onnx": uri, "parity": parity.model_dump(mode="json"),
                "int8": int8.model_dump(mode="json") if int8 is not None else None}, text)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tl_core.config import load_spec
    from tl_core.export.predict import predict_file

    spec = load_spec(args.spec)
    result = predict_file(spec, args.model, args.input, args.output, batch_size=args.batch_size,
                          precision=args.precision)
    emit(args, result, f"scored {result['rows']} rows with {result['model']}@{result['model_version']}"
                       f"{' (int8)' if result['precision'] == 'int8' else ''} -> {result['output']}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="export the run's selected model to ONNX and check parity")
    add_spec_run(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("predict", help="score a Parquet file with a registered model through onnxruntime")
    p.add_argument("--spec", required=True, help="model spec YAML (locates the registry)")
    p.add_argument("--model", required=True, help="NAME, NAME@champion or NAME@VERSION (e.g. v0001)")
    p.add_argument("--input", required=True, help="Parquet path or s3:// / file:// URI")
    p.add_argument("--output", required=True, help="Parquet path or s3:// / file:// URI")
    p.add_argument("--batch-size", type=positive_int, default=64, help="rows per onnxruntime call (>= 1)")
    p.add_argument("--precision", choices=["fp32", "int8"], default="fp32",
                   help="int8: the version's dynamically quantized artifact (registered when its own gate passed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_predict)
