"""`tl split`: deterministic, group-aware, stratified train / validation / calibration / test.

Test = the newest ``test_days`` labeling days (production-like). Rows sharing a group_id, an exact
input or a near-duplicate key (normalised text hash, or image perceptual hash within
``near_duplicate_bits``) form one cluster, and a cluster never straddles splits: it goes wholly to the
side of its newest member. The other clusters are assigned per label stratum by a seeded hash, so the
same snapshot and seed always give the same split.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging

import numpy as np
import pandas as pd

from tl_core.data.audit import input_keys, load_snapshot_rows
from tl_core.errors import DataError, NoSuchKey
from tl_core.runs import RunContext

logger = logging.getLogger(__name__)
MAX_PAIRWISE_IMAGES = 20_000


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = int(self.parent[i])
        return i

    def union_groups(self, keys: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        same = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        for j in same:
            a, b = self.find(int(order[j])), self.find(int(order[j + 1]))
            if a != b:
                self.parent[max(a, b)] = min(a, b)


def clusters(rows: pd.DataFrame, column: str, near_bits: int) -> np.ndarray:
    """Cluster id per row: connected components of shared group_id / exact input / near-duplicate key."""
    uf = _UnionFind(len(rows))
    exact, near = input_keys(rows, column)
    uf.union_groups(exact)
    uf.union_groups(near)
    if "group_id" in rows:
        gid = rows["group_id"]
        has = gid.notna().to_numpy()
        keys = np.where(has, pd.util.hash_pandas_object(gid.astype(str), index=False).to_numpy(),
                        np.arange(len(rows), dtype=np.uint64) + np.uint64(2**63))
        uf.union_groups(keys)
    if column == "image" and near_bits > 0 and 0 < len(rows) <= MAX_PAIRWISE_IMAGES:
        hashes = near.astype(np.uint64)
        for i in range(len(rows)):
            dist = np.array([bin(int(x)).count("1") for x in (hashes[i + 1 :] ^ hashes[i])], dtype=int)
            for j in np.flatnonzero(dist <= near_bits):
                a, b = uf.find(i), uf.find(i + 1 + int(j))
                if a != b:
                    uf.parent[max(a, b)] = min(a, b)
    return np.array([uf.find(i) for i in range(len(rows))])


def _unit_hash(values: pd.Series, seed: int) -> np.ndarray:
    digest = values.astype(str).map(lambda v: hashlib.sha256(f"{seed}:{v}".encode()).hexdigest()[:12])
    return digest.map(lambda h: int(h, 16) / 16**12).to_numpy()


def assign_splits(rows: pd.DataFrame, column: str, test_days: int, val_frac: float, cal_frac: float,
                  seed: int, near_bits: int) -> pd.Series:
    cid = clusters(rows, column, near_bits)
    days = sorted(rows["dt"].unique())
    test_set = set(days[-test_days:])
    frame = pd.DataFrame({"cid": cid, "dt": rows["dt"].to_numpy(), "label": rows["label"].to_numpy(),
                          "example_id": rows["example_id"].to_numpy()})
    newest = frame.groupby("cid")["dt"].max()
    test_clusters = set(newest[newest.isin(test_set)].index)
    split = pd.Series("train", index=rows.index)
    is_test = frame["cid"].isin(test_clusters).to_numpy()
    split[is_test] = "test"
    # Non-test clusters: per label stratum (the cluster's most common label), order by a seeded hash of the
    # cluster's smallest example id; the first shares go to validation and calibration.
    rest = frame[~is_test]
    if len(rest):
        meta = rest.groupby("cid").agg(label=("label", lambda s: s.value_counts().index[0]),
                                       anchor=("example_id", "min"), size=("example_id", "size"))
        meta["u"] = _unit_hash(meta["anchor"], seed)
        assignment: dict[int, str] = {}
        for _, group in meta.sort_values("u").groupby("label", sort=True):
            total = group["size"].sum()
            cum = group["size"].cumsum() - group["size"]
            for cid_, start in zip(group.index, cum, strict=True):
                frac = start / total
                assignment[cid_] = ("validation" if frac < val_frac else
                                    "calibration" if frac < val_frac + cal_frac else "train")
        split[~is_test] = rest["cid"].map(assignment).to_numpy()
    return split


def run_split(ctx: RunContext) -> str:
    spec = ctx.spec
    rows = load_snapshot_rows(ctx)
    try:
        quarantine = pd.read_parquet(io.BytesIO(ctx.store.get_bytes(ctx.key("audit/quarantine.parquet"))))
    except NoSuchKey:
        raise DataError(f"run {ctx.run_id}: no audit/quarantine.parquet; run `tl audit` before `tl split`") from None
    usable = rows[~rows["_row"].isin(set(quarantine["_row"]))].reset_index(drop=True)
    if usable.empty:
        raise DataError(f"run {ctx.run_id}: no usable rows left after the audit")
    d = spec.data
    usable["split"] = assign_splits(usable, d.input_column, d.test_days, d.validation_fraction,
                                    d.calibration_fraction, d.split_seed, d.near_duplicate_bits).to_numpy()
    keep = ["example_id", "label", "labeled_at", "dt", "split", d.input_column, *d.slice_columns]
    if "group_id" in usable:
        keep.append("group_id")
    out = usable[list(dict.fromkeys(keep))].sort_values(["split", "dt", "example_id"], kind="stable")
    out = out.reset_index(drop=True)
    buf = io.BytesIO()
    out.to_parquet(buf, index=False)
    ctx.store.put_bytes(ctx.key("split/examples.parquet"), buf.getvalue())
    ids = {s: sorted(out.loc[out["split"] == s, "example_id"].astype(str)) for s in ("train", "validation",
                                                                                     "calibration", "test")}
    split_hash = hashlib.sha256(json.dumps(ids, sort_keys=True).encode()).hexdigest()
    ctx.write_json("split/split.json", {"split_hash": split_hash, "counts": {k: len(v) for k, v in ids.items()},
                                        "example_ids": ids})
    logger.info("split: %s", {k: len(v) for k, v in ids.items()})
    return ctx.uri("split/split.json")
