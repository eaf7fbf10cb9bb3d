"""The champion as the evaluation needs it: the registered champion re-scored through the serving path.

Evaluation measures; it does not look models up. This module (serving side: registry + onnxruntime) finds the
champion and scores it on the run's calibration and test rows, and the evaluate step passes the result on.
"""

from __future__ import annotations

import numpy as np

from tl_core.evaluate.run import (
    CHAMPION_SPLITS,
    ChampionScores,
    ChampionUnreadable,
    split_frames,
)
from tl_core.runs import RunContext


def score_champion(ctx: RunContext) -> ChampionScores | None:
    """Re-score the registered champion on this run's calibration and test rows through the serving path.

    The scores carry the champion's own class names (its model_config.json): the evaluation aligns its columns to
    this spec's labels by name. None when there is no champion yet; raises ChampionUnreadable (with the version and
    etag when known) when the pointer or the model cannot be read or scored.
    """
    try:
        from tl_core.registry import Registry

        pointer = Registry.for_spec(ctx.spec).champion()
    except Exception as exc:  # noqa: BLE001 - any failure to read the pointer is evidence for the gate
        raise ChampionUnreadable(f"champion pointer unreadable: {type(exc).__name__}: {exc}") from exc
    if pointer is None:
        return None
    try:
        from tl_core.export.predict import open_registered, score

        served = open_registered(ctx.spec, pointer.version)
        frames = split_frames(ctx.read_examples(), CHAMPION_SPLITS)
        logits = {s: np.asarray(score(served, df)[0]) for s, df in frames.items()}
        labels = served.labels  # the champion's own class names, in its logit order
    except Exception as exc:  # noqa: BLE001 - an unusable champion is evidence for the gate, not a crash
        raise ChampionUnreadable(f"champion {pointer.version} could not be scored: {type(exc).__name__}: {exc}",
                                 pointer.version, pointer.etag) from exc
    return ChampionScores(pointer.version, pointer.etag, logits, labels)


def champion_for(ctx: RunContext) -> ChampionScores | ChampionUnreadable | None:
    """score_champion, with an unreadable champion returned (as evidence for the report) instead of raised."""
    try:
        return score_champion(ctx)
    except ChampionUnreadable as exc:
        return exc
