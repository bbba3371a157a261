"""Grading answers: multiple choice by letter, open-ended by a judge (local model or OpenAI-compatible), cached on disk.

Multiple choice: A-D, with E ("not in memory") an abstention. Open-ended: an abstention is not graded; any other
answer goes to a `Judge`, which sees the question, the reference answer and the candidate answer and replies
{"correct": true|false}. The paper graded with Gemini; here the default judge is the local model through the
Backend protocol, and any OpenAI-compatible endpoint can be used instead (stdlib urllib, JSON mode).
`CachedJudge` keeps every verdict in SQLite keyed by a hash of the judge's id and the exact prompt, so a re-run
asks nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Protocol, runtime_checkable

from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.eval.schema import ABSTAIN, Answer, BenchQuestion
from edge_agent.types import Message, Sampling
from edge_agent.vlm.base import Backend

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"correct": {"type": "boolean"}},
    "required": ["correct"],
    "additionalProperties": False,
}

JUDGE_SYSTEM = "You grade answers to questions about a video. You reply only with JSON."


class JudgeError(EdgeAgentError):
    """A judge could not be reached or gave a reply that is not a verdict."""


def judge_prompt(question: str, reference: str, candidate: str) -> str:
    """The one prompt every judge sees (so cache keys of different judges line up on the same wording)."""
    return (
        "Decide whether the candidate answer to the question is correct, judging it against the reference answer.\n"
        "It is correct when it states the same thing as the reference answer; wording may differ, extra detail is "
        "fine, but a contradiction or a missing key fact makes it wrong.\n\n"
        f"Question: {question.strip()}\n"
        f"Reference answer: {reference.strip()}\n"
        f"Candidate answer: {candidate.strip()}\n\n"
        'Reply with JSON: {"correct": true} or {"correct": false}.'
    )


def parse_verdict(text: str, judge_id: str) -> bool:
    """{"correct": bool} -> bool; anything else is a JudgeError naming the judge and the reply."""
    s = text.strip()
    if s.startswith("```"):  # some endpoints fence JSON even in JSON mode
        s = s.strip("`").removeprefix("json").strip()
    try:
        value = json.loads(s)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("correct"), bool):
        raise JudgeError(f"judge {judge_id}: reply {text[:200]!r} is not {{\"correct\": true|false}}")
    return value["correct"]


@runtime_checkable
class Judge(Protocol):
    """Grades one open-ended answer. `judge_id` names the model (and endpoint) so cached verdicts stay apart."""

    judge_id: str

    def judge(self, question: str, reference: str, candidate: str) -> bool:
        ...


class BackendJudge:
    """The local model as judge: the same Backend that writes and answers, constrained to {"correct": bool}."""

    def __init__(self, backend: Backend, max_tokens: int = 16):
        self.backend = backend
        self.sampling = Sampling(temperature=0.0, max_tokens=max_tokens)
        self.judge_id = f"local:{backend.model_name}:{backend.model_hash}"

    def judge(self, question: str, reference: str, candidate: str) -> bool:
        messages = [Message("system", [JUDGE_SYSTEM]),
                    Message("user", [judge_prompt(question, reference, candidate)])]
        gen = self.backend.generate(messages, self.sampling, json_schema=VERDICT_SCHEMA)
        return parse_verdict(gen.text, self.judge_id)


class OpenAIChat:
    """Any OpenAI-compatible chat endpoint (POST {base_url}/chat/completions, temperature 0). Off the device:
    `eval` uses one only when the user names its URL (`--judge-url`, `--answerer-url`); `ask` never does.

    The API key is read from the environment variable named `api_key_env` (None: send no key, e.g. a local
    server). Network failures, 429 and 5xx are retried `retries` times with doubling waits.
    """

    role = "endpoint"

    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY", *,
                 timeout: float = 60.0, retries: int = 2, backoff: float = 1.0):
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{self.role} base_url={base_url!r}: expected an http(s) URL")
        if not model:
            raise ConfigError(f"{self.role} model={model!r}: must not be empty")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self.judge_id = f"openai:{base_url.rstrip('/')}:{model}"

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"{self.role} api key: environment variable {self.api_key_env} is not set")
        return key

    def chat(self, messages: list[dict], *, json_mode: bool = True, max_tokens: int | None = None) -> str:
        """The reply text to `messages` ([{"role", "content"}])."""
        body: dict = {"model": self.model, "messages": messages, "temperature": 0}
        if json_mode:
            body["response_format"] = {"type": "json_object"}
        if max_tokens:
            body["max_tokens"] = max_tokens
        headers = {"Content-Type": "application/json"}
        key = self._key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=json.dumps(body).encode("utf-8"), headers=headers,
                                         method="POST")
        reply = self._send(request)
        try:
            return str(reply["choices"][0]["message"]["content"])
        except (KeyError, IndexError, TypeError):
            raise JudgeError(f"{self.role} {self.judge_id}: response has no choices[0].message.content") from None

    def _send(self, request: urllib.request.Request) -> dict:
        wait = self.backoff
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                retryable = e.code == 429 or e.code >= 500
                if not retryable or attempt == self.retries:
                    raise JudgeError(f"{self.role} {self.judge_id}: HTTP {e.code} from {self.url}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                if attempt == self.retries:
                    reason = getattr(e, "reason", e)
                    raise JudgeError(f"{self.role} {self.judge_id}: cannot reach {self.url} ({reason})") from None
            except json.JSONDecodeError:
                raise JudgeError(f"{self.role} {self.judge_id}: response from {self.url} is not JSON") from None
            time.sleep(wait)
            wait *= 2
        raise AssertionError("unreachable")




class OpenAIJudge(OpenAIChat):
    """An OpenAI-compatible endpoint grading open answers (JSON verdict)."""

    role = "judge"

    def judge(self, question: str, reference: str, candidate: str) -> bool:
        content = self.chat([{"role": "system", "content": JUDGE_SYSTEM},
                             {"role": "user", "content": judge_prompt(question, reference, candidate)}])
        return parse_verdict(content, self.judge_id)


class CachedJudge:
    """Wraps a judge with an on-disk SQLite cache: key = sha256(judge_id, prompt); `calls` counts real judge calls."""

    def __init__(self, inner: Judge, path: Path | str):
        self.inner = inner
        self.judge_id = inner.judge_id
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.calls = 0
        self.hits = 0
        self._db = sqlite3.connect(self.path)
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (key TEXT PRIMARY KEY, judge_id TEXT NOT NULL, "
                         "correct INTEGER NOT NULL, created_at REAL NOT NULL)")
        self._db.commit()

    @staticmethod
    def key(judge_id: str, prompt: str) -> str:
        return hashlib.sha256(f"{judge_id}\x00{prompt}".encode("utf-8")).hexdigest()

    def judge(self, question: str, reference: str, candidate: str) -> bool:
        k = self.key(self.judge_id, judge_prompt(question, reference, candidate))
        row = self._db.execute("SELECT correct FROM verdicts WHERE key = ?", (k,)).fetchone()
        if row is not None:
            self.hits += 1
            return bool(row[0])
        self.calls += 1
        verdict = self.inner.judge(question, reference, candidate)
        self._db.execute("INSERT OR REPLACE INTO verdicts VALUES (?, ?, ?, ?)",
                         (k, self.judge_id, int(verdict), time.time()))
        self._db.commit()
        return verdict

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "CachedJudge":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def grade(question: BenchQuestion, answer: Answer, judge: Judge | None = None) -> tuple[bool, bool]:
    """(answered, correct) for one answer. Multiple choice by letter; open-ended by `judge` (required then).

    Multiple choice: no choice, E, or `abstained` is an abstention; any other reply is an answer, right only when
    it is the reference letter (the answerer decodes under a grammar, so other replies do not occur in practice).
    """
    if question.is_multiple_choice:
        choice = (answer.choice or "").strip().upper()
        if answer.abstained or choice in ("", ABSTAIN):
            return False, False
        return True, choice == question.answer
    if answer.abstained or not answer.text.strip():
        return False, False
    if judge is None:
        raise ConfigError(f"question {question.benchmark}/{question.id} is open-ended: a judge is required")
    return True, judge.judge(question.question, question.answer, answer.text)
