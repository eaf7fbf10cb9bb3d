"""The promotion gate: a pure function of the evaluation report and the spec's policy.

It fails closed: an empty test set, a required slice with no examples, an unreadable champion, a champion
with a class this spec lacks (removed or renamed: not comparable) or a missing metric is a FAIL with that reason,
never a silent PASS. Classes added since the champion are a WARN: the champion comparison is then on the shared
classes' rows (the report's ``label_space``). Non-inferiority margins apply to the
lower confidence bound of (candidate - champion), oriented so that positive means "candidate better".
Overall, the bound is the two-sided ``confidence`` percentile interval's lower end; per slice, the
one-sided bootstrap p-values of H0 "difference < -margin" are corrected across slices (Holm by default)
and compared with (1 - confidence) / 2. Every reason names the metric, the slice, the observed interval
and the threshold, e.g.
``macro_f1 on region=eu: candidate - champion in [-0.041, -0.012] (95%), margin -0.02, holm p=0.31: FAIL``.

Modules: ``reasons`` (Reason: the decision artifact's GateReason), ``checks`` (one pure function per check),
``decide`` (the checks' reasons joined into the GateDecision artifact), ``summary`` (key figures and the approval
body), ``step`` (``tl gate``: read the report and the evidence from the store, decide, write gate/decision.json).
The gate depends on ``tl_core.evaluate`` (bootstrap correction, evidence), never the other way round.
"""

from __future__ import annotations

from tl_core.evaluate.evidence import current_evidence, current_evidence_hash, evidence_hash
from tl_core.gate.checks import SUPPORTED_SCHEMAS, GateInput, p_below
from tl_core.gate.decide import decide
from tl_core.gate.reasons import Reason
from tl_core.gate.step import run_gate
from tl_core.gate.summary import summary, summary_markdown

__all__ = ["SUPPORTED_SCHEMAS", "GateInput", "Reason", "current_evidence", "current_evidence_hash",
           "decide", "evidence_hash", "p_below", "run_gate", "summary", "summary_markdown"]
