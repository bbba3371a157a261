"""Task-relevance reward: which of two candidate memories of the same window serves the wearer's questions better.

Owns: the deployment's task distribution (a sample of the questions the wearer actually asked, weighted up
for answers marked wrong and for corrected answers), embedding relevance of a memory to that distribution,
the local model as a pairwise judge asked in both orderings, and the rule that turns these into preference
pairs that remember which feedback produced them.

Combination rule (`RewardConfig.rule`):

- format first: a candidate that failed format validation always loses against a valid one (no judge, no
  feedback ids); two malformed candidates are never paired.
- the wearer's own answers next (`answer_match`, every rule): when the wearer corrected an answer ("--answer on
  the shelf"), a memory holding every word of it but the function words ("shelf") tells that answer. If one
  memory tells more of the corrected answers (by weight) than the other, it wins, with those answers' feedback
  as its ids, and no model is asked: the wearer's own words, not a model's reading of them. A small judge is
  weakest exactly there, where two memories differ in one fact that only the listed answer settles
  (`tools/grade_pairs.py` grades the pairs each rule keeps against a synthetic clip's truth).
- "judge_and_embedding": the judge is asked "A or B?" with the two memories in both orders; the
  pair is kept only when both answers name the same memory (a tie or a flip drops it: position bias and
  noise cancel out) AND the weighted embedding relevance of that memory exceeds the other's by more than
  `min_relevance_gap`. Two weak signals that must agree: sparse, noisy feedback in, few clean pairs out.
- "auto" (default): "judge_and_embedding" while the judge is position-consistent. After its first
  `judge_probe` comparisons with two valid verdicts, a judge that named the same memory in both orderings in
  fewer than `min_judge_consistency` of them is not used for the rest of the job, and every comparison it
  decided or dropped is decided by "embedding" instead (the stats say so: `judge_fallback`). A small model
  that answers "A" whatever it is shown would otherwise keep no pair at all, and no adapter would ever train.
- "judge": both judge orderings must agree; embeddings only give the score and the feedback attribution.
- "embedding": no judge; kept when the relevance gap exceeds `min_relevance_gap`.

A pair's feedback ids are those of the weighted questions that favour the chosen memory (their cosine to it
is higher than to the rejected one). Deleting such feedback deletes the pair (store trigger).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any, Protocol, Sequence

import numpy as np

from edge_agent.config import RewardConfig
from edge_agent.errors import ConfigError
from edge_agent.types import Message, Sampling
from edge_agent.vlm.base import Backend

JUDGE_SCHEMA = {
    "type": "object",
    "properties": {"better": {"type": "string", "enum": ["A", "B", "tie"]}},
    "required": ["better"],
    "additionalProperties": False,
}
JUDGE_SAMPLING = Sampling(temperature=0.0, max_tokens=16)
JUDGE_SYSTEM = (
    "You compare two memories written by a wearable camera for the same moment. The memories are the only "
    "record later used to answer the wearer's questions. Judge which memory would help more to answer "
    "questions like the ones listed. Reply with JSON {\"better\": \"A\"}, {\"better\": \"B\"} or "
    "{\"better\": \"tie\"}."
)


class Embedder(Protocol):
    """Anything with `embed(texts) -> (n, d)` (or MiniLM's `encode`), rows L2-normalised or not."""

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class TaskQuestion:
    text: str  # the question, plus "Answer: ..." when the wearer corrected it
    weight: float
    feedback_ids: list[int] = field(default_factory=list)
    answer: str | None = None  # the wearer's corrected answer, when given


@dataclass
class TaskDistribution:
    questions: list[TaskQuestion]
    matrix: np.ndarray | None = None  # (n, d) unit rows, filled by `embed`

    @property
    def weights(self) -> np.ndarray:
        return np.array([q.weight for q in self.questions], dtype=np.float64)

    def top(self, k: int) -> list[TaskQuestion]:
        return sorted(self.questions, key=lambda q: -q.weight)[:k]


def task_distribution(store: Any, cfg: RewardConfig) -> TaskDistribution:
    """The wearer's recent questions with weights from feedback (latest feedback on an answer counts)."""
    out = []
    for ans in store.answers(limit=cfg.max_questions):
        fb = ans.get("feedback") or []
        weight, text, answer = cfg.correct_weight, ans["question"], None
        if fb:
            last = fb[-1]
            if not last["correct"]:
                weight = cfg.wrong_weight
            if last.get("corrected"):
                weight *= cfg.corrected_bonus
                answer = last["corrected"]
                text = f"{text} Answer: {answer}"
        out.append(TaskQuestion(text, weight, [int(f["id"]) for f in fb], answer))
    return TaskDistribution(out)


def _unit_rows(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def embed_texts(embedder: Any, texts: Sequence[str]) -> np.ndarray:
    """Unit-norm embeddings from an object with `.embed` (the adapt protocol) or `.encode` (qa.embed.MiniLM)."""
    fn = getattr(embedder, "embed", None) or getattr(embedder, "encode")
    m = np.asarray(fn(list(texts)))
    if m.ndim != 2 or m.shape[0] != len(texts):
        raise ValueError(f"embedder returned shape {m.shape} for {len(texts)} texts")
    return _unit_rows(m)


# Words that say where or how, not what: an answer's remaining words are the facts a memory must hold.
_FUNCTION_WORDS = frozenset(
    "a an the this that these those my your his her its their i me we it he she they on in at to of from into onto "
    "off by for with near under over behind beside next up down and or but was were is are be been".split())
_WORD = re.compile(r"<[^<>\s]+>|[a-z0-9]+(?:'[a-z]+)?")  # face tags such as "<face_2>" stay whole


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def answer_words(answer: str) -> frozenset[str]:
    """The words a memory must hold to tell `answer` ("on the red shelf" -> {"red", "shelf"})."""
    return frozenset(words(answer) - _FUNCTION_WORDS)


def memory_text(candidate_text: str) -> str:
    """The description of a candidate reply (JSON {"description": ...}) or the text itself."""
    try:
        obj = json.loads(candidate_text)
    except (json.JSONDecodeError, ValueError):
        return candidate_text
    if isinstance(obj, dict) and isinstance(obj.get("description"), str):
        return obj["description"]
    return candidate_text


def judge_messages(questions: Sequence[TaskQuestion], a: str, b: str) -> list[Message]:
    listed = "\n".join(f"{i + 1}. {q.text}" for i, q in enumerate(questions))
    user = (f"Questions the wearer asks:\n{listed}\n\nMemory A: {a}\nMemory B: {b}\n\n"
            "Which memory is more useful for answering questions like these?")
    return [Message("system", [JUDGE_SYSTEM]), Message("user", [user])]


def ask_judge(backend: Backend, questions: Sequence[TaskQuestion], a: str, b: str) -> str | None:
    """"A", "B", "tie", or None when the reply is not the schema's JSON (counted, never guessed)."""
    gen = backend.generate(judge_messages(questions, a, b), JUDGE_SAMPLING, json_schema=JUDGE_SCHEMA)
    try:
        better = json.loads(gen.text).get("better")
    except (json.JSONDecodeError, ValueError, AttributeError):
        return None
    return better if better in ("A", "B", "tie") else None


@dataclass
class JudgedPair:
    chosen_id: int
    rejected_id: int
    segment_id: int
    score: float  # weighted relevance gap (chosen - rejected); 1.0 for a format pair
    feedback_ids: list[int]
    reason: str  # "format" or the rule that kept it


@dataclass
class RewardStats:
    compared: int = 0
    format_pairs: int = 0
    both_malformed: int = 0
    identical: int = 0
    judge_ties: int = 0
    judge_disagreed: int = 0  # the two orderings named different memories
    judge_invalid: int = 0
    embedding_disagreed: int = 0
    below_gap: int = 0
    kept: int = 0
    answer_decided: int = 0  # decided by the wearer's corrected answers (`answer_match`), no model asked
    judge_consistent: int = 0  # both orderings named the same memory
    judge_fallback: int = 0  # 1 when rule "auto" stopped trusting the judge

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class RelevanceReward:
    """Scores candidate memories against the task distribution and decides pairwise preferences."""

    def __init__(self, task: TaskDistribution, embedder: Any, cfg: RewardConfig,
                 judge: Backend | None = None):
        if cfg.rule != "embedding" and judge is None:
            raise ConfigError(f"adapt.reward.rule={cfg.rule!r}: needs a judge backend (or rule 'embedding')")
        self.task, self.embedder, self.cfg, self.judge = task, embedder, cfg, judge
        if task.questions and task.matrix is None:
            task.matrix = embed_texts(embedder, [q.text for q in task.questions])
        # (words, weight, feedback ids) of each corrected answer: what `answer_match` looks for in a memory
        self._answers = [(answer_words(q.answer), q.weight, q.feedback_ids) for q in task.questions
                         if q.answer and answer_words(q.answer)] if cfg.answer_match else []
        self.stats = RewardStats()
        # "auto" judges like "judge_and_embedding" until the probe shows the judge cannot be trusted
        self.rule = "judge_and_embedding" if cfg.rule == "auto" else cfg.rule
        self._probed: list[tuple] = []  # "auto": comparisons of the probe, re-decided if the judge fails it

    def cosines(self, texts: Sequence[str]) -> np.ndarray:
        """(n_texts, n_questions) cosine similarities."""
        if not self.task.questions or not texts:
            return np.zeros((len(texts), len(self.task.questions)))
        return embed_texts(self.embedder, [memory_text(t) for t in texts]) @ self.task.matrix.T

    def relevance(self, texts: Sequence[str]) -> np.ndarray:
        """Weighted mean cosine of each text to the task questions (0 when there are no questions)."""
        if not self.task.questions:
            return np.zeros(len(texts))
        w = self.task.weights
        return self.cosines(texts) @ w / w.sum()

    def _attribution(self, cos_win: np.ndarray, cos_lose: np.ndarray) -> list[int]:
        ids: set[int] = set()
        for q, cw, cl in zip(self.task.questions, cos_win, cos_lose):
            if cw > cl:
                ids.update(q.feedback_ids)
        return sorted(ids)

    def judge_segment(self, candidates: Sequence[dict[str, Any]],
                      skip: set[frozenset[int]] | None = None) -> list[JudgedPair]:
        """Preference pairs among the candidates of one window (rows of `Store.candidates`); candidate-id
        pairs in `skip` (already stored, either orientation) are not compared again."""
        cands = list(candidates)
        out: list[JudgedPair] = []
        combos = [(x, y) for x, y in combinations(cands, 2) if frozenset((x["id"], y["id"])) not in (skip or set())]
        combos = combos[: self.cfg.max_pairs_per_segment]
        if not combos:
            return out
        cos = self.cosines([c["text"] for c in cands])
        index = {c["id"]: i for i, c in enumerate(cands)}
        w = self.task.weights
        rel = (cos @ w / w.sum()) if self.task.questions else np.zeros(len(cands))
        told = {c["id"]: self._answers_told(c) for c in cands}  # once per candidate, as `cos`
        shown = self.task.top(self.cfg.judge_questions)
        for x, y in combos:
            self.stats.compared += 1
            if memory_text(x["text"]).strip() == memory_text(y["text"]).strip():
                self.stats.identical += 1
                continue
            if x["valid"] != y["valid"]:
                win, lose = (x, y) if x["valid"] else (y, x)
                out.append(JudgedPair(win["id"], lose["id"], win["segment_id"], 1.0, [], "format"))
                self.stats.format_pairs += 1
                continue
            if not x["valid"]:
                self.stats.both_malformed += 1
                continue
            if not self.task.questions:
                continue  # no task distribution yet: nothing to prefer but the format
            (wx, fx), (wy, fy) = told[x["id"]], told[y["id"]]
            if wx != wy:
                winner, more, fewer = (x, fx, fy) if wx > wy else (y, fy, fx)
                self.stats.answer_decided += 1
                self._keep(out, x, y, winner, cos, rel, index, reason="answer",
                           feedback_ids=sorted(set(more) - set(fewer)))
                continue
            gap = float(rel[index[x["id"]]] - rel[index[y["id"]]])
            emb_winner = x if gap > 0 else y
            if self.rule == "embedding":
                self._keep(out, x, y, emb_winner, cos, rel, index)
                continue
            before = len(out)
            self._decide(out, x, y, self._judge_both(shown, x, y), emb_winner, cos, rel, index)
            if self.cfg.rule == "auto":
                self._probed.append((x, y, emb_winner, cos, rel, index, len(out) > before))
                if self._judge_failed_probe():
                    self._fall_back(out)
        return out

    def _decide(self, out: list[JudgedPair], x, y, winner, emb_winner, cos, rel, index) -> None:
        if winner is None:
            return
        if self.rule == "judge_and_embedding" and winner is not emb_winner:
            self.stats.embedding_disagreed += 1
            return
        self._keep(out, x, y, winner, cos, rel, index)

    def _answers_told(self, candidate: dict[str, Any]) -> tuple[float, list[int]]:
        """(summed weight, feedback ids) of the corrected answers whose every word the memory holds."""
        held = words(memory_text(candidate["text"]))
        told = [(w, fids) for need, w, fids in self._answers if need <= held]
        return sum(w for w, _ in told), [f for _, fids in told for f in fids]

    def _keep(self, out: list[JudgedPair], x, y, winner, cos, rel, index, *, reason: str | None = None,
              feedback_ids: list[int] | None = None) -> None:
        """Keep winner over the other, by the rule in force unless `reason` names another one (which skips the
        relevance gap: "answer" pairs are decided by the wearer's words, not by embeddings)."""
        loser = y if winner is x else x
        margin = float(rel[index[winner["id"]]] - rel[index[loser["id"]]])
        if reason is None and self.rule != "judge" and margin <= self.cfg.min_relevance_gap:
            self.stats.below_gap += 1
            return
        if feedback_ids is None:
            feedback_ids = self._attribution(cos[index[winner["id"]]], cos[index[loser["id"]]])
        out.append(JudgedPair(winner["id"], loser["id"], winner["segment_id"], margin, feedback_ids,
                              reason or self.rule))
        self.stats.kept += 1

    def _judge_failed_probe(self) -> bool:
        """Rule "auto": whether the probe is complete and the judge was position-consistent too rarely."""
        if self.stats.judge_fallback:
            return False
        valid = self.stats.judge_consistent + self.stats.judge_disagreed + self.stats.judge_ties
        return (valid >= self.cfg.judge_probe
                and self.stats.judge_consistent < self.cfg.min_judge_consistency * valid)

    def _fall_back(self, out: list[JudgedPair]) -> None:
        """Stop using the judge and decide the probe's dropped comparisons by embedding (those it kept agreed
        with the embedding already). Each pair carries its own segment, so they all join this call's `out`."""
        self.stats.judge_fallback = 1
        self.rule = "embedding"
        for x, y, emb_winner, cos, rel, index, kept in self._probed:
            if not kept:
                self._keep(out, x, y, emb_winner, cos, rel, index)
        self._probed = []

    def _judge_both(self, shown: Sequence[TaskQuestion], x: dict[str, Any], y: dict[str, Any]) -> dict | None:
        assert self.judge is not None
        tx, ty = memory_text(x["text"]), memory_text(y["text"])
        first = ask_judge(self.judge, shown, tx, ty)  # A = x
        second = ask_judge(self.judge, shown, ty, tx)  # A = y
        if first is None or second is None:
            self.stats.judge_invalid += 1
            return None
        if first == "tie" or second == "tie":
            self.stats.judge_ties += 1
            return None
        w1 = x if first == "A" else y
        w2 = y if second == "A" else x
        if w1 is not w2:
            self.stats.judge_disagreed += 1
            return None
        self.stats.judge_consistent += 1
        return w1
