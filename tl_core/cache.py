"""Where this machine caches downloaded weights and verified registry versions (TL_CACHE_DIR)."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR = Path(os.environ.get("TL_CACHE_DIR", Path.home() / ".cache" / "tl-retrain"))
