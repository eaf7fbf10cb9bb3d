"""Object store: ``s3://bucket/prefix`` (boto3) and ``file:///path`` behind one small interface.

Conditional writes mean the same on both backends:

* ``if_none_match="*"``: create-only; fails with :class:`PreconditionFailed` if the key exists.
* ``if_match=<etag>``: compare-and-swap; fails with :class:`PreconditionFailed` unless the key's
  current etag equals ``etag``.

S3 implements these natively (``If-None-Match: *`` / ``If-Match``). The file backend is lock-free:
create-only is ``link(2)`` of a fully written temporary file (atomic, fails if the name exists);
compare-and-swap first claims the transition *from* the expected etag by creating a marker (``link(2)``
of a file naming the claimant: pid, host, time, token; only one writer can), re-checks the etag, then
atomically ``rename(2)``s the new content in. Etags on files identify one write (inode, size, mtime), like
S3's per-object etag.

A claimant that dies inside its swap leaves its marker. Such a claim is *stale* once it is older than
``CLAIM_MIN_AGE_S`` and its process is gone (same host), or once it is older than ``CLAIM_MAX_AGE_S``
(any host: a live swap takes microseconds). A contender breaks a stale claim with a second create-only
step, a breaker file named after the claim's token: of several recoverers only the one that creates it
removes the marker, and only while the marker still holds that token; then it claims as usual.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlparse

from botocore.exceptions import BotoCoreError, ClientError

from tl_core.errors import AccessDenied, NoSuchBucket, NoSuchKey, PreconditionFailed, StoreError

logger = logging.getLogger(__name__)
# Run ids name store folders and files (runs/<model>/<run_id>/, registry by-run/<run_id>.json): bounded so every
# derived file name, temporary ones included, stays under the 255-byte limit of common file systems.
MAX_RUN_ID_BYTES = 200


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str
    size: int


class ObjectStore(Protocol):
    """What every backend provides. Keys are '/'-separated and relative to the store root."""

    uri: str

    def get_bytes(self, key: str) -> bytes: ...

    def get_with_etag(self, key: str) -> tuple[bytes, str]: ...

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: str | None = None, if_match: str | None = None
    ) -> str: ...

    def list(self, prefix: str = "") -> list[str]: ...

    def exists(self, key: str) -> bool: ...

    def etag(self, key: str) -> str: ...

    def delete(self, key: str) -> None: ...

    def url(self, key: str) -> str: ...


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"invalid store key {key!r}: expected a relative '/'-separated path without '.', '..' or '//'")
    return key


def _check_conditions(if_none_match: str | None, if_match: str | None) -> None:
    if if_none_match is not None and if_none_match != "*":
        raise ValueError(f"if_none_match supports only '*', got {if_none_match!r}")
    if if_none_match is not None and if_match is not None:
        raise ValueError("pass at most one of if_none_match and if_match")


def join_key(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


class FileStore:
    """The embedded default: a directory tree. Safe for concurrent writers on one local filesystem."""

    _MARKERS = ".tl-cas"
    CLAIM_MIN_AGE_S = 2.0  # a claim is never broken younger than this (pid namespaces, clock granularity)
    CLAIM_MAX_AGE_S = 60.0  # older than this a claim is broken even when its process cannot be checked

    def __init__(self, root: str | Path, uri: str | None = None, create: bool = True) -> None:
        self.root = Path(root).resolve()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.uri = uri or self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    @staticmethod
    def _etag_of(st: os.stat_result) -> str:
        token = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
        return hashlib.md5(token.encode(), usedforsecurity=False).hexdigest()

    def _open(self, key: str) -> Any:
        path = self._path(key)
        try:
            return path.open("rb")
        except FileNotFoundError:
            if not self.root.is_dir():
                raise NoSuchBucket(f"store root {self.root} does not exist") from None
            raise NoSuchKey(f"no such key {key!r} in {self.uri}") from None
        except IsADirectoryError:
            raise NoSuchKey(f"no such key {key!r} in {self.uri} (it is a prefix)") from None
        except PermissionError as exc:
            raise AccessDenied(f"access denied reading {key!r} in {self.uri}: {exc}") from None

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        # Content and etag come from the same open file, so they always belong together.
        with self._open(key) as fh:
            return fh.read(), self._etag_of(os.fstat(fh.fileno()))

    def get_bytes(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def etag(self, key: str) -> str:
        return self._stat_etag(key)

    def _stat_etag(self, key: str) -> str:
        try:
            return self._etag_of(self._path(key).stat())
        except FileNotFoundError:
            raise NoSuchKey(f"no such key {key!r} in {self.uri}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _write_temp(self, path: Path, data: bytes) -> Path:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except PermissionError as exc:
            raise AccessDenied(f"access denied writing under {path.parent}: {exc}") from None
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return Path(tmp)

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: str | None = None, if_match: str | None = None
    ) -> str:
        _check_conditions(if_none_match, if_match)
        path = self._path(key)
        tmp = self._write_temp(path, data)
        try:
            if if_none_match == "*":
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise PreconditionFailed(f"create-only write of {key!r} failed: the key already exists") from None
            elif if_match is not None:
                self._compare_and_swap(key, path, tmp, if_match)
            else:
                os.replace(tmp, path)
            return self._stat_etag(key)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _compare_and_swap(self, key: str, path: Path, tmp: Path, expected: str) -> None:
        marker_dir = path.parent / self._MARKERS
        marker_dir.mkdir(exist_ok=True)
        marker = marker_dir / f"{path.name}.{expected}"
        token = self._claim(key, marker, expected)
        try:
            current = self._stat_etag(key) if path.is_file() else None
            if current != expected:
                raise PreconditionFailed(
                    f"compare-and-swap of {key!r} failed: expected etag {expected}, current etag {current}"
                )
            if _read_claim(marker).get("token") != token:  # stalled past CLAIM_MAX_AGE_S and broken: step back
                raise PreconditionFailed(f"compare-and-swap of {key!r} failed: this writer's claim on etag "
                                         f"{expected} was broken as stale before it could swap")
            os.replace(tmp, path)
        finally:
            # The etag we claimed can never come back (a new write gets a new inode/mtime), so the
            # marker is no longer needed: late contenders re-check the etag after claiming.
            if _read_claim(marker).get("token") == token:
                with contextlib.suppress(FileNotFoundError):
                    marker.unlink()

    @staticmethod
    def _link_new(path: Path, data: bytes) -> bool:
        """Create ``path`` holding ``data`` if it does not exist (atomic, complete content); False if it exists."""
        tmp = path.with_name(f".{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink()

    def _claim(self, key: str, marker: Path, expected: str) -> str:
        """Claim the move from etag ``expected``; a stale claim is broken first. Returns this claim's token."""
        token = uuid.uuid4().hex
        body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "at": time.time(), "token": token})
        holder: dict[str, Any] = {}
        for _ in range(3):  # a claim released or broken meanwhile frees the marker: try again
            if self._link_new(marker, body.encode()):
                return token
            holder = _read_claim(marker)
            if not holder:
                continue
            why = self._stale(holder)
            if why is None or not self._break(marker, holder, why):
                break  # a live claim, or another recoverer broke it first and claims it now
        raise PreconditionFailed(
            f"compare-and-swap of {key!r} failed: another writer holds the claim on etag {expected} "
            f"({_describe(holder)}); it is broken automatically once that process is gone (same host, after "
            f"{self.CLAIM_MIN_AGE_S:g} s) or after {self.CLAIM_MAX_AGE_S:g} s"
        )

    def _stale(self, holder: dict[str, Any]) -> str | None:
        """Why ``holder``'s claim may be broken, or None while it must be respected."""
        age = time.time() - float(holder["mtime"])
        if age < self.CLAIM_MIN_AGE_S:
            return None
        if age > self.CLAIM_MAX_AGE_S:
            return f"older than {self.CLAIM_MAX_AGE_S:g} s ({_describe(holder)})"
        pid = holder.get("pid")
        if holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
            return f"its process is gone ({_describe(holder)})"
        return None

    def _break(self, marker: Path, holder: dict[str, Any], why: str) -> bool:
        """Remove the stale claim ``holder``; True unless another recoverer won the right to (the second step)."""
        tag = hashlib.sha256(str(holder["token"]).encode()).hexdigest()[:32]
        breaker = marker.with_name(f"{marker.name}.broken-{tag}")
        record = {"claim": {k: v for k, v in holder.items() if k != "mtime"}, "reason": why, "pid": os.getpid(),
                  "host": socket.gethostname(), "at": time.time()}
        if not self._link_new(breaker, json.dumps(record).encode()):
            return False
        if _read_claim(marker).get("token") == holder["token"]:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
        logger.warning("%s: broke the stale compare-and-swap claim %s: %s", self.uri, marker.name, why)
        return True

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            raise NoSuchBucket(f"store root {self.root} does not exist")
        base = self.root
        keys = []
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = [d for d in dirnames if d != self._MARKERS]
            rel_dir = os.path.relpath(dirpath, base)
            for name in filenames:
                if name.startswith(".") and name.endswith(".tmp"):
                    continue
                key = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


def _read_claim(marker: Path) -> dict[str, Any]:
    """The claim in ``marker`` with its file's mtime; {} once it is gone. A marker without a readable claim
    (an older release wrote empty ones) is identified by its inode and mtime."""
    try:
        with marker.open("rb") as fh:
            raw, st = fh.read(), os.fstat(fh.fileno())
    except FileNotFoundError:
        return {}
    try:
        claim = json.loads(raw)
    except ValueError:
        claim = None
    if not isinstance(claim, dict) or not isinstance(claim.get("token"), str):
        claim = {"token": f"unnamed-{st.st_ino}-{st.st_mtime_ns}"}
    return {**claim, "mtime": st.st_mtime}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "released meanwhile"
    age = time.time() - float(holder["mtime"])
    if "pid" not in holder:
        return f"a claim without an owner, {age:.1f} s old"
    return f"pid {holder.get('pid')} on host {holder.get('host')!r}, {age:.1f} s old"


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host still runs (a zombie, killed but not yet reaped, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class S3Store:
    """``s3://bucket/prefix`` through boto3 (endpoint from AWS_ENDPOINT_URL, standard credential chain)."""

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = client
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    # boto3 reads AWS_ENDPOINT_URL and the credential chain by itself.
                    self._client = boto3.session.Session().client(
                        "s3", config=Config(retries={"max_attempts": 5, "mode": "standard"})
                    )
        return self._client

    def _key(self, key: str) -> str:
        return join_key(self.prefix, _check_key(key))

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"

    def _translate(self, exc: Exception, key: str, op: str) -> StoreError:
        if not isinstance(exc, ClientError):
            return StoreError(f"{op} {key!r} in {self.uri} failed: {exc}")
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        where = f"{key!r} in {self.uri}"
        if code == "NoSuchBucket":
            return NoSuchBucket(f"bucket {self.bucket!r} does not exist ({op} {where})")
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return NoSuchKey(f"no such key {where}")
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch") or status == 403:
            return AccessDenied(f"access denied: {op} {where} ({code}: {err.get('Message', '')})")
        if code in ("PreconditionFailed", "ConditionalRequestConflict", "412") or status in (409, 412):
            return PreconditionFailed(f"conditional {op} of {where} failed ({code})")
        return StoreError(f"{op} {where} failed ({code}: {err.get('Message', '')})")

    def get_with_etag(self, key: str) -> tuple[bytes, str]:
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return resp["Body"].read(), resp["ETag"].strip('"')
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key, "get") from None

    def get_bytes(self, key: str) -> bytes:
        return self.get_with_etag(key)[0]

    def etag(self, key: str) -> str:
        try:
            resp = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return str(resp["ETag"]).strip('"')
        except (ClientError, BotoCoreError) as exc:
            err = self._translate(exc, key, "head")
            if type(err) is StoreError and "404" in str(exc):
                err = NoSuchKey(f"no such key {key!r} in {self.uri}")
            raise err from None

    def exists(self, key: str) -> bool:
        try:
            self.etag(key)
            return True
        except NoSuchKey:
            return False

    def put_bytes(
        self, key: str, data: bytes, *, if_none_match: str | None = None, if_match: str | None = None
    ) -> str:
        _check_conditions(if_none_match, if_match)
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self._key(key), "Body": data}
        if if_none_match:
            kwargs["IfNoneMatch"] = if_none_match
        if if_match:
            kwargs["IfMatch"] = f'"{if_match}"'
        try:
            resp = self.client.put_object(**kwargs)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key, "put") from None
        return str(resp["ETag"]).strip('"')

    def list(self, prefix: str = "") -> list[str]:
        full = join_key(self.prefix, prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, prefix or "/", "list") from None
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, key, "delete") from None


def open_store(uri: str) -> ObjectStore:
    """Open ``s3://bucket/prefix`` or ``file:///abs/path`` (``file://rel/path`` is relative to the cwd)."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"store URI {uri!r} has no bucket: expected s3://bucket/prefix")
        return S3Store(parsed.netloc, parsed.path)
    if uri.startswith("file://"):
        raw = uri[len("file://") :]
        if not raw:
            raise ValueError(f"store URI {uri!r} has no path: expected file:///abs/path or file://rel/path")
        return FileStore(Path(raw), uri=uri.rstrip("/"))
    raise ValueError(f"unsupported store URI {uri!r}: expected s3://bucket/prefix or file:///path")


def split_uri(uri: str) -> tuple[ObjectStore, str]:
    """Split an object URI into (store at its parent, key). Used for image_uri and model URIs."""
    if uri.startswith("s3://"):
        parsed = urlparse(uri)
        return S3Store(parsed.netloc), parsed.path.lstrip("/")
    if uri.startswith("file://"):
        # FileStore.url writes file URIs percent-encoded (Path.as_uri: 'dt=...' becomes 'dt%3D...'): decode them.
        path = Path(unquote(uri[len("file://") :])).resolve()
        return FileStore(path.parent, create=False), path.name
    raise ValueError(f"unsupported object URI {uri!r}: expected s3://bucket/key or file:///path")


def read_uri(uri: str) -> bytes:
    store, key = split_uri(uri)
    return store.get_bytes(key)


@contextlib.contextmanager
def local_copy(store: ObjectStore, prefix: str) -> Iterator[Path]:
    """Materialise every object under ``prefix`` in a temporary directory (for libraries that need paths)."""
    with tempfile.TemporaryDirectory(prefix="tl-") as tmp:
        root = Path(tmp)
        for key in store.list(prefix.rstrip("/") + "/"):
            rel = key[len(prefix.rstrip("/")) + 1 :]
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(store.get_bytes(key))
        yield root


def new_run_id() -> str:
    """``manual-<UTC timestamp>`` for runs started from the CLI."""
    from datetime import UTC, datetime

    return "manual-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def key_safe(run_id: str) -> str:
    """Airflow run ids contain ':' and '+'; make them safe as one S3 key segment (and one file name)."""
    if not isinstance(run_id, str):
        raise ValueError(f"run id must be a string, got {type(run_id).__name__}")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
    if not safe or safe in (".", ".."):
        raise ValueError(f"run id {run_id!r} is empty after making it key-safe")
    if len(safe.encode()) > MAX_RUN_ID_BYTES:
        shown = run_id if len(run_id) <= 40 else run_id[:40] + "..."
        raise ValueError(f"run id {shown!r} is too long: {len(run_id)} characters ({len(safe.encode())} bytes "
                         f"key-safe); at most {MAX_RUN_ID_BYTES} bytes are allowed (it names a store folder)")
    return safe


@contextlib.contextmanager
def local_file(store: ObjectStore, key: str) -> Iterator[Path]:
    """A path to read one object from: the file itself on the file backend (nothing copied), else a temporary
    download (S3: streamed to disk by boto3, never held in memory whole)."""
    if isinstance(store, FileStore):
        path = store._path(key)
        if not path.is_file():
            raise NoSuchKey(f"no such key {key!r} in {store.uri}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="tl-get-") as tmp:
        dest = Path(tmp) / key.rsplit("/", 1)[-1]
        if isinstance(store, S3Store):
            try:
                store.client.download_file(store.bucket, store._key(key), str(dest))
            except (ClientError, BotoCoreError) as exc:
                raise store._translate(exc, key, "get") from None
        else:
            dest.write_bytes(store.get_bytes(key))
        yield dest


def put_file(store: ObjectStore, key: str, path: Path) -> str:
    """Write a local file to ``key`` without reading it into memory; the object appears whole or not at all
    (file backend: streamed into a temporary file beside it, then renamed; S3: boto3's managed upload)."""
    if isinstance(store, FileStore):
        dest = store._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                while block := src.read(1 << 20):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return store.etag(key)
    if isinstance(store, S3Store):
        from boto3.exceptions import S3UploadFailedError

        try:
            store.client.upload_file(str(path), store.bucket, store._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise store._translate(exc, key, "put") from None
        except S3UploadFailedError as exc:
            raise StoreError(f"put {key!r} in {store.uri} failed: {exc}") from None
        return store.etag(key)
    return store.put_bytes(key, path.read_bytes())
