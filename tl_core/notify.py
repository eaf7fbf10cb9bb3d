"""Notifications: the messages (pure functions) and their delivery to the spec's webhooks.

Airflow calls these through the notifier in plugins/tl_notify.py (``on_failure_callback``, the approval task's
``notifiers``, the gate-FAIL, promotion and drift tasks); nothing here imports airflow. A message is one JSON
object::

    {"text": "<one line for chat>", "event": "gate_fail", "model": ..., "dag_id": ..., "run_id": ...,
     "title": ..., "lines": [...], "links": {"report": ..., "approval": ...}, "details": {...}}

``text`` (title, the lines and the links) is what Slack and Mattermost incoming webhooks show, so those work
without an adapter. Delivery never raises: a channel that cannot be reached is logged (a notification must not
fail the task it reports on) and left out of the returned list. Each POST is bounded as a whole by its channel's
``timeout_seconds`` (a webhook that trickles its answer is cut at that deadline and its connection shut), and no
log line or error shows a secret: URLs are redacted to scheme, host and port (``redact_url``), the value of a
``url_env`` variable is never shown.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tl_core.config import NOTIFY_EVENTS, NotifySpec, WebhookSpec

logger = logging.getLogger(__name__)
MAX_LINES = 12
MAX_LINE_CHARS = 500
MAX_ANSWER = 64 * 1024  # bytes of a webhook's answer read (and dropped) before the connection is closed
NOT_A_URL = "(not an http(s) URL)"


def message(event: str, model: str, title: str, lines: list[str] | None = None, links: dict[str, str] | None = None,
            dag_id: str = "", run_id: str = "", details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A notification: ``event`` one of NOTIFY_EVENTS; lines are cut to MAX_LINES of MAX_LINE_CHARS each."""
    if event not in NOTIFY_EVENTS:
        raise ValueError(f"notification event {event!r} is not one of {NOTIFY_EVENTS}")
    shown = [(line if len(line) <= MAX_LINE_CHARS else line[:MAX_LINE_CHARS] + "...") for line in (lines or [])]
    if len(shown) > MAX_LINES:
        shown = [*shown[:MAX_LINES], f"... and {len(shown) - MAX_LINES} more"]
    links = {k: v for k, v in (links or {}).items() if v}
    text = "\n".join([f"[tl-retrain] {title}", *shown, *(f"{k}: {v}" for k, v in links.items())])
    return {"text": text, "event": event, "model": model, "dag_id": dag_id, "run_id": run_id, "title": title,
            "lines": shown, "links": links, "details": details or {}}


def failure_message(model: str, dag_id: str, run_id: str, task_id: str, error: str, log_link: str = "",
                    try_number: int | None = None) -> dict[str, Any]:
    tries = f" after {try_number} tries" if try_number and try_number > 1 else ""
    return message("failure", model, f"{model}: task {task_id} of {dag_id} failed{tries}", [error or "(no message)"],
                   {"task": log_link}, dag_id, run_id, {"task_id": task_id})


def gate_fail_message(model: str, dag_id: str, run_id: str, decision: dict[str, Any] | None,
                      report_link: str = "") -> dict[str, Any]:
    d = decision or {}
    reasons = [str(r) for r in d.get("reasons") or []] or ["(the gate recorded no reasons)"]
    title = (f"{model}: gate FAIL for candidate {d.get('candidate') or '?'} against champion "
             f"{d.get('champion_version') or 'none'} (run {run_id})")
    return message("gate_fail", model, title, reasons, {"report": report_link}, dag_id, run_id,
                   {"candidate": d.get("candidate"), "champion_version": d.get("champion_version"),
                    "report_uri": d.get("report_uri")})


def pending_approval_message(model: str, dag_id: str, run_id: str, subject: str, approval_link: str,
                             report_link: str = "", timeout: str = "") -> dict[str, Any]:
    lines = [subject] + ([f"no answer by {timeout} means no promotion"] if timeout else [])
    return message("pending_approval", model, f"{model}: approval needed (run {run_id})", lines,
                   {"approval": approval_link, "report": report_link}, dag_id, run_id, {"subject": subject})


def promotion_message(model: str, dag_id: str, run_id: str, result: dict[str, Any] | None,
                      registry_link: str = "") -> dict[str, Any]:
    r = result or {}
    action = str(r.get("action") or "promote")
    verb = "rolled back to" if action == "rollback" else "promoted"
    title = f"{model}: {verb} {r.get('version') or '?'} (champion before: {r.get('previous') or 'none'})"
    lines = [f"by {r['actor']}" if r.get("actor") else "", f"reason: {r['reason']}" if r.get("reason") else ""]
    return message("promotion", model, title, [x for x in lines if x], {"registry": registry_link}, dag_id, run_id,
                   {"action": action, "version": r.get("version"), "previous": r.get("previous")})


def drift_message(model: str, dag_id: str, run_id: str, drift: dict[str, Any], report_link: str = "") -> dict[str, Any]:
    alerts = [str(a) for a in drift.get("alerts") or []]
    title = f"{model}: drift beyond the spec's thresholds ({len(alerts)} alert(s), champion " \
            f"{drift.get('champion_version') or '?'}, run {run_id})"
    return message("drift", model, title, alerts, {"report": report_link or str(drift.get("report_uri") or "")},
                   dag_id, run_id, {"report_uri": drift.get("report_uri"),
                                    "champion_version": drift.get("champion_version")})


class WebhookError(OSError):
    """A webhook POST that failed: not connected, no complete answer by its deadline, or an answer other than 2xx.
    The message names the URL redacted (redact_url), never its credentials, path or query string."""


def redact_url(url: str) -> str:
    """``url`` as logs and errors may show it: scheme, host and port, with "/..." for whatever followed (userinfo,
    path, query and fragment often carry the webhook's secret: Slack and Teams keep it in the path)."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        host, port = parts.hostname, parts.port
    except ValueError:
        return NOT_A_URL
    if parts.scheme not in ("http", "https") or not host:
        return NOT_A_URL
    shown = f"[{host}]" if ":" in host else host
    rest = "/..." if parts.path not in ("", "/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{shown}{'' if port is None else f':{port}'}{rest}"


def _scrub(text: str, url: str) -> str:
    """``text`` (a lower layer's error) without any part of ``url`` that redact_url leaves out."""
    try:
        parts = urllib.parse.urlsplit(url)
        secrets = [url, parts.netloc.rpartition("@")[0], parts.username, parts.password, parts.query,
                   parts.fragment, parts.path if len(parts.path) > 1 else ""]
    except ValueError:
        secrets = [url]
    for secret in sorted({x for s in secrets if s for x in (s, urllib.parse.unquote(s))}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def channel_name(channel: WebhookSpec) -> str:
    """How logs name ``channel``: its URL redacted, or ``$VAR`` of its url_env (whose value is never shown)."""
    return redact_url(channel.url) if channel.url is not None else f"${channel.url_env}"


def channel_url(channel: WebhookSpec) -> str | None:
    """The channel's URL (``url``, else the environment variable ``url_env``); None when that variable is unset.
    ValueError when the variable holds no http(s) URL (the message never shows the value: it may be a secret)."""
    if channel.url is not None:
        return channel.url
    value = os.environ.get(str(channel.url_env), "")
    if not value:
        return None
    if redact_url(value) == NOT_A_URL:
        raise ValueError(f"environment variable {channel.url_env} does not hold an http(s) URL (url_env of the "
                         "channel; its value is not shown)")
    return value


class _Deadline:
    """The connections one POST opened, so that its caller can shut them when the deadline passes (the worker
    thread blocked on them then ends) and a connection that completes after it is closed at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conns: list[http.client.HTTPConnection] = []
        self._expired = False

    def connected(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._expired:
                self._conns.append(conn)
                return
        conn.close()
        raise TimeoutError("the deadline passed while connecting")

    def expire(self) -> None:
        with self._lock:
            self._expired = True
            conns = list(self._conns)
        for conn in conns:
            if conn.sock is not None:
                with contextlib.suppress(OSError):
                    conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()


class _HTTPConnection(http.client.HTTPConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.connected(self)


class _HTTPSConnection(http.client.HTTPSConnection):
    deadline: _Deadline

    def connect(self) -> None:
        super().connect()
        self.deadline.connected(self)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)

    def _connection(self, host: str, **kwargs: Any) -> http.client.HTTPConnection:
        conn = _HTTPConnection(host, **kwargs)
        conn.deadline = self.deadline
        return conn


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline
        self.tls = ssl.create_default_context()

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self.tls)

    def _connection(self, host: str, **kwargs: Any) -> http.client.HTTPConnection:
        conn = _HTTPSConnection(host, **kwargs)
        conn.deadline = self.deadline
        return conn


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects is answered as failed (a redirected POST would lose its body or carry the
    credentials elsewhere)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def _request(url: str, payload: dict[str, Any]) -> urllib.request.Request:
    """The POST: ``user:password@`` of the URL goes as HTTP Basic authorization, not in the host."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    headers = {"Content-Type": "application/json", "User-Agent": "tl-retrain"}
    if parts.username is not None:
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password or '')}"
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    return urllib.request.Request(  # noqa: S310 - post_json checked the scheme (http or https) first
        urllib.parse.urlunsplit(parts._replace(netloc=netloc)), method="POST",
        data=json.dumps(payload, default=str).encode(), headers=headers)


def _exchange(opener: urllib.request.OpenerDirector, req: urllib.request.Request, timeout: float,
              outcome: dict[str, Any]) -> None:
    """The worker: connect, send, read the answer (up to MAX_ANSWER bytes); the status or the error."""
    try:
        with opener.open(req, timeout=timeout) as resp:
            resp.read(MAX_ANSWER)
            outcome["status"] = int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        outcome["error"] = exc
    except Exception as exc:  # noqa: BLE001 - handed to the caller's thread, which names it
        outcome["error"] = exc


def post_json(url: str, payload: dict[str, Any], timeout: float) -> int:
    """POST ``payload`` as JSON; the HTTP status (2xx). The whole request (connect, send, read of the answer) has
    ``timeout`` seconds: at the deadline its connection is shut and WebhookError names the deadline. WebhookError
    (an OSError) also for a refused connection or a non-2xx answer; ValueError for a URL that is not http(s)."""
    shown = redact_url(url)
    if shown == NOT_A_URL:
        raise ValueError("webhook URL is not an http(s) URL with a host (the value is not shown: it may be a secret)")
    deadline = _Deadline()
    opener = urllib.request.build_opener(_HTTPHandler(deadline), _HTTPSHandler(deadline), _NoRedirect())
    outcome: dict[str, Any] = {}
    worker = threading.Thread(target=_exchange, args=(opener, _request(url, payload), timeout, outcome),
                              name="tl-webhook", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        deadline.expire()
        raise WebhookError(f"POST to {shown}: no complete answer within its deadline of {timeout:g} s "
                           "(timeout_seconds)")
    if "error" in outcome:
        error = outcome["error"]
        raise WebhookError(f"POST to {shown} failed: {type(error).__name__}: {_scrub(str(error), url)}") from None
    return int(outcome["status"])


def send(spec: NotifySpec, payload: dict[str, Any]) -> list[str]:
    """Deliver ``payload`` to every channel subscribed to its event; returns the channels reached, as logs name
    them (channel_name). A channel that fails (unset variable, no URL in it, refused connection, HTTP error, its
    deadline passed) is logged, never raised; no log line shows a secret (redact_url, url_env values)."""
    reached = []
    for channel in spec.channels(payload["event"]):
        name = channel_name(channel)
        try:
            url = channel_url(channel)
            if url is None:
                logger.warning("notification %s for %s not sent: environment variable %s (url_env) is not set",
                               payload["event"], payload["model"], channel.url_env)
                continue
            status = post_json(url, payload, channel.timeout_seconds)
        except (OSError, ValueError) as exc:
            logger.warning("notification %s for %s to %s not sent: %s", payload["event"], payload["model"], name,
                           exc)
            continue
        logger.info("notification %s for %s sent to %s (HTTP %d)", payload["event"], payload["model"], name, status)
        reached.append(name)
    return reached
