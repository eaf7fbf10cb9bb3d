from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tl_core.errors import AccessDenied, NoSuchBucket, NoSuchKey, PreconditionFailed
from tl_core.store import FileStore, ObjectStore, S3Store, key_safe, open_store, split_uri


def test_roundtrip_list_exists_delete(store: ObjectStore) -> None:
    etag = store.put_bytes("a/b/one.json", b"{}")
    store.put_bytes("a/two.bin", b"\x00\x01")
    store.put_bytes("other/x", b"x")
    assert store.get_bytes("a/b/one.json") == b"{}"
    assert store.etag("a/b/one.json") == etag
    assert store.get_with_etag("a/two.bin") == (b"\x00\x01", store.etag("a/two.bin"))
    assert store.list("a/") == ["a/b/one.json", "a/two.bin"]
    assert store.list() == ["a/b/one.json", "a/two.bin", "other/x"]
    assert store.exists("other/x") and not store.exists("other/y")
    store.delete("other/x")
    assert not store.exists("other/x")


def test_missing_key_is_clear(store: ObjectStore) -> None:
    with pytest.raises(NoSuchKey, match="no such key 'nope/x.json'"):
        store.get_bytes("nope/x.json")
    with pytest.raises(NoSuchKey, match="no such key"):
        store.etag("nope/x.json")


def test_create_only_fails_on_existing_key(store: ObjectStore) -> None:
    store.put_bytes("k", b"first", if_none_match="*")
    with pytest.raises(PreconditionFailed, match="already exists|conditional put"):
        store.put_bytes("k", b"second", if_none_match="*")
    assert store.get_bytes("k") == b"first"


def test_compare_and_swap(store: ObjectStore) -> None:
    e1 = store.put_bytes("ptr.json", b"v1")
    e2 = store.put_bytes("ptr.json", b"v2", if_match=e1)
    assert e2 != e1 and store.get_bytes("ptr.json") == b"v2"
    with pytest.raises(PreconditionFailed):
        store.put_bytes("ptr.json", b"stale", if_match=e1)
    assert store.get_bytes("ptr.json") == b"v2"


def test_compare_and_swap_on_missing_key_fails(store: ObjectStore) -> None:
    with pytest.raises((PreconditionFailed, NoSuchKey)):
        store.put_bytes("never-written", b"x", if_match="0123456789abcdef")
    assert not store.exists("never-written")


def swap_race(store: ObjectStore, start: str, threads: int = 16) -> tuple[list[int], list[int]]:
    """``threads`` compare-and-swaps of champion.json from etag ``start``, released together: (winners, losers)."""
    barrier = threading.Barrier(threads)
    wins: list[int] = []
    losses: list[int] = []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("champion.json", f"v{i + 1}".encode(), if_match=start)
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)

    workers = [threading.Thread(target=contend, args=(i,)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return wins, losses


def test_sixteen_threads_race_one_wins(store: ObjectStore) -> None:
    start = store.put_bytes("champion.json", b"v0")
    wins, losses = swap_race(store, start)
    assert len(wins) == 1 and len(losses) == 15
    assert store.get_bytes("champion.json") == f"v{wins[0] + 1}".encode()


def test_sixteen_threads_race_create_only(store: ObjectStore) -> None:
    barrier = threading.Barrier(16)
    wins: list[int] = []

    def contend(i: int) -> None:
        barrier.wait()
        try:
            store.put_bytes("ledger/000001.json", str(i).encode(), if_none_match="*")
            wins.append(i)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert store.get_bytes("ledger/000001.json") == str(wins[0]).encode()


@pytest.mark.parametrize("bad", ["", "/abs", "a/../b", "a//b", "./x", ".."])
def test_bad_keys_rejected(store: ObjectStore, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid store key"):
        store.put_bytes(bad, b"x")


def test_bad_conditions_rejected(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match="only '\\*'"):
        store.put_bytes("k", b"x", if_none_match="abc")
    with pytest.raises(ValueError, match="at most one"):
        store.put_bytes("k", b"x", if_none_match="*", if_match="e")


def test_missing_bucket(moto_server: str) -> None:
    store = S3Store("bucket-that-does-not-exist")
    with pytest.raises(NoSuchBucket, match="bucket-that-does-not-exist"):
        store.get_bytes("x")
    with pytest.raises(NoSuchBucket):
        store.put_bytes("x", b"1")


def test_missing_file_root(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "absent", create=False)
    with pytest.raises(NoSuchBucket, match="does not exist"):
        store.get_bytes("x")
    with pytest.raises(NoSuchBucket, match="does not exist"):
        store.list()


def test_access_denied_s3(moto_server: str, s3_bucket: str) -> None:
    import json

    import boto3

    iam = boto3.client("iam")
    user = "no-rights"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    iam.put_user_policy(
        UserName=user, PolicyName="deny", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "s3:*", "Resource": "*"}]}
        ),
    )
    client = boto3.client("s3", aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
    import requests

    # From now on moto authenticates every request and applies IAM policies.
    requests.post(f"{moto_server}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        store = S3Store(s3_bucket, client=client)
        with pytest.raises(AccessDenied, match="access denied"):
            store.put_bytes("x", b"1")
    finally:
        requests.post(f"{moto_server}/moto-api/reset-auth", data=b"inf", timeout=10)


def test_open_store_and_uris(tmp_path: Path, moto_server: str, s3_bucket: str) -> None:
    fs = open_store((tmp_path / "r").as_uri())
    fs.put_bytes("img/a.png", b"png")
    store, key = split_uri(fs.url("img/a.png"))
    assert store.get_bytes(key) == b"png"
    s3 = open_store(f"s3://{s3_bucket}/root")
    s3.put_bytes("x/y", b"1")
    assert s3.url("x/y") == f"s3://{s3_bucket}/root/x/y"
    store2, key2 = split_uri(s3.url("x/y"))
    assert store2.get_bytes(key2) == b"1"
    with pytest.raises(ValueError, match="unsupported store URI"):
        open_store("gs://b/p")
    with pytest.raises(ValueError, match="no bucket"):
        open_store("s3:///p")


def test_key_safe() -> None:
    assert key_safe("scheduled__2026-01-02T00:00:00+00:00") == "scheduled__2026-01-02T00_00_00_00_00"
    with pytest.raises(ValueError, match="empty"):
        key_safe("..")


# ------------------------------------------------------------------------------ stale compare-and-swap claims
HOLD_CLAIM = """
import os, sys, time
from tl_core.store import FileStore

store = FileStore(sys.argv[1])
etag = store.etag(sys.argv[2])


def hold(src, dst):  # the process stops right here, inside its swap, holding the claim
    print("claimed", flush=True)
    time.sleep(300)


os.replace = hold
store.put_bytes(sys.argv[2], b"never written", if_match=etag)
"""


def hold_claim(store: FileStore, key: str) -> subprocess.Popen[str]:
    """A real process that claims the swap of ``key`` and then stops inside it (until it is killed)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_CLAIM, str(store.root), key], stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.stdout is not None and proc.stdout.readline().strip() == "claimed"
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


def marker_of(store: FileStore, key: str, etag: str) -> Path:
    return store.root / Path(key).parent / ".tl-cas" / f"{Path(key).name}.{etag}"


def test_claim_of_a_killed_process_is_broken_and_a_live_one_respected(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "s")
    e1 = store.put_bytes("registry/m/champion.json", b"v1")
    proc = hold_claim(store, "registry/m/champion.json")
    try:
        monkeypatch.setattr(FileStore, "CLAIM_MIN_AGE_S", 0.0)
        with pytest.raises(PreconditionFailed, match=rf"another writer holds the claim on etag {e1} \(pid "
                                                     rf"{proc.pid} on host .*; it is broken automatically once"):
            store.put_bytes("registry/m/champion.json", b"v2", if_match=e1)  # alive: respected whatever its age
    finally:
        kill(proc)
    assert marker_of(store, "registry/m/champion.json", e1).exists()  # what a crash inside the swap leaves
    monkeypatch.setattr(FileStore, "CLAIM_MIN_AGE_S", 30.0)
    with pytest.raises(PreconditionFailed, match="another writer holds the claim"):  # too young to judge
        store.put_bytes("registry/m/champion.json", b"v2", if_match=e1)
    monkeypatch.setattr(FileStore, "CLAIM_MIN_AGE_S", 0.0)
    e2 = store.put_bytes("registry/m/champion.json", b"v2", if_match=e1)  # its process is gone: broken
    assert store.get_bytes("registry/m/champion.json") == b"v2" and e2 != e1
    assert not marker_of(store, "registry/m/champion.json", e1).exists()
    store.put_bytes("registry/m/champion.json", b"v3", if_match=e2)  # and later swaps work as usual
    assert store.list("registry/") == ["registry/m/champion.json"]


def test_claim_from_another_host_is_broken_only_after_the_age_bound(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "s")
    etag = store.put_bytes("ptr.json", b"v1")
    marker = marker_of(store, "ptr.json", etag)
    marker.parent.mkdir()
    marker.write_text(json.dumps({"pid": 1, "host": "another-host", "at": 0, "token": "t1"}))
    thirty_s_ago = time.time() - 30
    os.utime(marker, (thirty_s_ago, thirty_s_ago))
    with pytest.raises(PreconditionFailed, match=r"pid 1 on host 'another-host', 3\d.\d s old"):
        store.put_bytes("ptr.json", b"v2", if_match=etag)  # cannot check a process elsewhere: wait for the bound
    two_min_ago = time.time() - 120
    os.utime(marker, (two_min_ago, two_min_ago))
    store.put_bytes("ptr.json", b"v2", if_match=etag)
    assert store.get_bytes("ptr.json") == b"v2"


@pytest.mark.parametrize("claim", ["", json.dumps({"pid": 999999999, "host": socket.gethostname(), "token": "t"})],
                         ids=["empty-marker", "dead-process"])
def test_racing_recoverers_of_a_stale_claim_one_wins(tmp_path: Path, claim: str) -> None:
    store = FileStore(tmp_path / "s")
    start = store.put_bytes("champion.json", b"v0")
    marker = marker_of(store, "champion.json", start)
    marker.parent.mkdir()
    marker.write_text(claim)  # an empty marker (older releases) is judged by age alone
    two_min_ago = time.time() - 120
    os.utime(marker, (two_min_ago, two_min_ago))
    wins, losses = swap_race(store, start)
    assert len(wins) == 1 and len(losses) == 15
    assert store.get_bytes("champion.json") == f"v{wins[0] + 1}".encode()
    assert len(list(marker.parent.glob(f"{marker.name}.broken-*"))) == 1  # broken exactly once


def test_run_ids_are_bounded(store: ObjectStore) -> None:
    with pytest.raises(ValueError, match=r"run id 'xxxxxxxx.*\.\.\.' is too long: 5000 characters \(5000 bytes "
                                         r"key-safe\); at most 200 bytes"):
        key_safe("x" * 5000)
    with pytest.raises(ValueError, match=r"101 characters \(202 bytes key-safe\)"):
        key_safe("é" * 101)  # letters stay, but each takes two bytes in a file name
    assert key_safe("r" * 200) == "r" * 200
    store.put_bytes(f"runs/m/{key_safe('r' * 200)}/x.json", b"{}")  # the longest id is a valid key on both backends
