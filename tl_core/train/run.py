"""`tl train` / the train tasks: one strategy per call (selection is in tl_core.train.select)."""

from __future__ import annotations

import dataclasses
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_core.artifacts import LabelIssues, TrainReport
from tl_core.errors import DataError
from tl_core.evaluate.calibration import fit_on_labelled
from tl_core.evaluate.metrics import rank_key
from tl_core.models.adapters import adapter_storable, base_fingerprint
from tl_core.models.artifacts import model_config, save_adapter, save_model
from tl_core.models.backbones import Backbone, Classifier, load_backbone
from tl_core.models.embeddings import CacheStats, EmbeddingCache, cache_key, choose_device, embed_with_cache
from tl_core.models.preprocessing import Encoded, content_hashes, encode_split, image_transform
from tl_core.runs import SPLITS, RunContext
from tl_core.train.candidates import measure_cost, shortlist_reason
from tl_core.train.finetune import finetune, predict_logits
from tl_core.train.frozen import fit_head
from tl_core.train.label_check import drop_quarantined, ensure_label_issues
from tl_core.train.lease import TrainLease

logger = logging.getLogger(__name__)

EVAL_SPLITS = ("validation", "calibration", "test")


def _splits(ctx: RunContext, df: pd.DataFrame, label_issues: LabelIssues | None = None
            ) -> dict[str, pd.DataFrame]:
    parts = {name: df[df["split"] == name].reset_index(drop=True) for name in SPLITS}
    if label_issues is not None:
        parts["train"] = drop_quarantined(parts["train"], label_issues)
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


@dataclass
class _Prepared:
    """A run's split, encoded for the strategy's backbone: what every strategy trains from."""

    parts: dict[str, pd.DataFrame]
    backbone: Backbone
    model: Classifier
    encoded: dict[str, Encoded]
    transforms: tuple[Any, Any]  # (training, evaluation); (None, None) for text


@dataclass
class _Trained:
    """One strategy's outcome: the trained model, its logits per evaluation split and its report fields."""

    model: Classifier
    logits: dict[str, np.ndarray]
    report: dict[str, Any]
    trainable: int
    samples: int
    adapter: dict[str, Any] | None = None  # lora with a reloadable base: what the version stores instead


def _prepare(ctx: RunContext, strategy: str, label_issues: LabelIssues | None = None) -> _Prepared:
    spec = ctx.spec
    torch.manual_seed(spec.train.seed)
    parts = _splits(ctx, ctx.read_examples(), label_issues)
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
    return _Prepared(parts, backbone, model, encoded, transforms)


def _train_frozen(ctx: RunContext, prep: _Prepared, device: torch.device) -> _Trained:
    """Embed every split once (through the embedding cache) and fit the head on the frozen features."""
    spec, encoded, model = ctx.spec, prep.encoded, prep.model
    stats = CacheStats()
    cache = EmbeddingCache(ctx.store, cache_key(spec, prep.backbone.preprocessing))
    # One pass over the examples of every split that the cache has not seen (fewer, fuller batches).
    names = list(prep.parts)
    merged = Encoded(encoded[names[0]].kind, [i for n in names for i in encoded[n].ids],
                     [v for n in names for v in encoded[n].values],
                     np.concatenate([encoded[n].labels for n in names]))
    hashes = [h for n in names for h in content_hashes(prep.parts[n], spec.data.input_column)]
    everything = embed_with_cache(model, prep.backbone, spec, merged, hashes, cache, ctx.run_id, prep.transforms[1],
                                  stats, device)
    bounds = np.cumsum([0] + [len(encoded[n]) for n in names])
    feats = {n: everything[bounds[i] : bounds[i + 1]] for i, n in enumerate(names)}
    weight, bias, c_scores = fit_head(spec, feats["train"], encoded["train"].labels, feats["validation"],
                                      encoded["validation"].labels)
    with torch.no_grad():
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    logits = {name: feats[name] @ weight.T + bias for name in EVAL_SPLITS}
    best = min(c_scores.values(), key=lambda v: rank_key(spec.train.primary_metric, v))
    report = {"val_metric": best, "c_scores": c_scores, "curves": [], "cache": {
        "hits": stats.hits, "misses": stats.misses, "embed_s": stats.embed_s, "key": cache.prefix}}
    trainable = sum(p.numel() for p in model.head.parameters())  # the backbone is frozen: only the head learns
    return _Trained(model, logits, report, trainable, sum(len(e) for e in encoded.values()))


def _train_finetuned(ctx: RunContext, strategy: str, prep: _Prepared, device: torch.device,
                     model_id: str | None = None, lease: TrainLease | None = None) -> _Trained:
    """Fine-tune (partial, full, lora, scratch) with resume checkpoints in the run, then score every split. With
    ``lease``, an epoch's checkpoint is written only while this training still holds it."""
    spec, encoded = ctx.spec, prep.encoded
    resume_key = ctx.model_key(model_id or strategy, "resume", "state.pt")

    def load_resume() -> bytes | None:
        return ctx.store.get_bytes(resume_key) if ctx.store.exists(resume_key) else None

    def save_resume(blob: bytes) -> None:
        if lease is not None:
            lease.check("writing an epoch's resume checkpoint")
        ctx.store.put_bytes(resume_key, blob)

    # A LoRA model is stored as adapters naming its base by the fingerprint of the untouched base tensors.
    base = (base_fingerprint(prep.model.backbone) if strategy == "lora" and adapter_storable(spec.backbone)
            else None)
    if spec.train.distributed.nproc_per_node > 1:
        from tl_core.train.distributed import finetune_distributed

        result = finetune_distributed(prep.model, prep.backbone, strategy, spec, ctx.run_id, resume_key,
                                      encoded["train"], encoded["validation"], prep.transforms, device)
    else:
        result = finetune(prep.model, prep.backbone, strategy, spec, encoded["train"], encoded["validation"],
                          prep.transforms, load_resume, save_resume, device)
    model = result.model
    pad_id = int(getattr(prep.backbone.tokenizer, "pad_token_id", 0) or 0)
    logits = {}
    for name in EVAL_SPLITS:
        logits[name] = predict_logits(model.to(device), encoded[name], spec.train.eval_batch_size, device,
                                      pad_id, prep.transforms[1]) if len(encoded[name]) else np.zeros(
            (0, len(spec.labels)), np.float32)
    model.cpu()
    report = {"val_metric": result.best_score, "best_epoch": result.best_epoch, "curves": result.curves,
              "resumed_from_epoch": result.resumed_from_epoch, "train_samples_per_s": result.samples_per_s}
    adapter = None
    if base is not None and result.adapter is not None:
        adapter = {"tensors": result.adapter, "lora": result.lora_settings, "base_fingerprint": base}
    return _Trained(model, logits, report, result.trainable_parameters,
                    len(encoded["train"]) * max(1, len(result.curves)), adapter)


def run_train(ctx: RunContext, model_id: str, device: str | None = None) -> str:
    """Train one model of the spec (a strategy, or '<strategy>-<candidate>' for a candidate backbone) on the
    run's split; write model files, logits and a report. ``device`` ('auto', 'cuda' or 'cpu') overrides the
    spec's train.device. With candidates, a fine-tuned model of a backbone outside the shortlist (the top
    ``selection.finetune_top_k`` by frozen validation metric) is not trained: its report says why.
    """
    spec = ctx.spec
    if model_id not in spec.model_ids():
        raise ValueError(f"strategy {model_id!r} is not in train.strategies {spec.train.strategies}"
                         + (f" or the candidates' models {spec.model_ids()[len(spec.train.strategies):]}"
                            if spec.candidates else ""))
    if ctx.has(TrainReport, model_id):
        logger.info("%s already trained for run %s; nothing to do", model_id, ctx.run_id)
        return ctx.uri("models", model_id)
    model_spec, strategy, candidate = spec.for_model(model_id)
    if strategy != "frozen" and spec.candidates:
        reason = shortlist_reason(ctx, candidate)
        if reason:
            ctx.write(TrainReport(strategy=strategy, backbone=candidate, skipped=reason), model_id)
            logger.info("%s: not trained: %s", model_id, reason)
            return ctx.uri("models", model_id)
    lease = TrainLease.take(ctx, model_id)  # a training still running from an earlier try stops at its next check
    dev = choose_device(device or spec.train.device)
    # The label-issue step's finding (the DAG and `tl run` run it first; called directly, the function computes
    # it once, create-only, the same way): before any fine-tuning (tl_core/train/label_check.py).
    label_issues = ensure_label_issues(ctx, dev.type)
    mctx = dataclasses.replace(ctx, spec=model_spec)  # the model's backbone; keys stay the run's
    prep = _prepare(mctx, strategy, label_issues)
    t0 = time.perf_counter()
    trained = (_train_frozen(mctx, prep, dev) if strategy == "frozen"
               else _train_finetuned(mctx, strategy, prep, dev, model_id, lease))
    wall = time.perf_counter() - t0
    report = TrainReport(
        strategy=strategy, backbone=candidate, train_examples=len(prep.encoded["train"]), **trained.report,
        primary_metric=spec.train.primary_metric, wall_s=wall, samples_per_s=trained.samples / wall if wall else 0.0,
        peak_memory_mb=_peak_memory_mb(dev), device=str(dev), trainable_parameters=trained.trainable,
        total_parameters=sum(p.numel() for p in trained.model.parameters()))
    # The model's temperature: fitted once, here, and stored with it (export, evaluation, registry read it).
    temperature = fit_on_labelled(trained.logits["calibration"], prep.encoded["calibration"].labels)
    config = model_config(model_spec, prep.backbone, strategy).model_copy(update={"temperature": temperature})
    lease.check("writing the model files")
    if trained.adapter is not None:
        save_adapter(ctx.store, ctx.model_key(model_id), trained.adapter, prep.backbone, config)
    else:
        save_model(ctx.store, ctx.model_key(model_id), trained.model, prep.backbone, config)
    for name in EVAL_SPLITS:
        ctx.write_npz(f"models/{model_id}/logits/{name}.npz", example_id=np.array(prep.encoded[name].ids, dtype=str),
                      logits=trained.logits[name].astype(np.float32))
    if strategy == "frozen" and spec.candidates:  # what the backbone costs to serve, measured on this worker
        ctx.write(measure_cost(trained.model, prep, config, spec.selection), model_id)
    # The report is written last: its presence marks the model as complete.
    lease.check("writing the report")
    ctx.write(report, model_id)
    if ctx.store.exists(ctx.model_key(model_id, "resume", "state.pt")):
        ctx.store.delete(ctx.model_key(model_id, "resume", "state.pt"))
    logger.info("%s: validation %s %.4f in %.1fs", model_id, spec.train.primary_metric, report.val_metric, wall)
    return ctx.uri("models", model_id)
