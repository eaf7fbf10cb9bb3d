"""DDP inside one train task: ``train.distributed.nproc_per_node`` processes (torch.multiprocessing spawn), gloo on
CPU and NCCL on GPU (one device per rank), rendezvous through a file in a private temporary folder.

Every rank runs :func:`tl_core.train.finetune.finetune` on the same data and takes its shard of every batch
(finetune._train_epoch); validation runs whole on every rank (the weights are identical), so early stopping
agrees without communication. Rank 0 alone writes the resume checkpoint into the run (a restarted task resumes
all ranks from it) and hands the result back to the task's process through a file; the other ranks write
nothing.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tl_core.config import ModelSpec
from tl_core.errors import TLError
from tl_core.models.backbones import Backbone, Classifier
from tl_core.models.preprocessing import Encoded
from tl_core.train.finetune import TrainResult

logger = logging.getLogger(__name__)


class DistributedError(TLError):
    """A DDP rank failed; the message names the rank and its error."""


@dataclass
class Job:
    """Everything a rank needs (pickled to each spawned process)."""

    model: Classifier
    backbone: Backbone
    strategy: str
    spec: ModelSpec
    run_id: str
    resume_key: str
    train: Encoded
    val: Encoded
    transforms: tuple[Any, Any]
    device: str
    folder: str


def _backend(spec: ModelSpec, device: str) -> str:
    backend = spec.train.distributed.backend
    return ("nccl" if device == "cuda" else "gloo") if backend == "auto" else backend


def _rank_main(rank: int, job: Job) -> None:
    """One rank: join the group, fine-tune, rank 0 saves the result."""
    import torch.distributed as dist

    from tl_core.runs import RunContext
    from tl_core.train.finetune import finetune

    size = job.spec.train.distributed.nproc_per_node
    dist.init_process_group(_backend(job.spec, job.device), init_method=f"file://{job.folder}/rendezvous",
                            rank=rank, world_size=size)
    try:
        device = torch.device("cuda", rank) if job.device == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = RunContext.open(job.spec, job.run_id).store

        def load_resume() -> bytes | None:
            return store.get_bytes(job.resume_key) if store.exists(job.resume_key) else None

        def save_resume(blob: bytes) -> None:
            if rank == 0:
                store.put_bytes(job.resume_key, blob)

        # torch.multiprocessing hands every rank the same shared-memory tensors: each rank trains its own copy
        model, backbone = copy.deepcopy(job.model), copy.deepcopy(job.backbone)
        result = finetune(model, backbone, job.strategy, job.spec, job.train, job.val, job.transforms, load_resume,
                          save_resume, device)
        if rank == 0:
            result.samples_per_s *= size  # each rank saw 1/size of every batch
            fields = {k: v for k, v in vars(result).items() if k != "model"}
            torch.save({"state": result.model.state_dict(), "fields": fields}, Path(job.folder) / "result.pt")
    finally:
        dist.destroy_process_group()


def finetune_distributed(model: Classifier, backbone: Backbone, strategy: str, spec: ModelSpec, run_id: str,
                         resume_key: str, train: Encoded, val: Encoded, transforms: tuple[Any, Any],
                         device: torch.device) -> TrainResult:
    """finetune() on ``nproc_per_node`` DDP ranks; returns rank 0's result with ``model`` (in place) trained."""
    import torch.multiprocessing as mp

    size = spec.train.distributed.nproc_per_node
    if device.type == "cuda" and torch.cuda.device_count() < size:
        raise DistributedError(f"train.distributed.nproc_per_node is {size} but {torch.cuda.device_count()} CUDA "
                               "devices are visible: one rank per device")
    with tempfile.TemporaryDirectory(prefix="tl-ddp-") as folder:
        job = Job(model, backbone, strategy, spec, run_id, resume_key, train, val, transforms, device.type, folder)
        logger.info("%s: DDP on %d processes (%s)", strategy, size, _backend(spec, device.type))
        try:
            mp.spawn(_rank_main, args=(job,), nprocs=size, join=True)
        except mp.ProcessRaisedException as exc:
            raise DistributedError(f"{strategy}: a DDP rank failed: {exc}") from None
        saved = torch.load(Path(folder) / "result.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(saved["state"])
    return TrainResult(model=model.eval(), **saved["fields"])
