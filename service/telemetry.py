"""What the ingress records per request: Prometheus metrics through Ray Serve's metrics API, a Parquet usage log
(one row per request, billable or not), and an in-memory summary served at `GET /v1/stats`.

Usage rows are journalled durably before the request is answered (`delivered` / `refused` return once the row is
fsynced; routes call them off the event loop) and compacted into Parquet at least every `flush_interval_s` by a
background thread, whether or not more requests arrive; rows of a replica that died are recovered by the next one
started on the node."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from pathlib import Path
from typing import Any

from ray.serve.metrics import Counter, Histogram

from avatar.job import AvatarJob
from avatar.store.usage import UsageLog, UsageRecord

log = logging.getLogger("avatar.telemetry")
_LATENCY_MS = [50, 100, 200, 400, 700, 1000, 1500, 2500, 5000, 10000, 30000]
CHECKS = ("face_present", "likeness", "content_safety")


class Telemetry:
    def __init__(self, usage_uri: str, flush_interval_s: float = 30.0, journal_dir: str | Path | None = None) -> None:
        self.usage = UsageLog(usage_uri, journal_dir=journal_dir)
        self.flush_interval_s = flush_interval_s
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="usage-flush", daemon=True)
        self._flusher.start()
        self.tally: Tally[str] = Tally()
        self.requests = Counter("avatar_requests", "Requests by route and outcome",
                                tag_keys=("route", "outcome", "style", "platform"))
        self.checks = Counter("avatar_gate_checks", "Quality-gate checks of delivered avatars",
                              tag_keys=("check", "result", "style"))
        self.retries = Counter("avatar_retries", "Generation retries after a failed gate", tag_keys=("style",))
        self.latency = Histogram("avatar_request_latency_ms", "End-to-end latency", boundaries=_LATENCY_MS,
                                 tag_keys=("route", "style"))
        self.stage_latency = Histogram("avatar_stage_latency_ms", "Time per pipeline stage (all attempts)",
                                       boundaries=_LATENCY_MS, tag_keys=("stage",))

    def delivered(self, job: AvatarJob, latency_ms: float, credits: int = 0, external_id: str | None = None) -> None:
        gate = job.gate
        outcome = "billable" if job.billable else "unbilled"
        self.requests.inc(tags={"route": "generate", "outcome": outcome, "style": _style(job),
                                "platform": job.platform})
        self.latency.observe(latency_ms, tags={"route": "generate", "style": _style(job)})
        for stage, ms in job.timings.items():
            self.stage_latency.observe(ms, tags={"stage": stage})
        if job.attempt > 1:
            self.retries.inc(job.attempt - 1, tags={"style": _style(job)})
        with self._lock:
            self.tally.update({"generate": 1, f"generate:{outcome}": 1, "retries": job.attempt - 1})
            if gate is not None:
                for check in CHECKS:
                    passed = bool(gate.checks.get(check))
                    self.tally[f"check:{check}:{'pass' if passed else 'fail'}"] += 1
        if gate is not None:
            for check in CHECKS:
                self.checks.inc(tags={"check": check, "result": "pass" if gate.checks.get(check) else "fail",
                                      "style": _style(job)})
            record = UsageRecord.from_gate(job.request_id, job.account or "anonymous", job.style, job.platform, gate,
                                           job.attempt, job.input_quality_score, latency_ms)
        else:
            record = UsageRecord(job.request_id, job.account or "anonymous", job.style, job.platform, True, True,
                                 True, job.attempt, job.likeness_score, 0.0, job.input_quality_score, latency_ms,
                                 job.billable)
        record.credits, record.external_id = int(credits), external_id
        self._append(record)

    def refused(self, job: AvatarJob, code: str, latency_ms: float, external_id: str | None = None) -> None:
        self.requests.inc(tags={"route": "generate", "outcome": code, "style": _style(job), "platform": job.platform})
        with self._lock:
            self.tally.update({"generate": 1, f"generate:{code}": 1})
        record = UsageRecord.refused(job.request_id, job.account or "anonymous", job.style, job.platform, code,
                                     job.input_quality_score, latency_ms)
        record.external_id = external_id
        self._append(record)

    def feedback(self, request_id: str, account: str, style: str, platform: str, verdict: str,
                 reason: str | None) -> None:
        """A platform's report on a delivered avatar: a usage row of its own (decline rates come from these)."""
        self.requests.inc(tags={"route": "feedback", "outcome": verdict, "style": _style_name(style),
                                "platform": platform})
        with self._lock:
            self.tally.update({"feedback": 1, f"feedback:{verdict}": 1})
        self._append(UsageRecord.user_feedback(request_id, account, style, platform, verdict, reason))

    def checked(self, outcome: str) -> None:
        self.requests.inc(tags={"route": "check", "outcome": outcome, "style": "", "platform": ""})
        with self._lock:
            self.tally.update({"check": 1, f"check:{outcome}": 1})

    def served_file(self) -> None:
        with self._lock:
            self.tally["files"] += 1

    def summary(self) -> dict[str, Any]:
        """Counts of this ingress replica since start, with the gate's pass rate per check."""
        with self._lock:
            tally = dict(self.tally)
        rates = {}
        for check in CHECKS:
            passed, failed = tally.get(f"check:{check}:pass", 0), tally.get(f"check:{check}:fail", 0)
            rates[check] = round(passed / (passed + failed), 4) if passed + failed else None
        return {"counts": tally, "pass_rate": rates}

    def _append(self, record: UsageRecord) -> None:
        self.usage.append(record)
        if time.monotonic() - self._last_flush >= self.flush_interval_s:
            self._last_flush = time.monotonic()
            self.usage.flush()

    def _flush_loop(self) -> None:
        """Buffered rows reach Parquet within about one interval even when no further request arrives."""
        while not self._stop.wait(max(self.flush_interval_s, 1.0)):
            if time.monotonic() - self._last_flush >= self.flush_interval_s:
                self._last_flush = time.monotonic()
                try:
                    self.usage.flush()
                except Exception:  # noqa: BLE001 - the rows stay journalled; the next flush retries
                    log.exception("usage log flush failed")

    def close(self) -> None:
        self._stop.set()
        self.usage.close()


def _style(job: AvatarJob) -> str:
    return _style_name(job.style)


def _style_name(style: str) -> str:
    """Metric label of a style: custom tokens are grouped, so labels stay bounded."""
    return "custom" if style.startswith("sty_") else style
