"""Near-duplicates that mean "the same input": real icons (Debian's tango-icon-theme), no chaining, blank images."""

from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_fixtures import examples, finding, icon_spec, put_days, real_frame
from tl_core.artifacts import AuditReport, SplitCheck
from tl_core.data.audit import run_audit
from tl_core.data.dedup import (
    NearRule,
    confirmed_pairs,
    image_keys,
    input_keys,
    leader_clusters,
    row_clusters,
    text_near_keys,
)
from tl_core.data.partitions import hamming
from tl_core.data.snapshot import run_snapshot
from tl_core.data.split import run_split
from tl_core.models.preprocessing import decode_images, model_rgb
from tl_core.runs import RunContext

LAST = date(2026, 11, 10)


def _png(img: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")  # type: ignore[attr-defined]
    return buf.getvalue()


def test_real_icons_through_snapshot_audit_and_split_keep_clusters_small(tmp_path: Path) -> None:
    df = real_frame("tango_icons")
    spec = icon_spec(tmp_path.as_uri())
    put_days(spec, df)
    ctx = RunContext.open(spec, "icons")
    run_snapshot(ctx, LAST)
    run_audit(ctx)
    report = ctx.read(AuditReport).model_dump(mode="json")
    near = finding(report, "near_duplicates")
    print(f"\nicons: {len(df)} rows; near-duplicate clusters {near['clusters']}, largest {near['largest_cluster']} "
          f"({near['largest_cluster_ids']})")
    assert report["usable_rows"] == len(df) and near["largest_cluster"] <= 4
    run_split(ctx)
    rep = ctx.read(SplitCheck).model_dump(mode="json")
    shares = {s: round(v["share"], 3) for s, v in rep["achieved"].items()}
    print(f"icons split: requested {({k: round(v, 3) for k, v in rep['requested'].items()})}, achieved {shares}, "
          f"pulled into test {rep['pulled_into_test']}")
    assert not rep["blocking"]
    assert rep["achieved"]["test"]["share"] - rep["requested"]["test"] <= spec.data.split_tolerance
    ex = examples(ctx)
    assert all(g["split"].nunique() == 1 for _, g in ex.groupby("group_id"))  # every size of an icon together
    assert all(min(c.values()) > 0 for c in ({s: rep["per_class"][lab][s] for s in ("train", "calibration")}
                                            for lab in spec.labels))
    cid, _, _ = row_clusters(df, "image", NearRule.of(spec.data))
    assert pd.Series(cid).value_counts().max() <= 12  # an icon's three sizes, joined at most by a few look-alikes


def _blend_chain(steps: int = 24) -> list[bytes]:
    """Two real, different icons and the images blending one into the other in small steps."""
    from PIL import Image

    df = real_frame("tango_icons")
    a = model_rgb(Image.open(io.BytesIO(df.loc[df["example_id"] == "apps/accessories-calculator@32", "image"].item())))
    b = model_rgb(Image.open(io.BytesIO(df.loc[df["example_id"] == "places/user-trash@32", "image"].item())))
    return [_png(Image.blend(a, b, k / steps)) for k in range(steps + 1)]


def test_a_chain_of_neighbours_is_not_one_cluster() -> None:
    images = _blend_chain()
    rule = NearRule()
    exact, hashes, _ = image_keys(pd.Series(images), rule=rule)
    i, j = confirmed_pairs(hashes, rule)
    _, components = connected_components(coo_matrix((np.ones(len(i)), (i, j)), shape=(len(images),) * 2),
                                         directed=False)
    assert np.bincount(components).max() == len(images)  # as a graph, neighbours of neighbours join everything
    leader = leader_clusters(len(images), i, j, np.arange(len(images)))
    sizes = np.bincount(leader)
    assert sizes.max() < len(images) / 2 and len(np.unique(leader)) >= 3
    pairs = set(zip(i.tolist(), j.tolist(), strict=True)) | set(zip(j.tolist(), i.tolist(), strict=True))
    for row, lead in enumerate(leader.tolist()):  # every member is confirmed close to its leader
        assert row == lead or (row, lead) in pairs
    assert hamming(hashes.coarse[0], hashes.coarse[-1]) > rule.bits  # the two ends are different inputs


def test_transparency_is_hashed_on_the_model_background() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    alpha = np.zeros((16, 16), dtype=np.uint8)
    alpha[4:12, 4:12] = 255
    shape = np.dstack([np.full((16, 16, 3), 40, np.uint8), alpha])
    garbage = np.dstack([np.where(alpha[..., None] > 0, 40, rgb).astype(np.uint8), alpha])  # junk under alpha 0
    a, b = _png(Image.fromarray(shape, "RGBA")), _png(Image.fromarray(garbage, "RGBA"))
    exact, hashes, _ = image_keys(pd.Series([a, b]))
    assert exact[0] != exact[1] and hashes.coarse[0] == hashes.coarse[1]
    assert (hashes.thumb[0] == hashes.thumb[1]).all()
    seen = decode_images([a, b], ["a", "b"], lambda img: __import__("torch").from_numpy(np.asarray(img).copy()))
    assert (seen[0] == seen[1]).all() and int(seen[0][0, 0, 0]) == 255  # the model sees the same white background
    assert Image.open(io.BytesIO(b)).convert("RGB").getpixel((0, 0)) != (255, 255, 255)  # plain RGB would not


def test_near_blank_images_are_only_exact_duplicates() -> None:
    from PIL import Image

    blanks = []
    for k in range(6):  # transparent icons with one faint dot each, at different places
        arr = np.zeros((32, 32, 4), dtype=np.uint8)
        arr[3 + 4 * k, 5, :] = (200, 200, 200, 60)
        blanks.append(_png(Image.fromarray(arr, "RGBA")))
    values = pd.Series([*blanks, blanks[0]])
    rule = NearRule()
    exact, hashes, _ = image_keys(values, rule=rule)
    assert hashes.blank.all()
    assert int(hamming(hashes.coarse[:6, None], hashes.coarse[None, :6]).max()) <= rule.bits  # all look alike
    _, near = input_keys(pd.DataFrame({"image": values, "example_id": [str(k) for k in range(7)]}), "image", None,
                         rule)
    assert len(set(near.tolist())) == 6 and near[0] == near[6]  # only the exact copy joins


def test_text_near_duplicates_short_and_long() -> None:
    long = "Refund for order 1234 was never received. " * 20
    texts = pd.Series(["OK!", "ok", "!!!", "???", "", long, long.upper().replace(".", " ;"),
                       long.replace("never", "not")])
    keys = text_near_keys(texts)
    assert keys[0] == keys[1]  # short texts that differ only in case and punctuation are the same input
    assert len({keys[2], keys[3], keys[4]}) == 3  # texts that normalise to nothing are nobody's duplicate
    assert keys[5] == keys[6] and keys[5] != keys[7]  # long: the same words join, one changed word does not


def test_near_duplicate_rule_comes_from_the_spec(tmp_path: Path) -> None:
    spec = icon_spec(tmp_path.as_uri(), near_duplicate_bits=0)
    assert NearRule.of(spec.data) == NearRule(0, 24, 16.0, 4.0)
    images = _blend_chain(4)
    _, near = input_keys(pd.DataFrame({"image": [images[0], images[0], images[1]], "example_id": ["a", "b", "c"]}),
                         "image", None, NearRule.of(spec.data))
    assert len(set(near.tolist())) == 3  # bits 0: no near-duplicates at all (exact copies are the exact key's job)
    with pytest.raises(ValueError, match="near_blank_max_std"):
        icon_spec(tmp_path.as_uri(), near_blank_max_std=-1)
