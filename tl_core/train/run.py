"""`tl train` / the train tasks: one strategy per call (selection is in tl_core.train.select)."""

from __future__ import annotations

import io
import logging
import resource
import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_core.errors import DataError, NoSuchKey
from tl_core.models.artifacts import model_config, save_model
from tl_core.models.backbones import Classifier, load_backbone
from tl_core.models.preprocessing import Encoded, content_hashes, encode_split, image_transform
from tl_core.runs import SPLITS, RunContext
from tl_core.train.finetune import choose_device, finetune, predict_logits
from tl_core.train.frozen import CacheStats, EmbeddingCache, cache_key, embed_with_cache, fit_head
from tl_core.train.objective import rank_key

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "calibration", "test")


def load_examples(ctx: RunContext) -> pd.DataFrame:
    try:
        raw = ctx.store.get_bytes(ctx.key("split/examples.parquet"))
    except NoSuchKey:
        raise DataError(f"run {ctx.run_id}: split/examples.parquet is missing; run `tl split` first") from None
    return pd.read_parquet(io.BytesIO(raw))


def _splits(ctx: RunContext, df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    parts = {name: df[df["split"] == name].reset_index(drop=True) for name in SPLITS}
    for name in ("train", "validation"):
        if parts[name].empty:
            raise DataError(f"run {ctx.run_id}: the {name} split is empty; cannot train")
    cap = ctx.spec.train.max_train_examples
    if cap is not None and len(parts["train"]) > cap:
        parts["train"] = parts["train"].sample(n=cap, random_state=ctx.spec.train.seed).reset_index(drop=True)
    return parts


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_train(ctx: RunContext, strategy: str) -> str:
    """Train one strategy of the spec on the run's split; write model files, logits and a report."""
    spec = ctx.spec
    if strategy not in spec.train.strategies:
        raise ValueError(f"strategy {strategy!r} is not in train.strategies {spec.train.strategies}")
    if ctx.store.exists(ctx.model_key(strategy, "train_report.json")):
        logger.info("%s already trained for run %s; nothing to do", strategy, ctx.run_id)
        return ctx.uri("models", strategy)
    torch.manual_seed(spec.train.seed)
    parts = _splits(ctx, load_examples(ctx))
    backbone = load_backbone(spec, pretrained=strategy != "scratch")
    model = Classifier(backbone.module, backbone.kind, backbone.num_features, len(spec.labels))
    encoded = {
        name: encode_split(df, spec.data.input_column, spec.labels, backbone.preprocessing, backbone.tokenizer)
        for name, df in parts.items()
    }
    for name in ("train", "validation"):
        if (encoded[name].labels < 0).any():
            raise DataError(f"run {ctx.run_id}: {name} split has labels outside the spec's label set")
    transforms: tuple[Any, Any] = (None, None)
    if backbone.kind == "timm":
        transforms = (image_transform(backbone.preprocessing, True), image_transform(backbone.preprocessing, False))
    device = choose_device(spec.train.device)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"strategy": strategy, "train_examples": len(encoded["train"])}
    logits: dict[str, np.ndarray] = {}
    if strategy == "frozen":
        stats = CacheStats()
        cache = EmbeddingCache(ctx.store, cache_key(spec, backbone.preprocessing))
        # One pass over the examples of every split that the cache has not seen (fewer, fuller batches).
        names = list(parts)
        merged = Encoded(encoded[names[0]].kind, [i for n in names for i in encoded[n].ids],
                         [v for n in names for v in encoded[n].values],
                         np.concatenate([encoded[n].labels for n in names]))
        hashes = [h for n in names for h in content_hashes(parts[n], spec.data.input_column)]
        everything = embed_with_cache(model, backbone, spec, merged, hashes, cache, ctx.run_id, transforms[1], stats)
        bounds = np.cumsum([0] + [len(encoded[n]) for n in names])
        feats = {n: everything[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
        weight, bias, c_scores = fit_head(spec, feats["train"], encoded["train"].labels, feats["validation"],
                                          encoded["validation"].labels)
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(weight))
            model.head.bias.copy_(torch.from_numpy(bias))
        for name in EVAL_SPLITS:
            logits[name] = feats[name] @ weight.T + bias
        best = min(c_scores.values(), key=lambda v: rank_key(spec.train.primary_metric, v))
        trainable = sum(p.numel() for p in model.head.parameters())  # the backbone is frozen: only the head learns
        report.update(val_metric=best, c_scores=c_scores, curves=[], cache={
            "hits": stats.hits, "misses": stats.misses, "embed_s": stats.embed_s, "key": cache.prefix})
        samples = sum(len(e) for e in encoded.values())
    else:
        resume_key = ctx.model_key(strategy, "resume", "state.pt")

        def load_resume() -> bytes | None:
            return ctx.store.get_bytes(resume_key) if ctx.store.exists(resume_key) else None

        def save_resume(blob: bytes) -> None:
            ctx.store.put_bytes(resume_key, blob)

        result = finetune(model, backbone, strategy, spec, encoded["train"], encoded["validation"], transforms,
                          load_resume, save_resume)
        model = result.model
        pad_id = int(getattr(backbone.tokenizer, "pad_token_id", 0) or 0)
        for name in EVAL_SPLITS:
            logits[name] = predict_logits(model.to(device), encoded[name], spec.train.eval_batch_size, device,
                                          pad_id, transforms[1]) if len(encoded[name]) else np.zeros(
                (0, len(spec.labels)), np.float32)
        model.cpu()
        trainable = result.trainable_parameters
        report.update(val_metric=result.best_score, best_epoch=result.best_epoch, curves=result.curves,
                      resumed_from_epoch=result.resumed_from_epoch, train_samples_per_s=result.samples_per_s)
        samples = len(encoded["train"]) * max(1, len(result.curves))
    wall = time.perf_counter() - t0
    report.update(primary_metric=spec.train.primary_metric, wall_s=wall, samples_per_s=samples / wall if wall else 0.0,
                  peak_memory_mb=_peak_memory_mb(device), device=str(device),
                  trainable_parameters=trainable, total_parameters=sum(p.numel() for p in model.parameters()))
    prefix = ctx.model_key(strategy)
    save_model(ctx.store, prefix, model, backbone, model_config(spec, backbone, strategy))
    for name in EVAL_SPLITS:
        ctx.write_npz(f"models/{strategy}/logits/{name}.npz", example_id=np.array(encoded[name].ids, dtype=str),
                      logits=logits[name].astype(np.float32))
    # The report is written last: its presence marks the strategy as complete.
    ctx.write_json(f"models/{strategy}/train_report.json", report)
    if ctx.store.exists(ctx.model_key(strategy, "resume", "state.pt")):
        ctx.store.delete(ctx.model_key(strategy, "resume", "state.pt"))
    logger.info("%s: validation %s %.4f in %.1fs", strategy, spec.train.primary_metric, report["val_metric"], wall)
    return ctx.uri("models", strategy)
