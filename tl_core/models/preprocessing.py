"""The preprocessing contract, the one source of truth from training to serving: split rows turned into
model inputs (tokenisation with dynamic padding for text; decoding + the backbone's timm transforms for
images), and the content hash of each example. Used by training, embedding, export and scoring; batching
for training (shuffling, length bucketing) lives in tl_core.models.embeddings (iterate)."""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from tl_core.errors import DataError

# The examples column with the sha256 the snapshot recorded for each image behind an ``image_uri``
# (tl_core.data.split.IMAGE_SHA256; spelled here too so that models/ does not import the data steps).
IMAGE_SHA256 = "image_sha256"


def content_hashes(df: pd.DataFrame, input_column: str) -> list[str]:
    """sha256 of each example's input content (the embedding-cache key per example): the image's own sha256
    for an ``image_uri`` (never the URI string: the same URI may hold other bytes in another run)."""
    recorded = df[IMAGE_SHA256].tolist() if IMAGE_SHA256 in df else [None] * len(df)
    out = []
    for value, sha in zip(df[input_column].tolist(), recorded, strict=True):
        if isinstance(value, str) and isinstance(sha, str):
            out.append(sha)
            continue
        raw = value.encode() if isinstance(value, str) else bytes(value)
        out.append(hashlib.sha256(raw).hexdigest())
    return out


def image_transform(preprocessing: dict[str, Any], training: bool) -> Any:
    """The timm transform for this backbone's data config (augmenting when training)."""
    from timm.data import create_transform

    return create_transform(
        input_size=tuple(preprocessing["input_size"]),
        is_training=training,
        mean=tuple(preprocessing["mean"]),
        std=tuple(preprocessing["std"]),
        interpolation=preprocessing["interpolation"],
        crop_pct=preprocessing["crop_pct"],
        crop_mode=preprocessing.get("crop_mode", "center"),
        # Mild augmentation: digits and documents must not be flipped.
        hflip=0.0,
        scale=(0.8, 1.0),
        ratio=(0.9, 1.1),
    )


def load_image_bytes(value: Any, example_id: str = "?") -> bytes:
    """An example's image bytes: inline bytes, a URI, or (URI, sha256 the snapshot recorded), verified."""
    expected = None
    if isinstance(value, tuple) and len(value) == 2:
        value, expected = value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str) and value.startswith(("s3://", "file://")):
        from tl_core.store import read_uri

        data = read_uri(value)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise DataError(f"example {example_id}: image {value} changed after the snapshot (sha256 "
                            f"{hashlib.sha256(data).hexdigest()[:12]}..., snapshot says {str(expected)[:12]}...); "
                            "write a changed image under a new key and start a new run")
        return data
    raise DataError(f"example {example_id}: image must be bytes or an s3:// / file:// URI, got {type(value).__name__}")


ALPHA_BACKGROUND = (255, 255, 255)
"""The background every image with transparency is composited on before the model (and the near-duplicate
hash) sees it: plain ``convert("RGB")`` would drop alpha and show whatever colour the transparent pixels
happen to store."""


def model_rgb(img: Any) -> Any:
    """The RGB image the model sees: alpha (RGBA, LA, palette or colour-key transparency) composited on
    :data:`ALPHA_BACKGROUND`, anything else converted to RGB."""
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_images(values: Sequence[Any], ids: Sequence[str], transform: Any) -> torch.Tensor:
    from PIL import Image

    tensors = []
    for value, ex_id in zip(values, ids, strict=True):
        try:
            img = model_rgb(Image.open(io.BytesIO(load_image_bytes(value, ex_id))))
        except OSError as exc:
            raise DataError(f"example {ex_id}: image cannot be decoded ({exc})") from None
        tensors.append(transform(img))
    return torch.stack(tensors)


@dataclass
class Encoded:
    """A split's inputs in model-ready form (text: token ids; image: raw values decoded per batch)."""

    kind: str
    ids: list[str]
    values: list[Any]  # token-id lists for text; image bytes, URIs or (URI, recorded sha256) for images
    labels: np.ndarray  # int64 class indices, -1 when unknown

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        return np.array([len(v) for v in self.values]) if self.kind == "text" else np.ones(len(self.values))


def encode_split(
    df: pd.DataFrame, input_column: str, labels: Sequence[str], preprocessing: dict[str, Any], tokenizer: Any = None
) -> Encoded:
    index = {name: i for i, name in enumerate(labels)}
    y = np.array([index.get(v, -1) for v in df["label"].tolist()], dtype=np.int64) if "label" in df else np.full(
        len(df), -1, dtype=np.int64
    )
    ids = [str(x) for x in df["example_id"].tolist()]
    if preprocessing["kind"] == "text":
        enc = tokenizer(
            df[input_column].astype(str).tolist(), truncation=True, max_length=preprocessing["max_length"]
        )
        return Encoded("text", ids, list(enc["input_ids"]), y)
    values = df[input_column].tolist()
    if IMAGE_SHA256 in df:  # images behind URIs are checked against the snapshot when they are read
        values = [(v, sha) if isinstance(v, str) and isinstance(sha, str) else v
                  for v, sha in zip(values, df[IMAGE_SHA256].tolist(), strict=True)]
    return Encoded("image", ids, values, y)


def collate(encoded: Encoded, idx: np.ndarray, pad_id: int = 0, transform: Any = None) -> tuple[torch.Tensor, ...]:
    """Model inputs for one batch: (input_ids, attention_mask) padded to the batch max, or (pixels,)."""
    if encoded.kind == "text":
        seqs = [encoded.values[i] for i in idx]
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        filled = np.arange(int(lengths.max())) < lengths[:, None]  # row-major: each row's tokens, left-aligned
        input_ids = np.full(filled.shape, pad_id, dtype=np.int64)
        input_ids[filled] = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
        return torch.from_numpy(input_ids), torch.from_numpy(filled.astype(np.int64))
    return (decode_images([encoded.values[i] for i in idx], [encoded.ids[i] for i in idx], transform),)
