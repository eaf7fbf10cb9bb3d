"""Integrity: a version's files against its manifest, verified local copies, and the rollback preconditions
(the model files parse, the ONNX export reproduces its golden logits with onnxruntime)."""

from __future__ import annotations

import io
import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from tl_core.artifacts import ArtifactError, ModelConfig, VersionManifest, parse_artifact, weights_file
from tl_core.errors import IntegrityError, MetadataError, NoSuchKey
from tl_core.registry.layout import Layout, sha256
from tl_core.registry.names import check_relpath, is_strategy
from tl_core.registry.versions import Versions

logger = logging.getLogger(__name__)

GOLDEN_TOLERANCE = 1e-4


def check_npz(data: bytes, where: str) -> dict[str, np.ndarray]:
    """Read an npz without pickles; object arrays are refused."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError) as exc:
        raise IntegrityError(f"{where}: not a pickle-free npz archive: {exc}") from None


def check_model_files(where: str, model_dir: Path, strategy: str) -> None:
    """The selected model's config is JSON and its safetensors file holds tensors."""
    from safetensors import SafetensorError
    from safetensors.numpy import load as load_safetensors

    try:
        config = parse_artifact(ModelConfig, (model_dir / "model_config.json").read_bytes(),
                                f"{where}: models/{strategy}/model_config.json")
    except (OSError, ArtifactError) as exc:
        raise IntegrityError(f"{where}: models/{strategy}/model_config.json does not load: {exc}") from None
    name = weights_file(strategy, config)  # a LoRA model may be stored as adapters naming its base
    try:
        tensors = load_safetensors((model_dir / name).read_bytes())
    except (OSError, ValueError, SafetensorError) as exc:
        raise IntegrityError(f"{where}: models/{strategy}/{name} does not load: {exc}") from None
    if not tensors:
        raise IntegrityError(f"{where}: models/{strategy}/{name} holds no tensors")


def check_golden(where: str, onnx_path: Path, golden_path: Path) -> None:
    """The ONNX model reproduces the golden logits on the golden inputs (within GOLDEN_TOLERANCE)."""
    import onnxruntime as ort

    if not golden_path.exists():
        raise IntegrityError(f"{where}: export/model.onnx has no export/golden.npz to check it against")
    golden = check_npz(golden_path.read_bytes(), f"{where} export/golden.npz")
    feeds = {k[len("input."):]: v for k, v in golden.items() if k.startswith("input.")}
    if "logits" not in golden or not feeds:
        raise IntegrityError(f"{where}: export/golden.npz holds {sorted(golden)}; expected 'logits' and "
                             "'input.<name>' arrays")
    try:
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        got = session.run(["logits"], feeds)[0]
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types; any is a refusal
        raise IntegrityError(f"{where}: export/model.onnx does not run on export/golden.npz: {exc}") from None
    expected = golden["logits"]
    if got.shape != expected.shape:
        raise IntegrityError(f"{where}: ONNX logits have shape {got.shape}, golden logits {expected.shape}")
    diff = float(np.abs(got.astype(np.float64) - expected).max(initial=0.0))
    if not diff <= GOLDEN_TOLERANCE:
        raise IntegrityError(f"{where}: ONNX logits differ from the golden predictions by {diff:.3g} "
                             f"(tolerance {GOLDEN_TOLERANCE})")


class Integrity:
    def __init__(self, layout: Layout, versions: Versions, cache_dir: Path) -> None:
        self.layout = layout
        self.versions = versions
        self.cache_dir = cache_dir
        self.model = layout.model

    def manifest_files(self, version: str) -> tuple[VersionManifest, dict[str, Any]]:
        """The manifest and its files, every path checked before anything is read."""
        manifest = self.versions.manifest(version)
        files = manifest.files
        if not files:
            raise IntegrityError(f"{self.model} {version} is unusable: manifest.json lists no files")
        for rel in sorted(files):
            check_relpath(rel, f"{self.model} {version} manifest.json")
        return manifest, files

    def get_verified(self, version: str, rel: str, meta: dict[str, Any]) -> bytes:
        try:
            data = self.layout.store.get_bytes(self.layout.version_key(version, rel))
        except NoSuchKey:
            raise IntegrityError(f"{self.model} {version} is unusable: file {rel} is missing") from None
        if sha256(data) != meta.get("sha256") or len(data) != meta.get("size"):
            raise IntegrityError(f"{self.model} {version} is unusable: file {rel} does not match its manifest "
                                 f"checksum (sha256 {sha256(data)[:12]}... size {len(data)}, expected "
                                 f"{str(meta.get('sha256'))[:12]}... size {meta.get('size')})")
        return data

    def verify(self, version: str) -> VersionManifest:
        """Every file present in the store with its manifest checksum; IntegrityError names the first bad file."""
        manifest, files = self.manifest_files(version)
        for rel, meta in sorted(files.items()):
            self.get_verified(version, rel, meta)
        return manifest

    def local_dir(self, version: str) -> Path:
        """Where the verified local copy of ``version`` lives: keyed by the registry (a short hash of where it is
        stored), the model and the version, so two registries' ``v0001`` (staging and production) never share one.
        """
        registry = sha256(self.layout.store.url(self.layout.prefix).encode())[:16]
        return self.cache_dir / self.model / registry / version

    def load_version(self, version: str, verify_store: bool = False) -> Path:
        """A verified local copy of a version (only safetensors, JSON, ONNX, npz, tokenizer files; no pickles).

        Local files whose checksum matches the manifest are reused unless ``verify_store``, which re-reads and
        checks every file in the store (the rollback precondition).
        """
        _, files = self.manifest_files(version)
        dest = self.local_dir(version)
        for rel, meta in sorted(files.items()):
            path = dest / rel
            local_ok = path.is_file() and sha256(path.read_bytes()) == meta.get("sha256")
            if local_ok and not verify_store:
                continue
            data = self.get_verified(version, rel, meta)
            if rel.endswith(".npz"):
                check_npz(data, f"{self.model} {version} {rel}")
            if local_ok:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{uuid.uuid4().hex}.part")
            tmp.write_bytes(data)
            tmp.replace(path)
        for stray in [p for p in dest.rglob("*") if p.is_file()]:  # only the manifest's files, nothing planted
            if stray.relative_to(dest).as_posix() not in files and not stray.name.endswith(".part"):
                logger.warning("%s %s: removing %s from the local copy (not in the manifest)", self.model, version,
                               stray)
                stray.unlink()
        return dest

    def check_loadable(self, version: str) -> None:
        """Rollback preconditions: checksums, the model files parse, the ONNX reproduces its golden logits."""
        path = self.load_version(version, verify_store=True)
        strategy = self.versions.manifest(version).strategy
        where = f"{self.model} {version}"
        if not is_strategy(strategy):
            raise MetadataError(f"{where}: {self.layout.version_key(version, 'manifest.json')}: 'strategy' is "
                                f"{strategy!r}; expected a strategy name such as 'frozen'")
        check_model_files(where, path / "models" / strategy, strategy)
        onnx_path, golden_path = path / "export" / "model.onnx", path / "export" / "golden.npz"
        if onnx_path.exists():
            check_golden(where, onnx_path, golden_path)
