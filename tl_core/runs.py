"""Where a run's artifacts live: ``<store>/runs/<model>/<run_id>/...`` (DESIGN.md "Runs and artifacts").

Every step reads and writes through a :class:`RunContext`, so the layout is defined once here.
Tasks pass URIs, never data.

Layout under the run prefix::

    spec.json                         the validated spec that produced everything below
    snapshot/manifest.json            partitions, row counts, content hash (data plane)
    audit/report.json                 findings with severities (data plane)
    audit/quarantine.parquet          non-blocking bad rows with a `reason` column
    split/examples.parquet            one row per usable example: example_id, label, labeled_at, split,
                                      the input column, group_id (if any) and the slice columns
    split/split.json                  example ids per split and the split hash
    models/<strategy>/model.safetensors, model_config.json, preprocessing/...   (training)
    models/<strategy>/logits/<split>.npz   arrays `example_id` (str) and `logits` (float32, n x C)
    models/<strategy>/train_report.json    curves, wall time, samples/s, peak memory, validation score
    candidate.json                    the selected strategy and every strategy's validation score
    export/model.onnx, export/parity.json, export/golden.npz   (export)
    evaluation/report.json, evaluation/report.html             (evaluate)
    gate/decision.json                (gate)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from tl_core.config import ModelSpec
from tl_core.store import ObjectStore, join_key, key_safe, open_store

SPLITS = ("train", "validation", "calibration", "test")


@dataclass(frozen=True)
class RunContext:
    spec: ModelSpec
    store: ObjectStore
    run_id: str

    @classmethod
    def open(cls, spec: ModelSpec, run_id: str) -> RunContext:
        return cls(spec=spec, store=open_store(spec.store), run_id=key_safe(run_id))

    @property
    def prefix(self) -> str:
        return join_key("runs", self.spec.name, self.run_id)

    def key(self, *parts: str) -> str:
        return join_key(self.prefix, *parts)

    def uri(self, *parts: str) -> str:
        return self.store.url(self.key(*parts))

    def model_key(self, strategy: str, *parts: str) -> str:
        return self.key("models", strategy, *parts)

    # JSON and arrays: the two formats every step shares.
    def write_json(self, rel: str, payload: Any) -> str:
        data = json.dumps(payload, indent=2, sort_keys=True, default=str).encode()
        self.store.put_bytes(self.key(rel), data)
        return self.uri(rel)

    def read_json(self, rel: str) -> Any:
        return json.loads(self.store.get_bytes(self.key(rel)))

    def write_npz(self, rel: str, **arrays: np.ndarray) -> str:
        buf = io.BytesIO()
        np.savez(buf, **arrays)  # type: ignore[arg-type]
        self.store.put_bytes(self.key(rel), buf.getvalue())
        return self.uri(rel)

    def read_npz(self, rel: str) -> dict[str, np.ndarray]:
        with np.load(io.BytesIO(self.store.get_bytes(self.key(rel))), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def save_spec(self) -> str:
        """The spec is saved with every artifact it produced."""
        payload = {"fingerprint": self.spec.fingerprint(), **self.spec.model_dump(mode="json")}
        return self.write_json("spec.json", payload)
