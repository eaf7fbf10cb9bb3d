"""The curated public surface of tl_core: every name resolves, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_every_public_name_resolves_lazily() -> None:
    probe = ("import sys, tl_core; before = 'torch' in sys.modules; "
             "[getattr(tl_core, n) for n in tl_core.__all__]; print(before, len(tl_core.__all__))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "False"  # `import tl_core` imports no torch
    assert int(out[1]) == len(__import__("tl_core").__all__) > 20


def test_unknown_names_are_attribute_errors() -> None:
    import tl_core

    with pytest.raises(AttributeError, match=r"module 'tl_core' has no attribute 'nope'"):
        tl_core.nope  # noqa: B018
    assert "Registry" in dir(tl_core) and "run_local" in tl_core.__all__
