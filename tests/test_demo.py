"""`make demo` checks its own story: run 1 promotes v0001, run 2 is gated against it."""

from __future__ import annotations

from typing import Any

from tl_core.demo.run import check_story

TABLE = "| candidate minus | metric | slice |\n| --- | --- | --- |\n| champion | macro_f1 | overall |"


def _run(champion: str | None, promote: str = "success", passed: bool = True, against: str | None = None,
         table: str = "", state: str = "success") -> dict[str, Any]:
    return {"run_id": "r", "state": state, "champion": champion,
            "tasks": {"approval": "success", "promote": promote},
            "decision": {"passed": passed, "champion_version": against, "summary_markdown": table, "reasons": []}}


def test_the_story_holds() -> None:
    assert check_story(_run("v0001"), _run("v0001", promote="skipped", passed=False, against="v0001",
                                           table=TABLE)) == []


def test_a_lost_first_promotion_is_named() -> None:
    problems = check_story({**_run(None, promote="upstream_failed"), "tasks": {"approval": "failed",
                                                                              "promote": "upstream_failed"}}, None)
    assert problems == ["run 1 did not promote v0001: champion None, approval 'failed', promote 'upstream_failed'"]


def test_a_second_run_without_champion_rows_is_named() -> None:
    problems = check_story(_run("v0001"), _run("v0001", against=None, table="| majority-class | macro_f1 |"))
    assert problems == ["run 2 was not gated against v0001: champion_version None, no champion rows in its gate "
                        "table"]
    assert check_story(_run("v0001"), {**_run("v0001"), "decision": None})[0].startswith(
        "run 2 (r) wrote no gate decision")
