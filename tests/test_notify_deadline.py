"""Webhook delivery (tl_core.notify, issue 29 items 5 and 6): a POST is bounded as a whole by its channel's
``timeout_seconds`` (a server that trickles its answer cannot hold the notifier), and no log line or error names a
secret: not the value of ``url_env``, not a URL's password or query string. Real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tl_core import notify
from tl_core.config import NotifySpec

PASSWORD = "pw-S3cr3t-71"
TOKEN = "tok-S3cr3t-42"
ENV_SECRET = "xoxb-S3cr3t-value-not-a-url"


class _Server:
    """A threaded HTTP server on 127.0.0.1 whose handler is ``do_post(handler)``; ``closed`` is set once the
    client hung up on an answer being written."""

    def __init__(self, do_post: Any) -> None:
        self.closed = threading.Event()
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server hook's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.requests.append({"path": self.path, "authorization": self.headers.get("Authorization")})
                do_post(self, outer)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _trickle(handler: http.server.BaseHTTPRequestHandler, server: _Server) -> None:
    """A valid answer, one byte every 0.5 s for up to 30 s."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 60\r\n\r\n" + b"o" * 60
    deadline = time.monotonic() + 30
    for i in range(len(answer)):
        if time.monotonic() > deadline:
            return
        try:
            handler.wfile.write(answer[i:i + 1])
            handler.wfile.flush()
        except OSError:
            server.closed.set()
            return
        time.sleep(0.5)


def _answer(status: int) -> Any:
    def do_post(handler: http.server.BaseHTTPRequestHandler, server: _Server) -> None:
        handler.send_response(status)
        handler.send_header("Content-Length", "2")
        handler.end_headers()
        handler.wfile.write(b"ok")
    return do_post


@pytest.fixture()
def trickling() -> Iterator[_Server]:
    server = _Server(_trickle)
    yield server
    server.close()


def _spec(url: str | None = None, url_env: str | None = None, timeout: float = 2.0) -> NotifySpec:
    return NotifySpec.model_validate({"webhooks": [{"url": url, "url_env": url_env, "events": ["failure"],
                                                    "timeout_seconds": timeout}]})


def _payload() -> dict[str, Any]:
    return notify.failure_message("m1", "retrain_m1", "r1", "train", "boom")


def _no_secret_in(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    texts = [caplog.text] + [r.getMessage() for r in caplog.records] + [str(r.exc_text or "") for r in caplog.records]
    leaked = [s for s in secrets for t in texts if s in t]
    assert not leaked, f"secret(s) {sorted(set(leaked))} in the log: {caplog.text}"


def test_notify_a_trickling_webhook_is_cut_at_its_deadline_and_its_socket_closed(
        trickling: _Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tl_core.notify")
    timeout = 2.0
    t0 = time.monotonic()
    reached = notify.send(_spec(f"http://127.0.0.1:{trickling.port}/hook", timeout=timeout), _payload())
    elapsed = time.monotonic() - t0
    assert reached == []
    assert elapsed < timeout * 2 + 1, f"the notifier was held {elapsed:.1f} s with timeout_seconds {timeout}"
    assert len(trickling.requests) == 1
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(failures) == 1 and "deadline of 2 s (timeout_seconds)" in failures[0], failures
    assert f"http://127.0.0.1:{trickling.port}/..." in failures[0]
    # the connection was closed, not left to trickle on: the server's next write fails soon
    assert trickling.closed.wait(3.0), "the webhook's socket was left open after the deadline"


def test_notify_post_json_raises_naming_the_deadline(trickling: _Server) -> None:
    t0 = time.monotonic()
    with pytest.raises(notify.WebhookError, match=r"no complete answer within its deadline of 0\.5 s"):
        notify.post_json(f"http://127.0.0.1:{trickling.port}/hook", _payload(), 0.5)
    assert time.monotonic() - t0 < 0.5 * 2 + 1


def test_notify_url_env_holding_a_secret_is_never_logged(monkeypatch: pytest.MonkeyPatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tl_core")
    monkeypatch.setenv("TL_HOOK_SECRET", ENV_SECRET)
    assert notify.send(_spec(url_env="TL_HOOK_SECRET"), _payload()) == []
    assert "environment variable TL_HOOK_SECRET does not hold an http(s) URL" in caplog.text
    _no_secret_in(caplog, ENV_SECRET, ENV_SECRET[:12])
    with pytest.raises(ValueError, match="environment variable TL_HOOK_SECRET does not hold an http") as err:
        notify.channel_url(_spec(url_env="TL_HOOK_SECRET").webhooks[0])
    assert ENV_SECRET not in str(err.value)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("where", ["url", "url_env"])
def test_notify_password_and_query_of_a_failing_webhook_are_redacted(where: str, monkeypatch: pytest.MonkeyPatch,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tl_core")
    url = f"http://hook-user:{PASSWORD}@127.0.0.1:{_closed_port()}/services/T0/B0?token={TOKEN}"
    monkeypatch.setenv("TL_HOOK_URL", url)
    spec = _spec(url=url) if where == "url" else _spec(url_env="TL_HOOK_URL")
    assert notify.send(spec, _payload()) == []
    assert "not sent" in caplog.text and "127.0.0.1" in caplog.text
    _no_secret_in(caplog, PASSWORD, TOKEN, "hook-user", "services/T0")
    with pytest.raises(notify.WebhookError) as err:
        notify.post_json(url, _payload(), 2.0)
    assert not any(s in str(err.value) for s in (PASSWORD, TOKEN, "hook-user")), str(err.value)


def test_notify_an_http_error_answer_is_logged_redacted_and_credentials_go_as_basic_auth(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="tl_core")
    server = _Server(_answer(500))
    try:
        url = f"http://hook-user:{PASSWORD}@127.0.0.1:{server.port}/hook?token={TOKEN}"
        assert notify.send(_spec(url=url), _payload()) == []
        assert "HTTP Error 500" in caplog.text
        _no_secret_in(caplog, PASSWORD, TOKEN)
        # the credentials went as HTTP Basic authorization, the query string as given
        assert server.requests[0]["path"] == f"/hook?token={TOKEN}"
        assert server.requests[0]["authorization"].startswith("Basic ")
    finally:
        server.close()


def test_notify_a_webhook_that_answers_in_time_is_reached() -> None:
    server = _Server(_answer(200))
    try:
        reached = notify.send(_spec(f"http://127.0.0.1:{server.port}/hook?token={TOKEN}"), _payload())
        assert reached == [f"http://127.0.0.1:{server.port}/..."] and len(server.requests) == 1
    finally:
        server.close()


@pytest.mark.parametrize(("url", "shown"), [
    (f"https://u:{PASSWORD}@hooks.example.com/services/T0/B0?token={TOKEN}#x", "https://hooks.example.com/..."),
    ("https://hooks.example.com:8443", "https://hooks.example.com:8443"),
    ("http://[::1]:8080/h", "http://[::1]:8080/..."),
    (ENV_SECRET, "(not an http(s) URL)"),
    (f"https://u:{PASSWORD}@host:notaport/x", "(not an http(s) URL)"),
])
def test_notify_redact_url_keeps_scheme_host_and_port_only(url: str, shown: str) -> None:
    assert notify.redact_url(url) == shown
