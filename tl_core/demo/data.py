"""`tl demo-data`: realistic demo partitions for the two example specs.

Text: a GENERATED support-ticket routing stream (billing, login, shipping, bug, cancel) - templated
tickets with vocabulary shared across classes, typos, about 3% label noise, class imbalance and channel
/ region slices. After ``drift_from`` a new product ("NovaPay wallet") and new phrasing appear, mostly
in billing and bug tickets, and the class mix shifts towards bug reports.
Image: scikit-learn's bundled handwritten digits (real 8x8 scans) upscaled to 32x32 PNG, with a
``scanner`` slice (flatbed / phone / fax pipelines of blur, noise and contrast) and a ``site`` slice;
after ``drift_from`` the share of fax scans grows. Variants of one source scan share a group_id.
"""

from __future__ import annotations

import io
import logging
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd

from tl_core.config import ModelSpec
from tl_core.data.partitions import data_store, partition_key, write_marker

logger = logging.getLogger(__name__)

OPENERS = ["hi", "hello", "hey team", "good morning", "dear support", "", "", "urgent:", "quick question -"]
CLOSERS = ["thanks", "thank you", "please help", "any update?", "", "", "cheers", "asap please", "regards"]
SHARED = ["account", "order", "app", "email", "yesterday", "again", "my card", "the website", "subscription",
          "this week", "it says error", "customer number"]
TEMPLATES = {
    "billing": ["i was charged twice for {x}", "why is there an extra fee on my {x}", "the invoice for {x} looks wrong",
                "please refund the payment for {x}", "my {x} was billed but i never got a receipt",
                "the price on my statement for {x} is higher than quoted"],
    "login": ["i cannot sign in to my {x}", "password reset link for {x} does not arrive",
              "my {x} is locked after too many attempts", "the verification code for {x} never comes",
              "login page keeps spinning when i open {x}", "i forgot the username on my {x}"],
    "shipping": ["my parcel with {x} has not arrived", "tracking for {x} has not updated in days",
                 "the courier left {x} at the wrong address", "delivery of {x} is late again",
                 "can i change the shipping address for {x}", "the box with {x} arrived damaged"],
    "bug": ["the {x} page crashes when i click save", "error 500 when i open {x}",
            "the {x} button does nothing on my phone", "{x} shows a blank screen after the update",
            "the app freezes when loading {x}", "search in {x} returns nothing even though items exist"],
    "cancel": ["please cancel my {x}", "how do i close my {x}", "i want to stop {x} and get out of the contract",
               "do not renew {x} next month", "unsubscribe me from {x}", "end my {x} today"],
}
DRIFT = {"billing": ["the novapay wallet charged me twice for {x}", "novapay top up for {x} missing from my balance"],
         "bug": ["novapay wallet crashes when i pay for {x}", "after linking novapay the {x} screen is blank"],
         "login": ["passkey for {x} is not accepted since the novapay update"]}
OBJECTS = ["my subscription", "order 4471", "the premium plan", "my account", "the family plan", "my order",
           "the gift card", "the annual plan", "my profile", "the mobile app", "the checkout", "my basket"]
CLASS_MIX = {"billing": 0.30, "login": 0.22, "shipping": 0.22, "bug": 0.16, "cancel": 0.10}
DRIFT_MIX = {"billing": 0.26, "login": 0.20, "shipping": 0.18, "bug": 0.28, "cancel": 0.08}


def _typo(text: str, rng: np.random.Generator) -> str:
    if len(text) < 6 or rng.random() > 0.25:
        return text
    i = int(rng.integers(1, len(text) - 2))
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def _ticket(label: str, drifted: bool, rng: np.random.Generator) -> str:
    pool = TEMPLATES[label] + (DRIFT.get(label, []) * 2 if drifted else [])
    body = str(rng.choice(pool)).format(x=rng.choice(OBJECTS))
    extra = " ".join(rng.choice(SHARED, size=int(rng.integers(0, 3)), replace=False))
    parts = [str(rng.choice(OPENERS)), body, extra, str(rng.choice(CLOSERS))]
    return _typo(" ".join(p for p in parts if p).strip(), rng)


def text_rows(day: date, n: int, drifted: bool, labels: list[str], rng: np.random.Generator) -> pd.DataFrame:
    mix = DRIFT_MIX if drifted else CLASS_MIX
    probs = np.array([mix.get(lab, 0.1) for lab in labels])
    chosen = rng.choice(labels, size=n, p=probs / probs.sum())
    rows = []
    for i, label in enumerate(chosen):
        text = _ticket(str(label), drifted, rng)
        observed = str(rng.choice(labels)) if rng.random() < 0.03 else str(label)  # label noise
        rows.append({"example_id": f"t-{day:%Y%m%d}-{i:05d}", "label": observed, "text": text,
                     "labeled_at": datetime(day.year, day.month, day.day) + timedelta(seconds=int(rng.integers(86400))),
                     "channel": str(rng.choice(["email", "chat", "web"], p=[0.5, 0.3, 0.2])),
                     "region": str(rng.choice(["eu", "us", "apac"], p=[0.45, 0.4, 0.15]))})
    return pd.DataFrame(rows)


def _scan(img8: np.ndarray, scanner: str, rng: np.random.Generator, shift: tuple[int, int] = (0, 0)) -> bytes:
    """One scan of an 8x8 digit at 32x32: a scanner-specific pipeline of blur, contrast and noise."""
    from PIL import Image, ImageFilter

    base = Image.fromarray((img8 * 16).clip(0, 255).astype(np.uint8)).resize((32, 32), Image.Resampling.BICUBIC)
    arr: np.ndarray = np.roll(np.asarray(base, dtype=np.float64), shift, axis=(0, 1))
    if scanner == "phone":  # soft focus, washed-out contrast, uneven lighting
        base = Image.fromarray(arr.astype(np.uint8)).filter(ImageFilter.GaussianBlur(float(rng.uniform(0.6, 1.2))))
        light = np.linspace(0, float(rng.uniform(10, 40)), 32)[None, :]
        arr = np.asarray(base, dtype=np.float64) * rng.uniform(0.65, 0.9) + 20 + light
    elif scanner == "fax":  # thresholded to black/white with speckle
        arr = np.where(arr + rng.normal(0, 40, arr.shape) > 110, 255.0, 0.0)
    arr = arr + rng.normal(0, 6, arr.shape)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image_rows(day: date, n: int, drifted: bool, rng: np.random.Generator, seed: int = 0) -> pd.DataFrame:
    """``n`` scans for one day. Source digits come from a seed-wide permutation, a block per day, so a
    source is reused only after len(digits) / n days; a third of the sources are scanned twice (a shifted
    second crop, possibly on another scanner) and both scans share a group_id."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    total = len(digits.target)
    order = np.random.default_rng([seed, 7]).permutation(total)
    start = (day.toordinal() * n) % total
    block = order[(start + np.arange(2 * n)) % total]
    # Imbalance: 1s and 7s are rarer (half of them are skipped).
    keep = ~np.isin(digits.target[block], [1, 7]) | (rng.random(len(block)) < 0.5)
    scanners = ["flatbed", "phone", "fax"]
    p_scan = [0.35, 0.35, 0.30] if drifted else [0.55, 0.35, 0.10]
    rows: list[dict[str, object]] = []
    for s in block[keep]:
        copies = 2 if rng.random() < 0.35 else 1
        site = str(rng.choice(["north", "south"], p=[0.6, 0.4]))
        for c in range(copies):
            if len(rows) >= n:
                break
            scanner = str(rng.choice(scanners, p=p_scan))
            shift = (0, 0) if c == 0 else (int(rng.integers(-2, 3)), int(rng.integers(-2, 3)))
            rows.append({"example_id": f"d-{day:%Y%m%d}-{len(rows):05d}", "label": str(digits.target[s]),
                         "image": _scan(digits.images[s], scanner, rng, shift), "group_id": f"scan-{int(s)}",
                         "labeled_at": datetime(day.year, day.month, day.day)
                         + timedelta(seconds=int(rng.integers(86400))),
                         "scanner": scanner, "site": site})
        if len(rows) >= n:
            break
    return pd.DataFrame(rows)


def write_demo_data(spec: ModelSpec, end_date: date, days: int = 14, rows_per_day: int | None = None, seed: int = 0,
                    drift_from: date | None = None) -> list[str]:
    """Write one partition per day for ``days`` days ending at ``end_date``; returns the URIs written."""
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    store = data_store(spec)
    n = rows_per_day or (120 if spec.modality == "text" else 90)
    uris = []
    for offset in range(days):
        day = end_date - timedelta(days=days - 1 - offset)
        rng = np.random.default_rng([seed, day.toordinal()])  # a day's rows do not depend on the range asked for
        drifted = drift_from is not None and day >= drift_from
        df = text_rows(day, n, drifted, list(spec.labels), rng) if spec.modality == "text" else image_rows(
            day, n, drifted, rng, seed)
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        key = partition_key(spec.data.dataset, day, "part-000.parquet")
        store.put_bytes(key, buf.getvalue())
        write_marker(store, spec.data.dataset, day, spec.data.completion_marker)  # last: the day is complete
        uris.append(store.url(key))
    logger.info("wrote %d demo partitions (%d rows each) to %s", days, n, spec.data.root)
    return uris
