"""Where label issues run: the first thing every train task does, before any fine-tuning.

The audit runs before any embedding exists, so label issues (tl_core.data.label_issues) run here, on the
frozen backbone's embeddings of the split's non-test rows taken through the frozen baseline's embedding
cache (same cache key and shard layout, so the frozen strategy finds them cached and the embedding is paid
once). The first train task of a run writes ``audit/label_issues.json`` create-only; every other task
(strategies run in parallel) reads that file, so all strategies see the same finding. A blocking finding
raises BlockingAuditFinding in every train task; ``quarantine`` removes the flagged rows from the training
split only (validation, calibration and test stay as split, so every evaluation sees the same rows).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from tl_core.artifacts import LabelIssues
from tl_core.data.label_issues import LABEL_ISSUES, find_label_issues, skipped_finding
from tl_core.errors import BlockingAuditFinding, PreconditionFailed
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)


def _sample(df: pd.DataFrame, cap: int, seed: int) -> pd.DataFrame:
    rest = df[df["split"] != "test"].reset_index(drop=True)
    if len(rest) > cap:
        rest = rest.sample(n=cap, random_state=seed).reset_index(drop=True)
    return rest


def frozen_embeddings(ctx: RunContext, df: pd.DataFrame, counts: dict[str, int] | None = None,
                      device: str | None = None) -> np.ndarray:
    """The pretrained backbone's features of ``df`` through the frozen baseline's embedding cache (on ``device``,
    default the spec's train.device); ``counts`` (if given) receives the cache's hits and misses."""
    from tl_core.models.backbones import Classifier, load_backbone
    from tl_core.models.embeddings import CacheStats, EmbeddingCache, cache_key, choose_device, embed_with_cache
    from tl_core.models.preprocessing import content_hashes, encode_split, image_transform

    spec = ctx.spec
    backbone = load_backbone(spec, pretrained=True)
    model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(spec.labels))
    encoded = encode_split(df, spec.data.input_column, spec.labels, backbone.preprocessing, backbone.tokenizer)
    transform = image_transform(backbone.preprocessing, False) if backbone.kind == "timm" else None
    cache = EmbeddingCache(ctx.store, cache_key(spec, backbone.preprocessing))
    stats = CacheStats()
    feats = embed_with_cache(model, backbone, spec, encoded, content_hashes(df, spec.data.input_column), cache,
                             f"{ctx.run_id}.label-issues", transform, stats,
                             choose_device(device or spec.train.device))
    logger.info("label issues: %d embeddings (%d cached, %d computed in %.1fs)", len(df), stats.hits, stats.misses,
                stats.embed_s)
    if counts is not None:
        counts.update(hits=stats.hits, misses=stats.misses)
    return feats


def compute_label_issues(ctx: RunContext, device: str | None = None) -> LabelIssues:
    """The finding for the run's split (no write); too few non-test rows give an info finding saying so."""
    d = ctx.spec.data
    examples = ctx.read_examples()
    rows = _sample(examples, d.label_issues_max_rows, d.split_seed)
    if rows["label"].astype(str).nunique() < 2:
        return skipped_finding(ctx.spec, rows, f"{len(rows)} non-test rows in fewer than 2 classes")
    t0 = time.perf_counter()
    cache: dict[str, int] = {}
    feats = frozen_embeddings(ctx, rows, cache, device)
    t1 = time.perf_counter()
    finding = find_label_issues(rows, feats, ctx.spec)
    return LabelIssues.model_validate({
        **finding.model_dump(), "cache": cache, "embed_s": t1 - t0, "fit_s": time.perf_counter() - t1,
        "sampled": len(rows) < int((examples["split"] != "test").sum())})


def ensure_label_issues(ctx: RunContext, device: str | None = None) -> LabelIssues:
    """The run's label-issue finding: read ``audit/label_issues.json`` or compute and write it (create-only;
    embeddings on ``device``, default the spec's train.device); raises BlockingAuditFinding when it is
    blocking."""
    finding = ctx.read_optional(LabelIssues)
    if finding is None:
        finding = compute_label_issues(ctx, device)
        try:
            ctx.write(finding, create_only=True)
        except PreconditionFailed:  # another train task of this run wrote it first: use that one
            finding = ctx.read(LabelIssues)
    logger.info("label issues: %s", finding.message)
    if finding.severity == "blocking":
        raise BlockingAuditFinding(f"run {ctx.run_id}: label_issues: {finding.message} (report "
                                   f"{ctx.uri(LABEL_ISSUES)})")
    return finding


def drop_quarantined(train: pd.DataFrame, finding: LabelIssues) -> pd.DataFrame:
    """The training split without the rows the label-issue finding quarantined."""
    ids = set(finding.quarantined_ids)
    if not ids:
        return train
    keep = ~train["example_id"].astype(str).isin(ids)
    logger.info("label issues: %d flagged rows kept out of the training split", int((~keep).sum()))
    return train[keep].reset_index(drop=True)
