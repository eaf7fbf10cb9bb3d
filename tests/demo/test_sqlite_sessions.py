"""The CLI session maker of the demo's SQLite Airflow database (tl_core/demo/sqlite_sessions.py).

The race it removes, reproduced with two engines on one WAL file: a transaction reads, another connection commits,
the first one writes. Deferred, that write fails at once with "database is locked"; begun IMMEDIATE, the second
writer waits for the lock instead and both commits land.
"""

from __future__ import annotations

import importlib
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tl_core.demo.local_airflow import LocalAirflow
from tl_core.demo.sqlite_sessions import SESSION_MAKER_PATH, immediate_sessionmaker


def _engine(path: Path) -> Engine:
    engine = create_engine(f"sqlite:///{path}?timeout=10")

    @event.listens_for(engine, "connect")
    def _wal(dbapi_connection, _record):  # type: ignore[no-untyped-def]
        dbapi_connection.execute("PRAGMA journal_mode=WAL")  # what Airflow sets on every SQLite connection

    return engine


def _read_then_write(factory: sessionmaker[Session], other: Engine, results: list[str]) -> None:
    """Read, let ``other`` commit a row meanwhile (from a thread), then write: inside a SAVEPOINT, as Airflow's
    backfill creates its runs (``session.begin_nested()``)."""
    def commit_other() -> None:
        with other.begin() as conn:
            conn.execute(text("INSERT INTO runs (name) VALUES ('scheduler')"))
        results.append("other committed")

    with factory() as session:
        with session.begin_nested():
            session.execute(text("SELECT count(*) FROM runs")).scalar_one()
            writer = threading.Thread(target=commit_other)
            writer.start()
            time.sleep(0.5)  # deferred: the other commit lands now; immediate: it waits for our lock
            session.execute(text("INSERT INTO runs (name) VALUES ('backfill')"))
        session.commit()
        results.append("cli committed")
    writer.join(timeout=20)


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "airflow.db"
    with _engine(path).begin() as conn:
        conn.execute(text("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)"))
    return path


def test_a_deferred_read_then_write_loses_the_race(database: Path) -> None:
    plain = sessionmaker(_engine(database))
    with pytest.raises(OperationalError, match="database is locked"):
        _read_then_write(plain, _engine(database), [])


def test_begin_immediate_makes_the_other_writer_wait(database: Path) -> None:
    results: list[str] = []
    _read_then_write(immediate_sessionmaker(_engine(database)), _engine(database), results)
    assert results == ["cli committed", "other committed"]
    with _engine(database).connect() as conn:
        assert sorted(conn.execute(text("SELECT name FROM runs")).scalars()) == ["backfill", "scheduler"]


def test_env_sh_gives_the_cli_shell_the_immediate_session_maker(tmp_path: Path) -> None:
    airflow = LocalAirflow(tmp_path / "airflow", tmp_path / "configs", port=18080)
    airflow.home.mkdir(parents=True)
    env = airflow.write_env().read_text()
    assert f"export AIRFLOW__DATABASE__SQL_ALCHEMY_SESSION_MAKER={SESSION_MAKER_PATH}\n" in env
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_SESSION_MAKER" not in airflow.env  # not for the long-lived processes
    module, name = SESSION_MAKER_PATH.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is immediate_sessionmaker
