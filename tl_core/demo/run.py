"""`make demo`: the real pipeline end to end on the embedded default (file:// store under .tl/, SQLite Airflow).

1. writes the generated support-ticket stream (drift in the last days) to .tl/data;
2. starts `airflow standalone` (LocalExecutor, parallelism 2) on 127.0.0.1;
3. triggers retrain_support-tickets for a first logical date: the first model (bootstrap gate), approved
   with `tl approve` through the REST API, becomes the champion;
4. triggers it for a later date with drift: the candidate is gated against the champion, per slice;
5. backfills two earlier dates with `airflow backfill create`: shadow runs that register shadow versions and never
   change the champion (the DAG keeps its periodic schedule for this; the demo's scheduler starts no runs itself);
6. prints the gate tables, decisions, approval, champion, ledger and report path; stops every process it started.
KEEP=1 leaves Airflow running, prints the UI address and login, and writes its settings to <home>/env.sh.

Works from an installed package too: the example spec ships in ``tl_core/demo/configs/`` (a copy of
``configs/support-tickets.yaml``, kept identical by tests/test_demo.py); the DAG and plugin folders come from
TL_DAGS_DIR / TL_PLUGINS_DIR, else the source checkout (see ``local_airflow.airflow_folder``); everything the demo
writes goes under TL_DEMO_ROOT (default ``.tl`` in the working directory).
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from datetime import date, timedelta
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tl_core.artifacts import GateDecision
from tl_core.config import dag_id, parse_spec
from tl_core.demo.local_airflow import LocalAirflow
from tl_core.errors import DemoSetupError, TLError
from tl_core.registry import Registry
from tl_core.runs import RunContext
from tl_core.store import key_safe

logger = logging.getLogger("tl_core.demo")
FIRST, SECOND = date(2026, 11, 1), date(2026, 11, 5)
BACKFILL = (date(2026, 11, 2), date(2026, 11, 3))  # a manual backfill of two earlier dates: shadow runs
DAG = dag_id("retrain", "support-tickets")


def say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


# The example spec the demo runs, shipped as package data (tests/test_demo.py: identical to configs/'s copy).
PACKAGED_SPEC = "configs/support-tickets.yaml"


def demo_root() -> Path:
    """Where the demo writes its data, store, demo spec and Airflow home: TL_DEMO_ROOT, default ./.tl."""
    return Path(os.environ.get("TL_DEMO_ROOT") or ".tl").resolve()


def packaged_spec_text() -> str:
    spec = resources.files("tl_core.demo").joinpath(PACKAGED_SPEC)
    if not spec.is_file():
        raise DemoSetupError(f"the demo's example spec tl_core/demo/{PACKAGED_SPEC} is missing from the installed "
                             "package (package data not installed?)")
    return spec.read_text()


def demo_spec(root: Path) -> Path:
    raw = yaml.safe_load(packaged_spec_text())
    raw["data"]["root"] = (root / "data").as_uri()
    raw["store"] = (root / "store").as_uri()
    # The schedule stays periodic so that Airflow's backfill works on the demo DAG (CLI, REST API, UI); the demo's
    # scheduler creates no runs of its own (AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE=False, see prepare()).
    # The 15-minute budget on 2 CPU cores: LoRA epochs of MiniLM dominate (1 to 3 minutes each on CPU), so the
    # demo copy trains fewer fine-tuning epochs than the production spec (TL_DEMO_EPOCHS; head warm-up kept).
    epochs = os.environ.get("TL_DEMO_EPOCHS", "1")
    if not epochs.isdigit() or int(epochs) < 1:
        raise DemoSetupError(f"TL_DEMO_EPOCHS must be a whole number >= 1, got {epochs!r}")
    raw["train"]["epochs"] = int(epochs)
    # TL_DEMO_STRATEGIES (comma-separated, a subset of the spec's) trains fewer strategies: the README test uses it.
    wanted = [x.strip() for x in os.environ.get("TL_DEMO_STRATEGIES", "").split(",") if x.strip()]
    unknown = sorted(set(wanted) - set(raw["train"]["strategies"]))
    if unknown:
        raise DemoSetupError(f"TL_DEMO_STRATEGIES names strategies the spec does not train: {unknown} (spec: "
                         f"{raw['train']['strategies']})")
    raw["train"]["strategies"] = wanted or raw["train"]["strategies"]
    configs = root / "demo-configs"
    configs.mkdir(parents=True, exist_ok=True)
    path = configs / "support-tickets.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class DemoFailed(RuntimeError):
    """The demo's story did not hold: the message names the step and what was observed."""


def run_once(af: LocalAirflow, spec_path: Path, day: date, label: str) -> dict[str, Any]:
    """One retrain run, approved with `tl approve` when its gate passes; returns what the demo checks."""
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    say(f"\n=== {label}: {DAG} for logical date {day} ===")
    t0 = time.monotonic()
    run_id = af.trigger(DAG, f"{day.isoformat()}T00:00:00Z")
    state = af.wait(DAG, run_id, ("awaiting_input", "success", "failed"), timeout=1800)
    ctx = RunContext.open(spec, run_id)
    decision: dict[str, Any] | None = None
    if ctx.store.exists(ctx.key("gate/decision.json")):
        decision = ctx.read(GateDecision).model_dump(mode="json")
        say(f"gate decision: {decision['decision']}")  # the reasons as typed (the Markdown is the approval body's)
        for reason in decision["reasons"]:
            if reason["status"] != "PASS":
                say(f"  {reason['status']}: {reason['text']}")
        say(f"\nevidence report: {ctx.uri('gate/report.html')}\n  in Airflow: "
            f"{af.url}/tl/report/{DAG}/{urllib.parse.quote(run_id, safe='')}")
    if state == "awaiting_input":
        pending = af.client().pending_approvals(DAG, run_id)
        say(f"\napproval pending ({time.monotonic() - t0:.0f}s in): {pending[0]['subject'] if pending else '?'}")
        cmd = ["tl", "approve", "--dag", DAG, "--run", run_id, "--comment", "demo: reviewed the gate summary"]
        say("$ " + shlex.join(cmd))
        proc = subprocess.run(["timeout", "-k", "10", "900", sys.executable, "-m", "tl_core.cli", *cmd[1:]],
                              env=af.env, capture_output=True, text=True)
        say((proc.stdout + proc.stderr).strip())
        if proc.returncode != 0:
            raise DemoFailed(f"{label}: `tl approve` failed (exit {proc.returncode}); see its output above")
        state = af.wait(DAG, run_id, ("success", "failed"), timeout=1800)
    states = af.task_states(DAG, run_id)
    say(f"run {state} in {time.monotonic() - t0:.0f}s; tasks: "
        + ", ".join(f"{k}={v}" for k, v in sorted(states.items())))
    champion = Registry.for_spec(spec).champion()
    say(f"champion: {champion.version if champion else 'none'}")
    return {"run_id": run_id, "state": state, "tasks": states, "decision": decision,
            "champion": champion.version if champion else None}


def check_story(first: dict[str, Any], second: dict[str, Any] | None) -> list[str]:
    """What the demo promises: run 1 promoted (champion v0001); run 2 gated against v0001 (champion rows)."""
    problems = []
    if first["decision"] is None:
        problems.append(f"run 1 ({first['run_id']}) wrote no gate decision (tasks: {first['tasks']})")
    elif not first["decision"].get("passed"):
        problems.append(f"run 1's gate did not pass: {first['decision'].get('reasons', [])[:3]}")
    if first["champion"] != "v0001" or first["tasks"].get("promote") != "success":
        problems.append(f"run 1 did not promote v0001: champion {first['champion']!r}, approval "
                        f"{first['tasks'].get('approval')!r}, promote {first['tasks'].get('promote')!r}")
    if second is None:
        return problems
    decision = second["decision"]
    if decision is None:
        problems.append(f"run 2 ({second['run_id']}) wrote no gate decision (tasks: {second['tasks']})")
    elif decision.get("champion_version") != "v0001" or "| champion |" not in decision.get("summary_markdown", ""):
        problems.append(f"run 2 was not gated against v0001: champion_version {decision.get('champion_version')!r}, "
                        "no champion rows in its gate table")
    if second["state"] != "success":
        problems.append(f"run 2 ended {second['state']!r} (tasks: {second['tasks']})")
    return problems


def prepare(root: Path) -> tuple[Path, LocalAirflow]:
    """A fresh demo under ``root``: the demo spec, the generated data and the (not yet started) local Airflow."""
    # every demo starts from an empty Airflow DB, run folder and registry (the embedding cache is kept)
    for stale in (root / "airflow", root / "store" / "runs", root / "store" / "registry"):
        shutil.rmtree(stale, ignore_errors=True)
    spec_path = demo_spec(root)
    # before any data is generated: a missing DAG or plugin folder fails at once, naming it
    af = LocalAirflow(root / "airflow", spec_path.parent, port=int(os.environ.get("TL_DEMO_PORT", "0")) or None,
                      extra_env={"AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False"})
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    from tl_core.demo.data import write_demo_data

    write_demo_data(spec, end_date=SECOND, days=spec.data.window_days + (SECOND - FIRST).days + 1,
                    drift_from=SECOND - timedelta(days=2))
    say(f"demo data: generated support tickets in {spec.data.root} (drift from {SECOND - timedelta(days=2)})")
    say(f"demo spec: {spec_path} (configs/support-tickets.yaml with the {root.name}/ store, schedule kept for "
        "backfills, no scheduled runs, "
        f"train.epochs {spec.train.epochs} + {spec.train.warmup_epochs} warm-up)")
    return spec_path, af


def run_backfill(af: LocalAirflow, spec_path: Path) -> dict[str, Any]:
    """`airflow backfill create` for the BACKFILL dates, waited for; returns what check_backfill reads."""
    spec = parse_spec(yaml.safe_load(spec_path.read_text()))
    registry = Registry.for_spec(spec)
    before = registry.champion()
    cmd = ["airflow", "backfill", "create", "--dag-id", DAG, "--from-date", BACKFILL[0].isoformat(), "--to-date",
           BACKFILL[1].isoformat()]
    say(f"\n=== manual backfill of {BACKFILL[0]} .. {BACKFILL[1]}: shadow runs, never promoted ===")
    say(f"POST {af.url}/api/v2/backfills (the UI's Backfill dialog; the same as `{shlex.join(cmd)}`)")
    t0 = time.monotonic()
    created = af.backfill(DAG, BACKFILL[0].isoformat(), BACKFILL[1].isoformat())
    runs = af.wait_backfill(DAG, int(created["id"]), len(BACKFILL), timeout=1800)
    say(f"backfill finished in {time.monotonic() - t0:.0f}s: " + ", ".join(f"{r} {s}" for r, s in runs.items()))
    after = registry.champion()
    stored = {key_safe(r) for r in runs}  # the ledger names runs by their store folder (key-safe run id)
    ledger = [r for r in registry.history() if r.get("run_id") in stored]
    for r in ledger:
        say(f"  ledger {r['seq']:>3} {r['action']:<9} {str(r.get('version') or ''):<6} shadow={r.get('shadow')} "
            f"run {r.get('run_id')}: {str(r.get('reason') or '')[:80]}")
    return {"runs": runs, "tasks": {r: af.task_states(DAG, r) for r in runs}, "ledger": ledger,
            "champion_before": before.version if before else None, "champion_after": after.version if after else None}


def check_backfill(backfill: dict[str, Any]) -> list[str]:
    """What the backfill promises: every run succeeded as a shadow run, each registered a shadow version, and the
    champion did not change."""
    problems = []
    failed = {r: s for r, s in backfill["runs"].items() if s != "success"}
    if failed:
        problems.append(f"backfill runs did not succeed: {failed}")
    if len(backfill["runs"]) != len(BACKFILL):
        problems.append(f"expected {len(BACKFILL)} backfill runs, found {sorted(backfill['runs'])}")
    shadow = [r for r in backfill["ledger"] if r["action"] == "register" and r.get("shadow") is True]
    if len(shadow) != len(BACKFILL):
        rejected = [str(r.get("reason"))[:120] for r in backfill["ledger"] if r["action"] == "reject"]
        problems.append(f"expected {len(BACKFILL)} shadow versions registered, got {len(shadow)}"
                        + (f" (rejected: {rejected})" if rejected else ""))
    promoted = [r for r in backfill["ledger"] if r["action"] == "promote"]
    if promoted or backfill["champion_after"] != backfill["champion_before"]:
        problems.append(f"the backfill changed the champion: {backfill['champion_before']} -> "
                        f"{backfill['champion_after']} ({len(promoted)} promote records)")
    for run, tasks in backfill["tasks"].items():
        if tasks.get("approval") not in (None, "skipped"):
            problems.append(f"backfill run {run} reached the approval ({tasks.get('approval')})")
    return problems


def tell_story(af: LocalAirflow, spec_path: Path, started: float) -> dict[str, str]:
    """The two runs and the backfill with their checks (DemoFailed naming the step when the story does not hold),
    then the ledger. Returns the settings a user needs to try more by hand (TL_DEMO_*)."""
    first = run_once(af, spec_path, FIRST, "first run (no champion yet)")
    problems = check_story(first, None)
    if problems:  # run 2 would be another first model: stop here and say why
        raise DemoFailed("demo step 'first run': " + "; ".join(problems))
    second = run_once(af, spec_path, SECOND, "second run (drifted data, gated against the champion)")
    problems = check_story(first, second)
    if problems:
        raise DemoFailed("demo step 'second run': " + "; ".join(problems))
    backfill = run_backfill(af, spec_path)
    problems = check_backfill(backfill)
    if problems:
        raise DemoFailed("demo step 'backfill': " + "; ".join(problems))
    say(f"\ndemo finished in {time.monotonic() - started:.0f}s: run 1 promoted v0001, run 2 was gated against "
        f"v0001 ({'PASS' if second['decision']['passed'] else 'FAIL'}), the backfill of {BACKFILL[0]} .. "
        f"{BACKFILL[1]} registered {len(BACKFILL)} shadow versions; champion now {backfill['champion_after']}")
    history = Registry.for_spec(parse_spec(yaml.safe_load(spec_path.read_text()))).history()
    say("\nregistry ledger:")
    for r in history:
        say(f"  {r['seq']:>3} {r['action']:<9} {str(r.get('version') or ''):<6} by {r.get('actor')}: "
            f"{str(r.get('reason') or '')[:90]}")
    shadow = [r["version"] for r in backfill["ledger"] if r["action"] == "register" and r.get("shadow")]
    return {"TL_DEMO_SPEC": str(spec_path), "TL_DEMO_CHAMPION": str(backfill["champion_after"]),
            "TL_DEMO_SHADOW": max(shadow)}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    started = time.monotonic()
    try:
        spec_path, af = prepare(demo_root())
    except TLError as exc:
        sys.stderr.write(f"make demo: FAILED: {exc}\n")
        return 1
    say(f"starting airflow standalone on {af.url} (AIRFLOW_HOME={af.home}) ...")
    # SIGTERM (e.g. from a CI timeout) must still stop the Airflow processes this demo started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    af.start()
    keep = os.environ.get("KEEP") == "1"
    try:
        by_hand = tell_story(af, spec_path, started)
        if keep:
            say(f"its settings for `airflow` and `tl` in another shell (README: Try it by hand): "
                f"source {af.write_env(by_hand)}")
    except (DemoFailed, TLError) as exc:
        sys.stderr.write(f"make demo: FAILED: {exc}\n")
        return 1
    finally:
        if keep and af.proc:  # also after a failure: left up to look at, and said how to stop it
            say(f"\nAirflow stays up: {af.url}  login admin / {af.password()}  (stop: kill -TERM -{af.proc.pid})")
        else:
            af.stop()
            say("stopped airflow standalone")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

