"""Waiting for data: deferrable sensors for a partition's completion marker (``dt=YYYY-MM-DD/_SUCCESS``).

  s3://   MarkerS3KeySensor   the amazon provider's S3KeySensor (deferrable=True; its first poke is the provider's;
                              defined on first use, see s3_sensor_class)
  file:// MarkerFileSensor    the standard provider's FileSensor (deferrable=True; the marker's absolute path, no
                              fs connection needed)

While the marker is missing both defer to MarkerTrigger, which looks for the marker through tl_core's store (the
same code and credentials the snapshot reads the data with; no aiobotocore needed in the triggerer) and enforces
the deadline itself, so a missing partition fails the task with a message naming it - also under dag.test(),
which runs triggers inline without their deferral timeout. Failing on the deadline raises AirflowSensorTimeout:
no retries (the data did not come; clear the task to wait again).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.sensors.filesystem import FileSensor
from airflow.sdk.exceptions import AirflowSensorTimeout
from airflow.triggers.base import BaseTrigger, TriggerEvent

# A backstop above the trigger's own deadline: Airflow's deferral timeout only fires if the trigger never answers.
BACKSTOP = timedelta(minutes=5)


def split_marker_uri(uri: str) -> tuple[str, str]:
    """(store root, key) of a marker URI: the root is everything before the ``/<dataset>/dt=`` part."""
    head, sep, tail = uri.partition("/dt=")
    if not sep:
        raise ValueError(f"marker URI {uri!r} has no /dt=YYYY-MM-DD/ part")
    root, _, dataset = head.rpartition("/")
    return root, f"{dataset}/dt={tail}"


def missing_message(uri: str, waited: timedelta | str) -> str:
    head, _, marker = uri.rpartition("/")
    return (f"partition {head} did not arrive within {waited}: its completion marker {marker!r} ({uri}) is "
            "missing; the retrain reads no incomplete partition (write the marker when the partition is complete, "
            "e.g. `tl mark-complete`, then clear this task)")


class MarkerTrigger(BaseTrigger):
    """Fires {"status": "found"} when the object at ``uri`` exists, {"status": "timeout"} at ``deadline`` (ISO)."""

    def __init__(self, uri: str, deadline: str, poke_interval: float = 60.0) -> None:
        super().__init__()
        self.uri = uri
        self.deadline = deadline
        self.poke_interval = poke_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return ("tl_sensors.MarkerTrigger", {"uri": self.uri, "deadline": self.deadline,
                                             "poke_interval": self.poke_interval})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from tl_core.store import open_store

        root, key = split_marker_uri(self.uri)
        store = await asyncio.to_thread(open_store, root)
        deadline = datetime.fromisoformat(self.deadline)
        while True:
            if await asyncio.to_thread(store.exists, key):
                yield TriggerEvent({"status": "found", "uri": self.uri})
                return
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                yield TriggerEvent({"status": "timeout", "uri": self.uri})
                return
            self.log.info("waiting for %s (%.0f s left)", self.uri, left)
            await asyncio.sleep(min(self.poke_interval, left))


class _MarkerWait:
    """Shared by both sensors: defer to MarkerTrigger, name the partition when the wait ends without it."""

    timeout: float
    poke_interval: float

    def marker_uri(self) -> str:
        raise NotImplementedError

    def defer_to_marker(self) -> None:
        deadline = datetime.now(UTC) + timedelta(seconds=self.timeout)
        self.defer(trigger=MarkerTrigger(self.marker_uri(), deadline.isoformat(), float(self.poke_interval)),  # type: ignore[attr-defined]
                   method_name="execute_complete", timeout=timedelta(seconds=self.timeout) + BACKSTOP)

    def execute_complete(self, context: Any, event: dict[str, Any] | None = None) -> None:
        if not event or event.get("status") != "found":
            raise AirflowSensorTimeout(missing_message(self.marker_uri(), timedelta(seconds=self.timeout)))

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Any) -> Any:
        try:
            return super().resume_execution(next_method, next_kwargs, context)  # type: ignore[misc]
        except AirflowSensorTimeout as exc:  # Airflow's own deferral timeout (the backstop): name the partition
            if "did not arrive" in str(exc):
                raise
            raise AirflowSensorTimeout(missing_message(self.marker_uri(), timedelta(seconds=self.timeout))) from exc


class MarkerFileSensor(_MarkerWait, FileSensor):
    """FileSensor(deferrable=True) on the marker's ``file://`` URI (templated), read as a path (no connection)."""

    def __init__(self, *, marker: str, **kwargs: Any) -> None:
        super().__init__(filepath=marker, deferrable=True, **kwargs)

    def marker_uri(self) -> str:
        return str(self.filepath)

    @property
    def path(self) -> str:  # type: ignore[override]
        return str(self.filepath)[len("file://"):]

    def execute(self, context: Any) -> None:
        if not self.poke(context):
            self.defer_to_marker()


_S3_SENSOR: list[type] = []


def s3_sensor_class() -> type:
    """MarkerS3KeySensor, defined on first use: the amazon provider imports boto3, which DAG files that read only
    file:// data (and every Airflow component loading this plugin folder) should not pay for."""
    if not _S3_SENSOR:
        from airflow.providers.amazon.aws.sensors.s3 import S3KeySensor

        class MarkerS3KeySensor(_MarkerWait, S3KeySensor):
            """S3KeySensor(deferrable=True) on the marker's ``s3://bucket/key`` (templated), with boto3's default
            credentials (aws_conn_id None: the standard AWS chain, AWS_ENDPOINT_URL included, like tl_core's
            store)."""

            def __init__(self, *, marker: str, **kwargs: Any) -> None:
                kwargs.setdefault("aws_conn_id", None)
                super().__init__(bucket_key=marker, deferrable=True, **kwargs)

            def marker_uri(self) -> str:
                return str(self.bucket_key)

            def _defer(self) -> None:
                self.defer_to_marker()

        _S3_SENSOR.append(MarkerS3KeySensor)
    return _S3_SENSOR[0]


def marker_sensor(task_id: str, marker_template: str, timeout_s: float, poke_s: float, **kwargs: Any) -> Any:
    """The sensor for a marker URI template: MarkerS3KeySensor for s3://, MarkerFileSensor for file://."""
    cls = s3_sensor_class() if marker_template.startswith("s3://") else MarkerFileSensor
    return cls(task_id=task_id, marker=marker_template, timeout=timeout_s, poke_interval=poke_s, mode="poke",
               **kwargs)
