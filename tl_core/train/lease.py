"""Who trains a model of a run: the newest caller, so that an orphaned training stops instead of writing.

A train task's retry can start while the try before it still runs: Airflow runs the task in a process of its own
session, so when only its Celery worker dies (the OOM killer, a `kill -9` of the worker) the training lives on,
orphaned, and the scheduler retries the task once the heartbeat stops. Both would write the same run's resume
checkpoint, weights, logits and report, and the registered model could mix files of the two. So each training
takes the model's lease when it starts (``models/<model>/resume/lease.json``: the newest taker owns it) and checks
it before every checkpoint and before its final writes; a superseded one raises :class:`TrainingSuperseded`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from tl_core.errors import NoSuchKey, TrainingSuperseded
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)


@dataclass
class TrainLease:
    ctx: RunContext
    model_id: str
    owner: dict[str, object]

    @property
    def key(self) -> str:
        return self.ctx.model_key(self.model_id, "resume", "lease.json")

    @classmethod
    def take(cls, ctx: RunContext, model_id: str) -> TrainLease:
        """Own ``model_id``'s training in this run from now on (a training that held it stops at its next check)."""
        owner: dict[str, object] = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(),
                                    "taken_at": datetime.now(UTC).isoformat(timespec="seconds")}
        lease = cls(ctx, model_id, owner)
        ctx.store.put_bytes(lease.key, json.dumps(owner, sort_keys=True).encode())
        return lease

    def check(self, before: str) -> None:
        """Raise TrainingSuperseded when another training took the lease since this one took it."""
        try:
            holder = json.loads(self.ctx.store.get_bytes(self.key))
        except (NoSuchKey, ValueError) as exc:  # removed, or not a lease: someone else's doing
            raise TrainingSuperseded(f"run {self.ctx.run_id}: {self.model_id}: the training lease {self.key} cannot "
                                     f"be read ({exc}); stopping before {before}") from None
        if holder.get("id") != self.owner["id"]:
            raise TrainingSuperseded(
                f"run {self.ctx.run_id}: {self.model_id} is now trained by pid {holder.get('pid')} on "
                f"{holder.get('host')} (lease taken {holder.get('taken_at')}, after this training's "
                f"{self.owner['taken_at']}, e.g. a retry of the train task); this one (pid {self.owner['pid']} on "
                f"{self.owner['host']}) stops before {before} and writes nothing more")
