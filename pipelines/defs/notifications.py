"""Failures reach people: a failed run, and a failed asset check (the promotion gate, the curation share, the
teacher warnings), are posted to a webhook as JSON (`text` for chat tools that read only that, and the fields).

The webhook is $SDFT_WEBHOOK_URL (read through Dagster's EnvVar, so the UI shows the variable's name, not the URL,
which often holds a token). Without it the sensors skip, saying why. Sensors need the daemon (`make ui` runs it).
"""

from __future__ import annotations

import json
import os
import urllib.request

import dagster as dg

WEBHOOK_ENV = "SDFT_WEBHOOK_URL"


class Notifier(dg.ConfigurableResource):
    webhook_url: str = ""  # empty: notifications are off
    timeout_s: float = 10.0

    def send(self, payload: dict) -> None:
        """POST the payload as JSON; a receiver that does not answer 2xx is an error (the sensor tick fails and
        says so in the UI, rather than a notification being lost in silence)."""
        request = urllib.request.Request(
            self.webhook_url,
            data=json.dumps(payload, default=str).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()


def notifier_from_environment() -> Notifier:
    return Notifier(webhook_url=dg.EnvVar(WEBHOOK_ENV) if os.environ.get(WEBHOOK_ENV) else "")


@dg.run_failure_sensor(name="notify_on_run_failure", default_status=dg.DefaultSensorStatus.RUNNING)
def notify_on_run_failure(context: dg.RunFailureSensorContext, notifier: Notifier) -> dg.SkipReason | None:
    """A failed run of any job: its job, partition, the error, and the checks that failed in it."""
    if not notifier.webhook_url:
        return dg.SkipReason(f"no webhook: set {WEBHOOK_ENV}")
    run = context.dagster_run
    failed = [check for check in _check_evaluations(context.instance, run_id=run.run_id) if not check["passed"]]
    partition = run.tags.get("dagster/partition")
    message = context.failure_event.message or "the run failed"
    notifier.send(
        {
            "text": f"sdft: run {run.run_id[:8]} of {run.job_name}"
            + (f" ({partition})" if partition else "")
            + f" failed: {message}"
            + "".join(f"\n- check {c['check']} failed: {c['description']}" for c in failed),
            "event": "run_failure",
            "job": run.job_name,
            "run_id": run.run_id,
            "partition": partition,
            "message": message,
            "failed_checks": failed,
        }
    )
    return None


@dg.sensor(name="notify_on_failed_checks", minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING)
def notify_on_failed_checks(context: dg.SensorEvaluationContext, notifier: Notifier) -> dg.SkipReason | None:
    """Each failed asset check once, warnings included (a failed warning does not fail its run, so no run failure
    reports it); the cursor is the last event seen."""
    if not notifier.webhook_url:
        return dg.SkipReason(f"no webhook: set {WEBHOOK_ENV}")
    after = int(context.cursor) if context.cursor else None
    checks = _check_evaluations(context.instance, after_storage_id=after)
    for check in checks:
        if not check["passed"]:
            notifier.send(
                {
                    "text": f"sdft: check {check['asset']}.{check['check']}"
                    + (f" ({check['partition']})" if check["partition"] else "")
                    + f" failed ({check['severity']}): {check['description']}",
                    "event": "check_failed",
                    **check,
                }
            )
        context.update_cursor(str(check["storage_id"]))  # sent: never again, even if a later send fails
    return None


def _check_evaluations(
    instance: dg.DagsterInstance, run_id: str | None = None, after_storage_id: int | None = None, limit: int = 200
) -> list[dict]:
    """Asset check evaluations as plain fields, oldest first: those of one run, or (at most `limit`) those after
    an event-log cursor."""
    kind = dg.DagsterEventType.ASSET_CHECK_EVALUATION
    if run_id is not None:
        entries = [(None, entry) for entry in instance.all_logs(run_id, of_type=kind)]
    else:
        records = instance.event_log_storage.get_event_records(
            dg.EventRecordsFilter(event_type=kind, after_cursor=after_storage_id), limit=limit, ascending=True
        )
        entries = [(record.storage_id, record.event_log_entry) for record in records]
    found, partitions = [], {}
    for storage_id, entry in entries:
        evaluation = entry.dagster_event.event_specific_data
        if entry.run_id not in partitions:  # a check of a partitioned asset runs in that partition's run
            run = instance.get_run_by_id(entry.run_id)
            partitions[entry.run_id] = run.tags.get("dagster/partition") if run else None
        found.append(
            {
                "storage_id": storage_id,
                "run_id": entry.run_id,
                "asset": evaluation.asset_key.to_user_string(),
                "check": evaluation.check_name,
                "partition": evaluation.partition or partitions[entry.run_id],
                "passed": evaluation.passed,
                "severity": evaluation.severity.value,
                "description": evaluation.description or "",
            }
        )
    return found
