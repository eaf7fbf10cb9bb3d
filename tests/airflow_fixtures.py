"""A throwaway Airflow home for DagBag and dag.test() runs in a fresh process (SQLite)."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def airflow_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
               AIRFLOW__CORE__DAGS_FOLDER=str(ROOT / "dags"), TL_CONFIGS_DIR=str(ROOT / "configs"),
               AIRFLOW__CORE__PLUGINS_FOLDER=str(ROOT / "plugins"))
    return env


class WebhookRecorder:
    """A local HTTP server (thread) standing in for a webhook channel: records every POSTed JSON body."""

    def __init__(self) -> None:
        import http.server
        import json
        import threading

        received: list[dict] = []
        self.received = received

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                received.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                 **json.loads(body)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def events(self, event: str) -> list[dict]:
        return [m for m in self.received if m.get("event") == event]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
