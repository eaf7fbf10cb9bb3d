"""Name rules: model names, version numbers, record ids and the paths of files inside a version."""

from __future__ import annotations

import re

from tl_core.config import NAME_PATTERN
from tl_core.errors import IntegrityError

# Always used with fullmatch: '$' alone would also match before a trailing newline ("v0001\n").
VERSION_PATTERN = re.compile(r"v[0-9]{4,9}")
# One path segment of a file inside a version: no '/', no '..', nothing outside this set.
SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RECORD_ID_PATTERN = re.compile(r"[0-9a-f]{32}")  # a pointer move's record id (uuid4 hex)
# The only file types a version may hold, and the only ones ever read back: no pickles, no code.
# (.model: sentencepiece tokenizers; .txt: vocab/merges; .html: the evidence report, never parsed.)
SAFE_SUFFIXES = (".safetensors", ".json", ".onnx", ".npz", ".txt", ".model", ".html", ".md")


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(f"invalid model name {name!r}: expected lowercase letters, digits, '-' or '_' "
                         f"(pattern {NAME_PATTERN.pattern}; no '/', no '..')")
    return name


def check_version(version: str) -> str:
    if not isinstance(version, str) or not VERSION_PATTERN.fullmatch(version):
        raise ValueError(f"invalid version {version!r}: expected 'v' followed by 4-9 digits, e.g. v0003")
    return version


def is_version(value: object) -> bool:
    """Whether ``value`` is a version string such as v0001 (for checking stored metadata)."""
    return isinstance(value, str) and VERSION_PATTERN.fullmatch(value) is not None


def is_strategy(value: object) -> bool:
    """Whether ``value`` is a strategy name (the folder of a run's model, e.g. 'frozen')."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def check_relpath(rel: str, where: str) -> str:
    """A file path inside a version: segments of [A-Za-z0-9_.-], no '..', no absolute path, a safe type."""
    parts = rel.split("/") if isinstance(rel, str) else []
    if not parts or any(not SEGMENT_PATTERN.fullmatch(p) or ".." in p for p in parts):
        raise ValueError(f"{where}: invalid file path {rel!r}: expected '/'-separated names of [A-Za-z0-9_.-] "
                         "without '..'")
    if not rel.endswith(SAFE_SUFFIXES):
        raise IntegrityError(f"{where}: refusing file {rel!r}: only {', '.join(SAFE_SUFFIXES)} files are allowed "
                             "(no pickles or code)")
    return rel
