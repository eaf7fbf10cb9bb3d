"""Issue 29 #11 and #18: labels that only look alike, and settings whose size is memory or time."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tl_core.config import parse_spec
from tl_core.errors import SpecError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _base() -> dict[str, Any]:
    raw: dict[str, Any] = yaml.safe_load((CONFIGS / "support-tickets.yaml").read_text())
    return raw


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("billing\u202e", "U+202E"),  # right-to-left override
        ("bill\u200bing", "U+200B"),  # zero-width space
        ("billing\u2066", "U+2066"),  # left-to-right isolate
        ("bil\u00adling", "U+00AD"),  # soft hyphen
        ("billing\x07", "U+0007"),  # a control character
    ],
)
def test_labels_with_invisible_characters_are_refused(label: str, code: str) -> None:
    raw = _base()
    raw["labels"] = [*raw["labels"], label]
    expected = rf"labels\.\d+: a label must hold no control, format .* {re.escape(code)}; remove them"
    with pytest.raises(SpecError, match=expected):
        parse_spec(raw)


def test_decomposed_labels_are_refused_naming_the_composed_form() -> None:
    raw = _base()
    raw["labels"] = [*raw["labels"], "cafe\u0301"]  # 'café' with a combining accent
    with pytest.raises(SpecError, match="Unicode NFC form .* write it as 'caf\u00e9'"):
        parse_spec(raw)


def test_ordinary_non_ascii_labels_still_validate() -> None:
    raw = _base()
    raw["labels"] = ["caf\u00e9", "\u65e5\u672c\u8a9e", "stra\u00dfe", "emoji \U0001f600", "a-b c"]
    assert parse_spec(raw).labels == raw["labels"]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("gate", "n_bootstrap"), 10**12, r"gate\.n_bootstrap: must be at most 100000 .*got 1e\+12"),
        (("approval", "response_timeout_hours"), "1e300", r"approval\.response_timeout_hours: must be at most 720"),
        (("data", "arrival_timeout_minutes"), "1e300", r"data\.arrival_timeout_minutes: must be at most 10080"),
        (("data", "arrival_poke_seconds"), 86400, r"data\.arrival_poke_seconds: must be at most 3600"),
        (("data", "label_issues_folds"), 1, r"data\.label_issues_folds: must be at least 2"),
        (("data", "label_issues_folds"), 500, r"data\.label_issues_folds: must be at most 20"),
        (("monitor", "permutations"), 10**9, r"monitor\.permutations: must be at most 100000"),
        (("monitor", "embedding_max_rows"), 10**6, r"monitor\.embedding_max_rows: must be at most 10000"),
        (("monitor", "chunk_rows"), 10**9, r"monitor\.chunk_rows: must be at most 1e\+06"),
        (("train", "epochs"), 10**6, r"train\.epochs: must be at most 1000"),
        (("train", "batch_size"), 10**7, r"train\.batch_size: must be at most 65536"),
        (("selection", "latency_runs"), 10**8, r"selection\.latency_runs: must be at most 10000"),
    ],
)
def test_settings_whose_size_is_memory_or_time_are_bounded(path: tuple[str, str], value: Any, message: str) -> None:
    raw = _base()
    raw.setdefault(path[0], {})[path[1]] = value
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_webhook_deadline_is_bounded() -> None:
    raw = _base()
    raw["notify"] = {"webhooks": [{"url": "https://hooks.example/x", "timeout_seconds": 1e6}]}
    with pytest.raises(SpecError, match=r"notify\.webhooks\.0\.timeout_seconds: must be at most 300"):
        parse_spec(raw)


def test_values_at_the_ceilings_validate() -> None:
    raw = _base()
    raw["gate"]["n_bootstrap"] = 100_000
    raw.setdefault("approval", {})["response_timeout_hours"] = 720
    raw["data"]["arrival_timeout_minutes"] = 10_080
    spec = parse_spec(raw)
    assert (spec.gate.n_bootstrap, spec.approval.response_timeout_hours) == (100_000, 720)
