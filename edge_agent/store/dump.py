"""`edge-agent export`: everything the wearer owns, as plain JSON to keep: memories, questions with their
answers, citations and feedback (and the feedback they later replaced), streams, adapters, and the people the face
registry numbered."""

from __future__ import annotations

import json
import time
from typing import Any

from edge_agent.store.queries import ADAPTER_JSON, Queries

EXPORT_FORMAT = 1


def export_all(store: Queries) -> dict[str, Any]:
    """One JSON-ready dict. Kept keyframes and adapter files are listed by absolute path (the files stay where
    they are, owner-only); the database records them relative to the home, which an export read elsewhere could
    not resolve."""
    memories = store._rows("SELECT id, stream_id, segment_id, text, t_start, t_end, writer_model, adapter_id, "
                           "created_at FROM memories ORDER BY t_start, id")
    questions = store._rows("SELECT id, text, options, asked_at, created_at FROM questions ORDER BY id")
    for q in questions:
        q["options"] = json.loads(q["options"])
        q["answers"] = store._rows("SELECT id, choice, text, abstained, reason, model, adapter_id, created_at "
                                   "FROM answers WHERE question_id = ? ORDER BY id", (q["id"],))
        for a in q["answers"]:
            a["abstained"] = bool(a["abstained"])
            a["citations"] = [r["memory_id"] for r in store._rows(
                "SELECT memory_id FROM answer_citations WHERE answer_id = ? AND cited = 1 ORDER BY rank", (a["id"],))]
            a["feedback"] = [{**f, "correct": bool(f["correct"])} for f in store._rows(
                "SELECT id, correct, corrected, created_at FROM feedback WHERE answer_id = ? ORDER BY id", (a["id"],))]
            a["replaced_feedback"] = [{**f, "correct": bool(f["correct"])} for f in store._rows(
                "SELECT feedback_id AS id, correct, corrected, created_at, replaced_at, replaced_by "
                "FROM feedback_history WHERE answer_id = ? ORDER BY id", (a["id"],))]
    adapters = store._rows("SELECT * FROM adapters ORDER BY created_at, id")
    for a in adapters:
        for key in (*ADAPTER_JSON, "extra"):
            if isinstance(a.get(key), str):
                a[key] = json.loads(a[key])
        a["path"], a["gguf_path"] = store._real_path(a.get("path")), store._real_path(a.get("gguf_path"))
    kept = store._rows("SELECT segment_id, path, expires_at FROM kept_frames ORDER BY id")
    for f in kept:
        f["path"] = store._real_path(f["path"])
    return {
        "format": EXPORT_FORMAT,
        "exported_at": time.time(),
        "streams": store._rows("SELECT id, source, kind, origin, created_at FROM streams ORDER BY id"),
        "memories": memories,
        "questions": questions,
        "adapters": adapters,
        "kept_frames": kept,
        # who `<face_N>` is: when first and last seen (identity vectors are numbers no one can read; not exported)
        "faces": store._rows("SELECT tag, n_frames, first_seen, last_seen FROM faces ORDER BY number"),
    }
