"""Queries on `questions`, `answers`, `answer_citations` and `feedback`: what the wearer asked and said."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from edge_agent.errors import StoreError
from edge_agent.store.queries import (
    Queries,
)
from edge_agent.store.text import clean_text


class AnswerQueries(Queries):
    # ------------------------------------------------------------------ questions, answers, feedback

    def add_question(self, text: str, options: list[str], asked_at: float) -> int:
        with self._tx():
            return self._insert("questions", {
                "text": clean_text(text), "options": json.dumps([clean_text(o) for o in options or []]),
                "asked_at": float(asked_at), "created_at": time.time()})

    def add_answer(self, question_id: int, *, choice: str | None, text: str, abstained: bool, cited: list[int],
                   model: str, adapter_id: str | None, reason: str | None = None,
                   shown: list[int] | None = None) -> int:
        """Record an answer, the memories shown to the answerer (`shown`, in rank order) and those it cites.

        Memory ids that no longer exist (forgotten meanwhile) are skipped.
        """
        with self._tx() as conn:
            if self._one("SELECT 1 AS x FROM questions WHERE id = ?", (int(question_id),)) is None:
                raise StoreError(f"question {question_id}: no such question")
            answer_id = self._insert("answers", {
                "question_id": int(question_id), "choice": choice, "text": clean_text(text),
                "abstained": int(bool(abstained)), "reason": None if reason is None else clean_text(reason),
                "model": model, "adapter_id": adapter_id, "created_at": time.time()})
            cited_set = {int(c) for c in cited}
            ordered = list(dict.fromkeys([*(int(s) for s in shown or []), *(int(c) for c in cited)]))
            for rank, mid in enumerate(ordered):
                conn.execute(
                    "INSERT INTO answer_citations (answer_id, memory_id, rank, cited) "
                    "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM memories WHERE id = ?)",
                    (answer_id, mid, rank, int(mid in cited_set), mid))
            return answer_id

    def get_answer(self, answer_id: int) -> dict[str, Any]:
        """The answer with its question, options, cited memories ({id, t_start, t_end, text}), shown ids, feedback."""
        row = self._one(
            "SELECT a.*, q.text AS question, q.options AS options, q.asked_at AS asked_at "
            "FROM answers a JOIN questions q ON q.id = a.question_id WHERE a.id = ?", (int(answer_id),))
        if row is None:
            raise StoreError(f"answer {answer_id}: no such answer")
        row["options"] = json.loads(row["options"])
        row["abstained"] = bool(row["abstained"])
        links = self._rows(
            "SELECT ac.cited, m.id, m.t_start, m.t_end, m.text FROM answer_citations ac "
            "JOIN memories m ON m.id = ac.memory_id WHERE ac.answer_id = ? ORDER BY ac.rank", (int(answer_id),))
        row["citations"] = [{k: r[k] for k in ("id", "t_start", "t_end", "text")} for r in links if r["cited"]]
        row["shown"] = [r["id"] for r in links]
        row["feedback"] = self._rows("SELECT id, correct, corrected, created_at FROM feedback WHERE answer_id = ? "
                                     "ORDER BY id", (int(answer_id),))
        for f in row["feedback"]:
            f["correct"] = bool(f["correct"])
        return row

    def answers(self, limit: int | None = None, with_feedback: bool = False) -> list[dict[str, Any]]:
        """Answers (as get_answer), newest first; with_feedback=True keeps only those with feedback."""
        sql = "SELECT a.id FROM answers a"
        if with_feedback:
            sql += " WHERE EXISTS (SELECT 1 FROM feedback f WHERE f.answer_id = a.id)"
        sql += " ORDER BY a.id DESC"
        params: list[Any] = []
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self.get_answer(r["id"]) for r in self._rows(sql, params)]

    def add_feedback(self, answer_id: int, correct: bool, corrected: str | None = None) -> int:
        """Record the wearer's verdict on an answer; it REPLACES earlier feedback on the same answer.

        The wearer changed their mind (`--correct`, later `--wrong`): the earlier rows move to
        `feedback_history` (the audit trail, with when and by which feedback they were replaced) and the
        training pairs made from them go (trigger), so Phase Two learns from the latest verdict only.
        """
        now = time.time()
        with self._tx() as conn:
            if self._one("SELECT 1 AS x FROM answers WHERE id = ?", (int(answer_id),)) is None:
                raise StoreError(f"answer {answer_id}: no such answer")
            earlier = [r["id"] for r in self._rows("SELECT id FROM feedback WHERE answer_id = ?", (int(answer_id),))]
            fid = self._insert("feedback", {
                "answer_id": int(answer_id), "correct": int(bool(correct)),
                "corrected": None if corrected is None else clean_text(corrected), "created_at": now})
            if earlier:
                marks, vals = self._ids(earlier)
                conn.execute(
                    "INSERT INTO feedback_history (feedback_id, answer_id, correct, corrected, created_at, "
                    f"replaced_at, replaced_by) SELECT id, answer_id, correct, corrected, created_at, ?, ? "
                    f"FROM feedback WHERE id IN ({marks})", [now, fid, *vals])
                conn.execute(f"DELETE FROM feedback WHERE id IN ({marks})", vals)
            return fid

    def feedback_history(self, answer_id: int | None = None) -> list[dict[str, Any]]:
        """Feedback that later feedback replaced (the audit trail), oldest first."""
        sql, params = "SELECT * FROM feedback_history", []
        if answer_id is not None:
            sql, params = sql + " WHERE answer_id = ?", [int(answer_id)]
        rows = self._rows(sql + " ORDER BY id", params)
        for r in rows:
            r["correct"] = bool(r["correct"])
        return rows

    def feedback(self, ids: Iterable[int] | None = None) -> list[dict[str, Any]]:
        """Feedback rows joined with their answer and question (what Phase Two's reward reads)."""
        sql = ("SELECT f.id, f.answer_id, f.correct, f.corrected, f.created_at, a.question_id, a.choice, "
               "a.text AS answer_text, a.abstained, q.text AS question, q.options, q.asked_at "
               "FROM feedback f JOIN answers a ON a.id = f.answer_id JOIN questions q ON q.id = a.question_id")
        params: list[int] = []
        if ids is not None:
            marks, params = self._ids(ids)
            sql += f" WHERE f.id IN ({marks})"
        rows = self._rows(sql + " ORDER BY f.id", params)
        for r in rows:
            r["correct"], r["abstained"], r["options"] = bool(r["correct"]), bool(r["abstained"]), json.loads(r["options"])
        return rows

    def delete_feedback(self, ids: Iterable[int]) -> dict[str, int]:
        """Delete feedback and the pairs derived from it; returns counts."""
        marks, vals = self._ids(ids)
        if not vals:
            return {"feedback": 0, "pairs": 0}
        with self._tx() as conn:
            n_pairs = conn.execute(
                f"SELECT COUNT(DISTINCT pair_id) FROM pair_feedback WHERE feedback_id IN ({marks})", vals).fetchone()[0]
            n = conn.execute(f"DELETE FROM feedback WHERE id IN ({marks})", vals).rowcount
        return {"feedback": n, "pairs": int(n_pairs)}

    def delete_answer_feedback(self, answer_id: int) -> dict[str, int]:
        """Take back every feedback given on one answer (and the training pairs made from it)."""
        return self.delete_feedback(f["id"] for f in self.get_answer(answer_id)["feedback"])
