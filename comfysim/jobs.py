"""The /api/jobs view of queue and history that newer ComfyUI (0.38) serves.

Modelled on comfy_execution/jobs.py. An interrupted prompt is reported as "cancelled".
"""

from __future__ import annotations

from typing import Any

PENDING = "pending"
IN_PROGRESS = "in_progress"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
ALL_STATUSES = (PENDING, IN_PROGRESS, COMPLETED, FAILED, CANCELLED)
PREVIEWABLE = ("images", "video", "audio")


def _prune(job: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in job.items() if value is not None}


def _workflow_id(extra_data: dict[str, Any]) -> Any:
    pnginfo = extra_data.get("extra_pnginfo")
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    return workflow.get("id") if isinstance(workflow, dict) else None


def queue_job(item: list[Any], status: str) -> dict[str, Any]:
    priority, prompt_id, _, extra_data, _ = item
    return _prune(
        {
            "id": prompt_id,
            "status": status,
            "priority": priority,
            "create_time": extra_data.get("create_time"),
            "outputs_count": 0,
            "workflow_id": _workflow_id(extra_data),
        }
    )


def history_status(entry: dict[str, Any]) -> str:
    status = entry.get("status") or {}
    if status.get("status_str") != "error":
        return COMPLETED
    messages = status.get("messages") or []
    if messages and messages[-1][0] == "execution_interrupted":
        return CANCELLED
    return FAILED


def outputs_summary(outputs: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    count = 0
    preview: dict[str, Any] | None = None
    fallback: dict[str, Any] | None = None
    for node_id, node_outputs in outputs.items():
        if not isinstance(node_outputs, dict):
            continue
        for media_type, items in node_outputs.items():
            if media_type == "animated" or not isinstance(items, list):
                continue
            for item in items:
                if not isinstance(item, dict):
                    continue
                count += 1
                if preview is None and media_type in PREVIEWABLE:
                    enriched = {**item, "nodeId": node_id, "mediaType": media_type}
                    if item.get("type") == "output":
                        preview = enriched
                    elif fallback is None:
                        fallback = enriched
    return count, preview or fallback


def history_job(prompt_id: str, entry: dict[str, Any], *, detail: bool = False) -> dict[str, Any]:
    priority, _, prompt, extra_data, _ = entry["prompt"]
    status = entry.get("status") or {}
    start = end = error = None
    for event, data in status.get("messages") or []:
        if event == "execution_start":
            start = data.get("timestamp")
        elif event in ("execution_success", "execution_error", "execution_interrupted"):
            end = data.get("timestamp")
            if event == "execution_error":
                error = data
    count, preview = outputs_summary(entry.get("outputs") or {})
    job = _prune(
        {
            "id": prompt_id,
            "status": history_status(entry),
            "priority": priority,
            "create_time": extra_data.get("create_time"),
            "execution_start_time": start,
            "execution_end_time": end,
            "execution_error": error,
            "outputs_count": count,
            "preview_output": preview,
            "workflow_id": _workflow_id(extra_data),
        }
    )
    if detail:
        job["outputs"] = entry.get("outputs") or {}
        job["execution_status"] = status
        job["workflow"] = {"prompt": prompt, "extra_data": extra_data}
    return job


def all_jobs(
    running: list[list[Any]], pending: list[list[Any]], history: dict[str, dict[str, Any]], statuses: list[str]
) -> list[dict[str, Any]]:
    jobs = []
    if IN_PROGRESS in statuses:
        jobs += [queue_job(item, IN_PROGRESS) for item in running]
    if PENDING in statuses:
        jobs += [queue_job(item, PENDING) for item in pending]
    for prompt_id, entry in history.items():
        if history_status(entry) in statuses:
            jobs.append(history_job(prompt_id, entry))
    return jobs


def sort_jobs(jobs: list[dict[str, Any]], sort_by: str, sort_order: str) -> list[dict[str, Any]]:
    def key(job: dict[str, Any]) -> float:
        if sort_by == "execution_duration":
            start, end = job.get("execution_start_time", 0), job.get("execution_end_time", 0)
            return float(end - start) if start and end else 0.0
        return float(job.get("create_time", 0))

    return sorted(jobs, key=key, reverse=sort_order == "desc")
