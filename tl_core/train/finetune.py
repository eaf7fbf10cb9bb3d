"""Fine-tuning strategies (partial, full, lora, scratch) in one explicit loop.

Recipe (fastai's freeze-then-unfreeze, timm's train script): head-only warm-up epochs; then unfreeze
(gradually for `partial`, one more block per epoch up to N); discriminative learning rates with
layer-wise decay going down the backbone (LoRA adapters: one LR of their own when `train.lora.lr`
is set); AdamW (fused, on CUDA and CPU) without decay on norms and biases;
linear warm-up then cosine; gradient clipping; class-weighted loss; early stopping on the validation
primary metric (`train.primary_metric`, either direction) keeping the best weights; bf16 autocast and
channels_last on CUDA. A resume checkpoint is written after every epoch, so a killed task re-run continues
from its last completed epoch; it holds only the tensors training can change (LoRA: adapters + head), plus
optimizer, scheduler and RNG state.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tl_core.config import ModelSpec
from tl_core.errors import ResumeError
from tl_core.models.adapters import adapter_state, apply_lora, merge_lora
from tl_core.models.backbones import Backbone, Classifier
from tl_core.models.embeddings import choose_device, iterate
from tl_core.models.preprocessing import Encoded
from tl_core.train.objective import improves, validation_score

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: Classifier
    curves: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_score: float = -math.inf
    samples_per_s: float = 0.0
    wall_s: float = 0.0
    resumed_from_epoch: int = 0
    trainable_parameters: int = 0
    # lora: the adapters, head and buffers of the best epoch (before merging) and the LoRA settings used
    adapter: dict[str, torch.Tensor] | None = None
    lora_settings: dict[str, Any] | None = None


def class_weights(y: np.ndarray, num_classes: int, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = np.bincount(y[y >= 0], minlength=num_classes).astype(float)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def _param_blocks(model: Classifier, backbone: Backbone) -> list[list[nn.Parameter]]:
    """Backbone parameters grouped bottom to top (LoRA parameters go with the block they adapt)."""
    named = dict(model.backbone.named_parameters())
    blocks: list[list[nn.Parameter]] = []
    for names in backbone.blocks():
        params: list[nn.Parameter] = []
        for base in names:
            stem = base.rsplit(".", 1)[0]
            params.extend(p for n, p in named.items() if n.endswith(base) or (".lora_" in n and stem in n))
        blocks.append(list({id(p): p for p in params}.values()))
    return blocks


def _set_trainable(model: Classifier, blocks: list[list[nn.Parameter]], strategy: str, epoch: int, spec: ModelSpec):
    warm = epoch < spec.train.warmup_epochs and strategy != "scratch"
    for p in model.backbone.parameters():
        p.requires_grad = False
    for p in model.head.parameters():
        p.requires_grad = True
    if warm:
        return
    if strategy in ("full", "scratch"):
        for p in model.backbone.parameters():
            p.requires_grad = True
    elif strategy == "lora":
        for n, p in model.backbone.named_parameters():
            p.requires_grad = "lora_" in n
    elif strategy == "partial":
        # Gradual unfreezing: one more block per epoch after warm-up, up to partial_blocks.
        k = min(spec.train.partial_blocks, epoch - spec.train.warmup_epochs + 1, len(blocks))
        for block in blocks[len(blocks) - k :]:
            for p in block:
                p.requires_grad = True


def _optimizer(model: Classifier, blocks: list[list[nn.Parameter]], strategy: str, spec: ModelSpec,
               device: torch.device) -> torch.optim.Optimizer:
    """Discriminative LRs: head at lr, top block at backbone_lr, each lower block decayed by layer_decay."""
    t = spec.train
    groups: list[dict[str, Any]] = []

    def add(params: list[nn.Parameter], lr: float) -> None:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        groups.extend(
            g for g in ({"params": decay, "lr": lr, "weight_decay": t.weight_decay},
                        {"params": no_decay, "lr": lr, "weight_decay": 0.0}) if g["params"]
        )

    # scratch: one LR everywhere (random init has no pretrained layers to protect).
    scratch_lr = t.scratch_lr if t.scratch_lr is not None else t.lr
    add(list(model.head.parameters()), scratch_lr if strategy == "scratch" else t.lr)
    seen: set[int] = set()
    for depth, block in enumerate(reversed(blocks)):
        params = [p for p in block if id(p) not in seen]
        seen.update(id(p) for p in params)
        if strategy == "scratch":
            lr = scratch_lr
        elif strategy == "lora" and t.lora.lr is not None:
            # Adapters start at zero (B = 0) like a new head, so they take one LR of their own, not a decayed one.
            lr = t.lora.lr
        else:
            lr = t.backbone_lr * (t.layer_decay**depth)
        add(params, lr)
    rest = [p for p in model.backbone.parameters() if id(p) not in seen]
    if rest:
        add(rest, scratch_lr if strategy == "scratch" else t.backbone_lr * (t.layer_decay ** len(blocks)))
    # fused: one kernel over all tensors (CUDA, and CPU since torch 2.4). With the per-tensor loop, full
    # fine-tuning of MiniLM on CPU ran at 0.86x HF Trainer (fused by default); fused, 1.17x (bench/peers.py)
    return torch.optim.AdamW(groups, fused=device.type in ("cuda", "cpu"))


def _schedule(optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float) -> Any:
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.inference_mode()
def predict_logits(model: Classifier, data: Encoded, batch_size: int, device: torch.device, pad_id: int,
                   transform: Any) -> np.ndarray:
    """Logits in the original row order (batches are length-sorted for speed)."""
    model.eval()
    out = np.zeros((len(data), model.head.out_features), dtype=np.float32)
    autocast = _autocast(device)
    for idx, inputs in iterate(data, batch_size, False, None, pad_id, transform):
        with autocast:
            logits = model(*(x.to(device) for x in inputs))
        out[idx] = logits.float().cpu().numpy()
    return out


def _autocast(device: torch.device) -> AbstractContextManager[Any]:
    """bf16 autocast on CUDA, nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def _freeze_frozen_norms(model: nn.Module) -> None:
    """Norm layers whose parameters are frozen keep their running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()


def _changing_keys(model: Classifier, blocks: list[list[nn.Parameter]], strategy: str, spec: ModelSpec,
                   total_epochs: int) -> tuple[list[str], int]:
    """State-dict keys that training can change, and how many parameters it trains.

    A parameter changes only if some epoch of the schedule makes it trainable (a frozen one gets no
    gradient, so AdamW skips it, decay included); buffers (BatchNorm statistics) are all kept. Resume
    checkpoints and the best-epoch copy hold only these keys: for LoRA the adapters, the head and the
    buffers, not the base model. Leaves requires_grad as epoch 0 sets it.
    """
    trainable: set[str] = set()
    for epoch in range(total_epochs):
        _set_trainable(model, blocks, strategy, epoch, spec)
        trainable.update(n for n, p in model.named_parameters() if p.requires_grad)
    _set_trainable(model, blocks, strategy, 0, spec)
    params = dict(model.named_parameters())
    keys = [k for k in model.state_dict() if k in trainable or k not in params]
    return keys, sum(params[n].numel() for n in trainable)


def _changing_state(model: Classifier, keys: list[str]) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    return {k: state[k].detach().cpu().clone() for k in keys}


def _check_keys(state: dict[str, torch.Tensor], keys: list[str], what: str) -> None:
    """Refuse a saved partial state that does not hold exactly ``keys`` (another model or strategy)."""
    missing, unexpected = sorted(set(keys) - set(state)), sorted(set(state) - set(keys))
    if missing or unexpected:
        raise ResumeError(
            f"{what} does not match this model and strategy: {len(missing)} tensors missing {missing[:3]}, "
            f"{len(unexpected)} unexpected {unexpected[:3]}; delete it to train from the start"
        )


@dataclass
class _Loop:
    """What one fine-tuning run carries from step to step (built by :func:`_setup`)."""

    model: Classifier
    compiled: nn.Module  # the model as the training step calls it (torch.compile'd when train.compile)
    strategy: str
    spec: ModelSpec
    device: torch.device
    pad_id: int
    generator: torch.Generator
    blocks: list[list[nn.Parameter]]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loss_fn: nn.Module
    keys: list[str]  # the state-dict keys training can change (what checkpoints hold)
    total_epochs: int
    result: TrainResult
    best_state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    start_epoch: int = 0


def _save_checkpoint(loop: _Loop, epoch: int) -> bytes:
    result = loop.result
    buf = io.BytesIO()
    torch.save({"format": 2, "changing": _changing_state(loop.model, loop.keys),
                "optimizer": loop.optimizer.state_dict(), "scheduler": loop.scheduler.state_dict(),
                "rng": torch.get_rng_state(), "py_rng": random.getstate(), "generator": loop.generator.get_state(),
                "epoch": epoch, "stale": loop.stale, "best_score": result.best_score, "best_epoch": result.best_epoch,
                "curves": result.curves, "best_state": loop.best_state}, buf)
    return buf.getvalue()


def _restore_checkpoint(blob: bytes, loop: _Loop) -> None:
    """Load a resume checkpoint: the changing tensors, optimizer, scheduler, RNGs, curves and where to go on."""
    state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    what = f"{loop.strategy} resume checkpoint"
    if "changing" in state:
        _check_keys(state["changing"], loop.keys, what)
        if state["best_state"] is not None:
            _check_keys(state["best_state"], loop.keys, what + " (best-epoch state)")
        loop.model.load_state_dict(state["changing"], strict=False)
    else:  # written before checkpoints held only the changing tensors: the whole model
        loop.model.load_state_dict(state["model"])
    loop.optimizer.load_state_dict(state["optimizer"])
    loop.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    if "py_rng" in state:
        random.setstate(state["py_rng"])
    else:  # written before the Python RNG was saved: resumes, but image augmentation draws differ
        logger.warning("%s: resume checkpoint has no Python RNG state; the run will not be bit-for-bit", loop.strategy)
    loop.generator.set_state(state["generator"])
    result = loop.result
    result.best_score, result.best_epoch = float(state["best_score"]), int(state["best_epoch"])
    result.curves = [dict(c) for c in state["curves"]]
    loop.start_epoch, loop.stale, loop.best_state = int(state["epoch"]) + 1, int(state["stale"]), state["best_state"]


def world() -> tuple[int, int]:
    """(rank, world size) of this process under torch.distributed, (0, 1) without it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _train_epoch(loop: _Loop, train: Encoded, transform: Any, desc: str) -> tuple[float, int]:
    """One pass over the shuffled training set; returns (summed loss, examples seen).

    Under DDP every rank draws the same batches (same seeded generator) and takes rows rank, rank + n, ... of
    each: DDP's gradient average over equal shards is the 1-process batch gradient. A last batch with fewer rows
    than ranks is skipped on every rank (each rank must take part in every backward)."""
    t, device = loop.spec.train, loop.device
    rank, size = world()
    running, count = 0.0, 0
    bar = tqdm(total=len(train), desc=desc, unit="ex", leave=False, disable=None if rank == 0 else True)
    for idx, inputs in iterate(train, t.batch_size, True, loop.generator, loop.pad_id, transform):
        if size > 1:
            if len(idx) < size:
                continue
            mine = np.arange(rank, len(idx), size)
            idx, inputs = idx[mine], tuple(x[torch.from_numpy(mine)] for x in inputs)
        targets = torch.as_tensor(train.labels[idx], device=device)
        inputs = tuple(x.to(device, non_blocking=True) for x in inputs)
        with _autocast(device):
            loss = loop.loss_fn(loop.compiled(*inputs).float(), targets)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in loop.model.parameters() if p.requires_grad], t.grad_clip)
        loop.optimizer.step()
        loop.scheduler.step()
        running += float(loss.detach()) * len(idx)
        count += len(idx)
        bar.update(len(idx))
        bar.set_postfix(loss=f"{running / count:.4f}")
    bar.close()
    return running, count


def _setup(model: Classifier, backbone: Backbone, strategy: str, spec: ModelSpec, train: Encoded,
           device: torch.device) -> _Loop:
    """Seed, add the adapters (lora), move to the device, build optimizer, schedule and loss.

    The order is part of the recipe: the seeds come first, so the adapters' random init is seeded too.
    """
    t = spec.train
    torch.manual_seed(t.seed)
    random.seed(t.seed)  # timm's image augmentation (RandomResizedCropAndInterpolation) draws from `random`
    generator = torch.Generator().manual_seed(t.seed)
    lora_settings = apply_lora(model, backbone, spec) if strategy == "lora" else None
    model.to(device)
    if device.type == "cuda" and backbone.kind == "timm":
        model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    blocks = _param_blocks(model, backbone)
    optimizer = _optimizer(model, blocks, strategy, spec, device)
    total_epochs = t.warmup_epochs + t.epochs  # scratch too: its "warm-up" epochs already train everything
    scheduler = _schedule(optimizer, total_epochs * math.ceil(len(train) / t.batch_size), t.warmup_fraction)
    weights = class_weights(train.labels, len(spec.labels), t.class_weighting)
    loss_fn = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    compiled: nn.Module = torch.compile(model) if t.compile else model  # type: ignore[assignment]
    result = TrainResult(model=model, lora_settings=lora_settings)
    keys, result.trainable_parameters = _changing_keys(model, blocks, strategy, spec, total_epochs)
    return _Loop(model=model, compiled=compiled, strategy=strategy, spec=spec, device=device,
                 pad_id=int(getattr(backbone.tokenizer, "pad_token_id", 0) or 0), generator=generator, blocks=blocks,
                 optimizer=optimizer, scheduler=scheduler, loss_fn=loss_fn, keys=keys, total_epochs=total_epochs,
                 result=result)


def _resume(loop: _Loop, load_resume: Callable[[], bytes | None]) -> None:
    """Continue after the last completed epoch when a resume checkpoint exists."""
    blob = load_resume()
    if blob is None:
        return
    _restore_checkpoint(blob, loop)
    loop.result.resumed_from_epoch = loop.start_epoch
    # epochs count from 1 here as in the per-epoch log lines and the curves: start_epoch epochs are done
    logger.info("%s: resuming after epoch %d (best %s %.4f)", loop.strategy, loop.start_epoch,
                loop.spec.train.primary_metric, loop.result.best_score)


def _epoch(loop: _Loop, epoch: int, train: Encoded, val: Encoded, transforms: tuple[Any, Any]) -> tuple[int, float]:
    """Train one epoch and score it on validation (its learning-curve point); returns (examples, score)."""
    t, model = loop.spec.train, loop.model
    _set_trainable(model, loop.blocks, loop.strategy, epoch, loop.spec)
    if world()[1] > 1:  # re-wrapped per epoch: DDP registers the parameters that train in this epoch
        from torch.nn.parallel import DistributedDataParallel

        loop.compiled = DistributedDataParallel(model)
    model.train()
    _freeze_frozen_norms(model)
    desc = f"{loop.strategy} epoch {epoch + 1}/{loop.total_epochs}"
    running, count = _train_epoch(loop, train, transforms[0], desc)
    val_logits = predict_logits(model, val, t.eval_batch_size, loop.device, loop.pad_id, transforms[1])
    val_loss = float(nn.functional.cross_entropy(torch.from_numpy(val_logits), torch.from_numpy(val.labels)))
    score = validation_score(t.primary_metric, val_logits, val.labels)
    loop.result.curves.append({"epoch": epoch + 1, "train_loss": running / max(count, 1), "val_loss": val_loss,
                               "val_metric": score})
    logger.info("%s epoch %d: train_loss %.4f val_loss %.4f val_%s %.4f", loop.strategy, epoch + 1,
                running / max(count, 1), val_loss, t.primary_metric, score)
    return count, score


def _checkpoint(loop: _Loop, epoch: int, score: float, save_resume: Callable[[bytes], None]) -> None:
    """Keep the best epoch's tensors, count epochs without improvement, write the resume checkpoint."""
    result = loop.result
    if improves(loop.spec.train.primary_metric, score, result.best_score if result.best_epoch > 0 else None):
        result.best_score, result.best_epoch, loop.stale = score, epoch + 1, 0
        loop.best_state = _changing_state(loop.model, loop.keys)
    else:
        loop.stale += 1
    save_resume(_save_checkpoint(loop, epoch))


def finetune(
    model: Classifier,
    backbone: Backbone,
    strategy: str,
    spec: ModelSpec,
    train: Encoded,
    val: Encoded,
    transforms: tuple[Any, Any],
    load_resume: Callable[[], bytes | None],
    save_resume: Callable[[bytes], None],
    device: torch.device | None = None,
) -> TrainResult:
    """Train ``model`` in place; returns the best-on-validation weights and the learning curves.

    ``device``: where to train (default: ``choose_device(spec.train.device)``).
    """
    t = spec.train
    loop = _setup(model, backbone, strategy, spec, train, device or choose_device(t.device))
    _resume(loop, load_resume)
    seen_samples, t0 = 0, time.perf_counter()
    for epoch in range(loop.start_epoch, loop.total_epochs):
        count, score = _epoch(loop, epoch, train, val, transforms)
        seen_samples += count
        _checkpoint(loop, epoch, score, save_resume)
        if epoch + 1 > t.warmup_epochs and loop.stale >= t.patience:
            logger.info("%s: early stop at epoch %d (best epoch %d)", strategy, epoch + 1, loop.result.best_epoch)
            break
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state, strict=False)
    result = loop.result
    result.wall_s = time.perf_counter() - t0
    result.samples_per_s = seen_samples / result.wall_s if result.wall_s > 0 else 0.0
    if strategy == "lora":
        result.adapter = adapter_state(model)
    result.model = merge_lora(model).cpu().eval()
    return result
