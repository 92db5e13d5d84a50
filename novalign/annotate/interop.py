"""Reading tasks into a project, and Label Studio / Argilla JSON in and out.

Three import forms, told apart per file:

* the hand-off format (``novalign.data.annotation``): JSONL of ``AnnotationTask`` (a ``task_id`` on each line);
* preference groups, as the preference-data step writes them (or any JSONL of prompt + responses):
  ``{"prompt": "..." | [messages], "system": "...", "responses": ["text" | {"content", "model", "score"}],
  "labels": {...}, "id": "..."}``; the task id is ``id`` or ``<file name>:<line>``;
* a Label Studio JSON export (a JSON array, ``.json``): the shape :func:`label_studio_tasks` writes, with
  its annotations imported as results of (login-less) accounts named ``ls:<completed_by>``.

Label Studio shape (one labeling config, ``LABEL_STUDIO_CONFIG``): ``data = {task_id, prompt: [messages],
labels, responses: [{id, model, body}], <rid>: body}``; each annotation's ``result`` holds a ``ranker`` result
(buckets ``tier1``, ``tier2``, ... best first, a bucket holds ties), ``rating`` results named
``<dimension>_<rid>``, ``labels`` regions on ``<rid>`` with a per-region ``textarea`` note (same region id),
and ``textarea`` results ``edit_<rid>`` holding an edited answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from novalign.data.annotation import SCORE_DIMENSIONS, AnnotationResult, AnnotationTask, read_tasks
from novalign.data.io import DataError, read_valid

LABEL_STUDIO_CONFIG = """<View>
  <Paragraphs name="prompt" value="$prompt" layout="dialogue" nameKey="role" textKey="content"/>
  <List name="responses" value="$responses" title="Responses"/>
  <Ranker name="rank" toName="responses"/>
  <!-- per response rid: <Text name="rid" value="$rid"/>, <Labels name="error_rid" toName="rid"> with
       factual/logical/other, <TextArea name="note" toName="rid" perRegion="true"/>, <Rating name="helpfulness_rid"
       toName="rid" maxRating="5"/> (fluency, safety alike), <TextArea name="edit_rid" toName="rid"/> -->
</View>"""


def _group_task(record: dict[str, Any], path: str, line: int) -> AnnotationTask:
    if not isinstance(record.get("responses"), list) or not record["responses"]:
        raise DataError(path, line, "responses", "a group needs a non-empty list of responses", reason="no responses")
    prompt = record.get("prompt", record.get("messages"))
    if isinstance(prompt, str):
        prompt = ([{"role": "system", "content": record["system"]}] if record.get("system") else []) + \
            [{"role": "user", "content": prompt}]
    responses = []
    for i, resp in enumerate(record["responses"]):
        resp = {"content": resp} if isinstance(resp, str) else resp
        if not isinstance(resp, dict) or not isinstance(resp.get("content"), str):
            raise DataError(path, line, f"responses[{i}].content", "a response needs text content", reason="bad response")
        responses.append({"response_id": str(resp.get("response_id", resp.get("id", f"r{i}"))), "content": resp["content"],
                          "model": resp.get("model"), "score": resp.get("score"), "critique": resp.get("critique")})
    body = {"task_id": str(record.get("id", record.get("task_id", f"{Path(path).name}:{line}"))), "prompt": prompt,
            "labels": record.get("labels") or {}, "responses": responses, "gold": record.get("gold")}
    try:
        return AnnotationTask.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise DataError(path, line, field, first["msg"], reason="invalid group") from None


def read_task_file(path: str | Path) -> tuple[list[AnnotationTask], list[AnnotationResult]]:
    """The tasks (and, for a Label Studio export, the results) of one import file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return read_label_studio(path, json.loads(text))
    first = next((json.loads(x) for x in text.splitlines() if x.strip()), {})
    if isinstance(first, dict) and "task_id" in first:
        return read_tasks([path])[0], []
    return read_valid([path], _group_task, skip_invalid=False)[0], []


def route_value(task: AnnotationTask, field: str) -> str | None:
    """The label at ``field`` (e.g. ``labels.ability``); a list label routes by its first entry."""
    value: Any = task.model_dump()
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, list):
        value = value[0] if value else None
    return None if value is None else str(value)


# --- Label Studio --------------------------------------------------------------------------------------------

def _ls_result(result: AnnotationResult, task: AnnotationTask) -> list[dict[str, Any]]:
    by_id = {r.response_id: r.content for r in task.responses}
    out: list[dict[str, Any]] = []
    if result.ranking:
        out.append({"from_name": "rank", "to_name": "responses", "type": "ranker",
                    "value": {"ranker": {f"tier{i + 1}": tier for i, tier in enumerate(result.ranking)}}})
    for rid, dims in result.scores.items():
        for dim, value in dims.items():
            out.append({"from_name": f"{dim}_{rid}", "to_name": rid, "type": "rating", "value": {"rating": value}})
    for i, span in enumerate(result.spans):
        region = f"span{i}"
        text = by_id.get(span.response_id, "")[span.start:span.end]
        out.append({"id": region, "from_name": f"error_{span.response_id}", "to_name": span.response_id,
                    "type": "labels", "value": {"start": span.start, "end": span.end, "text": text,
                                                "labels": [span.kind]}})
        if span.note:
            out.append({"id": region, "from_name": "note", "to_name": span.response_id, "type": "textarea",
                        "value": {"text": [span.note]}})
    for edit in result.edits:
        out.append({"from_name": f"edit_{edit.response_id}", "to_name": edit.response_id, "type": "textarea",
                    "value": {"text": [edit.content]}, "meta": {"new_response_id": edit.new_response_id}})
    return out


def label_studio_tasks(pairs: list[tuple[AnnotationTask, list[AnnotationResult]]]) -> list[dict[str, Any]]:
    """Label Studio's JSON import/export shape: one item per task, its results as annotations."""
    items = []
    for n, (task, results) in enumerate(pairs, start=1):
        data = {"task_id": task.task_id, "prompt": task.messages(), "labels": task.labels,
                "responses": [{"id": r.response_id, "model": r.model, "body": r.content} for r in task.responses]}
        data.update({r.response_id: r.content for r in task.responses})
        items.append({"id": n, "data": data, "annotations": [
            {"completed_by": r.annotator, "created_at": r.submitted_at, "result": _ls_result(r, task)}
            for r in results]})
    return items


def _ls_annotation(ann: dict[str, Any], task: AnnotationTask, where: str) -> AnnotationResult:
    ranking, scores, spans, edits, notes = None, {}, [], [], {}
    for j, res in enumerate(ann.get("result") or []):
        kind, value = res.get("type"), res.get("value") or {}
        if kind == "ranker":
            ranking = [list(v) for v in (value.get("ranker") or {}).values() if v]
        elif kind == "rating":
            dim, _, rid = str(res.get("from_name", "")).partition("_")
            if dim not in SCORE_DIMENSIONS:
                raise ValueError(f"{where}.result[{j}].from_name: {res.get('from_name')!r} is not <dimension>_<rid>")
            scores.setdefault(rid, {})[dim] = int(value.get("rating"))
        elif kind == "labels":
            spans.append({"id": res.get("id"), "response_id": res.get("to_name"), "start": value.get("start"),
                          "end": value.get("end"), "kind": (value.get("labels") or ["other"])[0]})
        elif kind == "textarea" and str(res.get("from_name", "")).startswith("edit_"):
            rid = res["from_name"][len("edit_"):]
            new_id = (res.get("meta") or {}).get("new_response_id") or f"{rid}-edit"
            edits.append({"response_id": rid, "new_response_id": new_id, "content": "\n".join(value.get("text") or [])})
        elif kind == "textarea":
            notes[res.get("id")] = "\n".join(value.get("text") or [])
    for span in spans:
        span["note"] = notes.get(span.pop("id"), "")
    who = ann.get("completed_by")
    who = who.get("email") or who.get("id") if isinstance(who, dict) else who
    return AnnotationResult(task_id=task.task_id, annotator=f"ls:{who}", ranking=ranking, scores=scores, spans=spans,
                            edits=edits, submitted_at=ann.get("created_at"))


def read_label_studio(path: Path, items: Any) -> tuple[list[AnnotationTask], list[AnnotationResult]]:
    """Tasks and results of a Label Studio JSON export; errors name ``file:item N`` and the field."""
    if not isinstance(items, list):
        raise DataError(path, None, None, "a Label Studio export is a JSON array of tasks", reason="not a list")
    tasks, results = [], []
    for n, item in enumerate(items, start=1):
        data = item.get("data") if isinstance(item, dict) else None
        if not isinstance(data, dict):
            raise DataError(f"{path}:item {n}", None, "data", "missing task data", reason="no data")
        responses = data.get("responses")
        if isinstance(responses, list):
            responses = [{"response_id": str(r.get("id")), "content": r.get("body", r.get("content")),
                          "model": r.get("model")} for r in responses]
        prompt = data.get("prompt")
        try:
            task = AnnotationTask.model_validate({"task_id": str(data.get("task_id", item.get("id", n))),
                                                  "prompt": prompt, "labels": data.get("labels") or {},
                                                  "responses": responses or []})
            tasks.append(task)
            for k, ann in enumerate(item.get("annotations") or []):
                results.append(_ls_annotation(ann, task, f"annotations[{k}]"))
        except ValidationError as err:
            first = err.errors()[0]
            raise DataError(f"{path}:item {n}", None, ".".join(map(str, first["loc"])) or None, first["msg"],
                            reason="invalid Label Studio task") from None
        except (ValueError, TypeError) as err:
            raise DataError(f"{path}:item {n}", None, None, str(err), reason="invalid Label Studio annotation") from None
    return tasks, results


# --- Argilla -------------------------------------------------------------------------------------------------

def argilla_records(pairs: list[tuple[AnnotationTask, list[AnnotationResult]]]) -> list[dict[str, Any]]:
    """Argilla v2 record dicts (``rg.Record.from_dict`` / ``records.to_list(flatten=False)``): a chat field
    ``prompt``, text fields ``response_<rid>``, a ranking question ``ranking``, rating questions
    ``<dimension>_<rid>``, span questions ``spans_<rid>`` and text questions ``span_notes_<rid>`` (Argilla's
    spans carry no note) and ``edit_<rid>``."""
    records = []
    for task, results in pairs:
        fields: dict[str, Any] = {"prompt": task.messages()}
        fields.update({f"response_{r.response_id}": r.content for r in task.responses})
        responses: dict[str, list[dict[str, Any]]] = {}

        def add(question: str, value: Any, user: str) -> None:
            responses.setdefault(question, []).append({"value": value, "user_id": user})

        for res in results:
            if res.ranking:
                add("ranking", [{"value": rid, "rank": i + 1} for i, tier in enumerate(res.ranking) for rid in tier],
                    res.annotator)
            for rid, dims in res.scores.items():
                for dim, value in dims.items():
                    add(f"{dim}_{rid}", value, res.annotator)
            for rid in {s.response_id for s in res.spans}:
                mine = [s for s in res.spans if s.response_id == rid]
                add(f"spans_{rid}", [{"start": s.start, "end": s.end, "label": s.kind} for s in mine], res.annotator)
                add(f"span_notes_{rid}", json.dumps([s.note for s in mine], ensure_ascii=False), res.annotator)
            for edit in res.edits:
                add(f"edit_{edit.response_id}", edit.content, res.annotator)
        records.append({"id": task.task_id, "fields": fields, "metadata": dict(task.labels), "responses": responses,
                        "suggestions": {}, "vectors": {}, "status": "completed" if results else "pending"})
    return records
