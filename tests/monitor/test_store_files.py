"""local_file / put_file (what scoring streams through) on both store backends (S3: a real moto server)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tl_core.errors import NoSuchKey
from tl_core.store import ObjectStore, local_file, put_file


def test_put_file_then_local_file_round_trip(store: ObjectStore, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(bytes(range(256)) * 20_000)  # 5 MB: several read blocks / a managed upload
    etag = put_file(store, "scores/m/dt=2026-12-01/predictions.parquet", src)
    assert etag == store.etag("scores/m/dt=2026-12-01/predictions.parquet")
    with local_file(store, "scores/m/dt=2026-12-01/predictions.parquet") as path:
        assert path.read_bytes() == src.read_bytes()
    assert not [k for k in store.list("scores/") if k.endswith(".tmp")]  # no temporary left behind
    with pytest.raises(NoSuchKey, match="no such key 'scores/m/missing.parquet'"), \
            local_file(store, "scores/m/missing.parquet"):
        pass
