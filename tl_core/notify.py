"""Notifications: the messages (pure functions) and their delivery to the spec's webhooks.

Airflow calls these through the notifier in plugins/tl_notify.py (``on_failure_callback``, the approval task's
``notifiers``, the gate-FAIL, promotion and drift tasks); nothing here imports airflow. A message is one JSON
object::

    {"text": "<one line for chat>", "event": "gate_fail", "model": ..., "dag_id": ..., "run_id": ...,
     "title": ..., "lines": [...], "links": {"report": ..., "approval": ...}, "details": {...}}

``text`` (title, the lines and the links) is what Slack and Mattermost incoming webhooks show, so those work
without an adapter. Delivery never raises: a channel that cannot be reached is logged (a notification must not
fail the task it reports on) and left out of the returned list.
"""

from __future__ import annotations

import json
import logging
import os
import urllib.error
import urllib.request
from typing import Any

from tl_core.config import NOTIFY_EVENTS, NotifySpec, WebhookSpec

logger = logging.getLogger(__name__)
MAX_LINES = 12
MAX_LINE_CHARS = 500


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


def channel_url(channel: WebhookSpec) -> str | None:
    """The channel's URL (``url``, else the environment variable ``url_env``); None when that variable is unset."""
    if channel.url is not None:
        return channel.url
    value = os.environ.get(str(channel.url_env), "")
    return value or None


def post_json(url: str, payload: dict[str, Any], timeout: float) -> int:
    """POST ``payload`` as JSON; the HTTP status (raises urllib.error.URLError / OSError on failure)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"webhook URL must be http(s), got {url[:80]!r}")
    body = json.dumps(payload, default=str).encode()
    req = urllib.request.Request(url, data=body, method="POST",  # noqa: S310 - scheme checked above
                                 headers={"Content-Type": "application/json", "User-Agent": "tl-retrain"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
        return int(resp.status)


def send(spec: NotifySpec, payload: dict[str, Any]) -> list[str]:
    """Deliver ``payload`` to every channel subscribed to its event; returns the channels (URL or $VAR) reached.
    A channel that fails (unset variable, refused connection, HTTP error, timeout) is logged, never raised."""
    reached = []
    for channel in spec.channels(payload["event"]):
        name = channel.url or f"${channel.url_env}"
        url = channel_url(channel)
        if url is None:
            logger.warning("notification %s for %s not sent: environment variable %s (url_env) is not set",
                           payload["event"], payload["model"], channel.url_env)
            continue
        try:
            status = post_json(url, payload, channel.timeout_seconds)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            logger.warning("notification %s for %s to %s failed: %s", payload["event"], payload["model"],
                           _redact(name), exc)
            continue
        logger.info("notification %s for %s sent to %s (HTTP %d)", payload["event"], payload["model"],
                    _redact(name), status)
        reached.append(name)
    return reached


def _redact(url: str) -> str:
    """Webhook URLs often carry their secret in the path: log only scheme and host."""
    if url.startswith("$"):
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}/..."
