"""`tl export`, `tl predict`."""

from __future__ import annotations

import argparse

from tl_core.cliutil import add_spec_run, emit


def cmd_export(args: argparse.Namespace) -> int:
    from tl_core.pipeline import _ctx, step_export

    uri = step_export(args.spec, args.run)
    parity = _ctx(args.spec, args.run).read_json("export/parity.json")
    emit(args, {"onnx": uri, "parity": parity},
         f"exported {uri}\nparity on {parity['examples']} held-out examples: max |logit diff| "
         f"{parity['max_abs_logit_diff']:.2e}, ECE torch {parity['ece_torch']:.4f} vs onnx {parity['ece_onnx']:.4f}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tl_core.config import load_spec
    from tl_core.export.predict import open_model_dir, predictions_frame, read_table, score, write_table
    from tl_core.registry import Registry

    name, _, ref = args.model.partition("@")
    spec = load_spec(args.spec)
    if name != spec.name:
        raise ValueError(f"--model names {name!r} but the spec is for {spec.name!r}")
    registry = Registry.for_spec(spec)
    if ref in ("", "champion"):
        champion = registry.champion()
        if champion is None:
            raise ValueError(f"model {name!r} has no champion yet; pass --model {name}@<version>")
        ref = champion.version
    served = open_model_dir(registry.load_version(ref), ref)
    df = read_table(args.input)
    logits, probs = score(served, df, batch_size=args.batch_size)
    out = predictions_frame(served, df, logits, probs)
    write_table(out, args.output)
    emit(args, {"rows": len(out), "model_version": ref, "output": args.output},
         f"scored {len(out)} rows with {name}@{ref} -> {args.output}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("export", help="export the run's selected model to ONNX and check parity")
    add_spec_run(p)
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("predict", help="score a Parquet file with a registered model through onnxruntime")
    p.add_argument("--spec", required=True, help="model spec YAML (locates the registry)")
    p.add_argument("--model", required=True, help="NAME, NAME@champion or NAME@VERSION")
    p.add_argument("--input", required=True, help="Parquet path or s3:// / file:// URI")
    p.add_argument("--output", required=True, help="Parquet path or s3:// / file:// URI")
    p.add_argument("--batch-size", type=int, default=64, help="rows per onnxruntime call")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_predict)
