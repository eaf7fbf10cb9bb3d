"""`tl plan`, `tl train`, `tl select`, `tl pretrain-source`."""

from __future__ import annotations

import argparse

from tl_core.cli.util import add_spec_run, emit, positive_int


def cmd_train(args: argparse.Namespace) -> int:
    from tl_core.config import STRATEGIES, load_spec
    from tl_core.pipeline import step_label_issues, step_select, step_train
    from tl_core.store import new_run_id

    spec = load_spec(args.spec)
    unknown = [s for s in args.strategy or [] if s not in spec.model_ids()]
    if unknown:
        extra = f"; with the spec's candidates: {spec.model_ids()}" if spec.candidates else ""
        raise ValueError(f"--strategy {unknown[0]!r} is not a transfer strategy: expected one of {STRATEGIES}{extra}")
    run_id = args.run or new_run_id()
    strategies = args.strategy or spec.training_order()
    step_label_issues(args.spec, run_id, args.device)  # the step before training (a no-op once it has run)
    uris = {s: step_train(args.spec, run_id, s, device=args.device) for s in strategies}
    candidate = step_select(args.spec, run_id) if not args.strategy else None
    emit(args, {"run": run_id, "models": uris, "candidate": candidate},
         "\n".join([f"run {run_id}"] + [f"  {s}: {u}" for s, u in uris.items()] +
                   ([f"  candidate: {candidate}"] if candidate else [])))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from tl_core.pipeline import step_plan

    plan = step_plan(args.spec, args.run, args.strategy)
    emit(args, plan, f"run {args.run}: frozen {plan['frozen']}, fine-tuned {plan['tuned']} ({plan['uri']})")
    return 0


def cmd_select(args: argparse.Namespace) -> int:
    from tl_core.pipeline import step_select

    emit(args, {"candidate": step_select(args.spec, args.run)})
    return 0


def cmd_pretrain_source(args: argparse.Namespace) -> int:
    from tl_core.config import load_spec
    from tl_core.demo.pretrain_source import pretrain_source

    result = pretrain_source(load_spec(args.spec), per_class=args.per_class, epochs=args.epochs, seed=args.seed)
    last = result["history"][-1]
    emit(args, result, f"pretrained source backbone written to {result['uri']} "
                       f"({result['examples']} glyphs, final train accuracy {last['accuracy']:.3f}, "
                       f"{result['wall_s']:.1f}s)")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("train", help="train the spec's strategies (or --strategy) on a run's split and select")
    add_spec_run(p, run_required=False)
    p.add_argument("--strategy", action="append", help="train only this strategy (repeatable); skips selection")
    p.add_argument("--device", choices=["cpu", "cuda"], help="force the device (default: CUDA when present)")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("plan", help="the models a run trains: all of the spec's, or the --strategy subset")
    add_spec_run(p)
    p.add_argument("--strategy", action="append", help="plan only this model (repeatable); default: all")
    p.set_defaults(handler=cmd_plan)

    p = sub.add_parser("select", help="pick the run's candidate from the trained strategies")
    add_spec_run(p)
    p.set_defaults(handler=cmd_select)

    p = sub.add_parser("pretrain-source", help="demo: pretrain the image backbone on rendered digit glyphs")
    p.add_argument("--spec", required=True, help="image model spec whose backbone.path receives the weights")
    p.add_argument("--per-class", type=positive_int, default=300, help="glyphs per digit")
    p.add_argument("--epochs", type=positive_int, default=4, help="training epochs")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_pretrain_source)
