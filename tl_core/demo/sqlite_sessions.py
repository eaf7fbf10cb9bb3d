"""Airflow session maker for the demo's SQLite database: every transaction starts with ``BEGIN IMMEDIATE``.

Airflow runs SQLite in WAL mode. A deferred transaction that reads first and writes later fails at once with
"database is locked" (SQLITE_BUSY_SNAPSHOT, no busy wait) when another process committed in between; the running
scheduler commits every few seconds, so `airflow backfill create` typed next to it lost that race now and then.
``BEGIN IMMEDIATE`` takes the write lock first (waiting up to the connection's ``timeout``) and reads after, so the
race cannot happen. Only the short-lived CLI commands get it (``env.sh``, ``LocalAirflow.airflow``): in the
long-lived scheduler and API server every read would hold the write lock.

Set as ``AIRFLOW__DATABASE__SQL_ALCHEMY_SESSION_MAKER=tl_core.demo.sqlite_sessions.immediate_sessionmaker``;
Airflow calls it with its engine. Needs only SQLAlchemy (no Airflow import).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

SESSION_MAKER_PATH = f"{__name__}.immediate_sessionmaker"


def begin_immediate(engine: Engine) -> None:
    """Make every transaction on a SQLite ``engine`` start with ``BEGIN IMMEDIATE`` (a no-op on other databases)."""
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _no_driver_begin(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite otherwise opens its own deferred transaction before the first write
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def immediate_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Airflow's default session factory (same options as its own) on an engine whose transactions begin
    IMMEDIATE."""
    begin_immediate(engine)
    return sessionmaker(engine, autocommit=False, autoflush=False, expire_on_commit=False)
