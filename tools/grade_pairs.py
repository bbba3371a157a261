"""Are Phase Two's pairs right? Replays the reward over a home's candidates and grades each kept pair by the truth.

    .venv/bin/python tools/grade_pairs.py HOME_PARENT --rules embedding:off,embedding,judge:off,auto \
        --judge models/default/judge.gguf

HOME_PARENT holds `home/` (an edge-agent home after `run`, `ask`, `feedback`: its candidates and the wearer's
answers) and `clip/` (the synthetic clip it ran: `events.json` with each segment's true caption, `questions.json`).
The CLI loop of `tests/test_default_model.py` and `tools/experiment_phase_two.py` make such homes.

Each rule (`RULE[:off]`, ":off" = `adapt.reward.answer_match` off) is replayed on a copy of the database, so the
home is not changed. Two grades per kept pair, by the reason that kept it:
- truth: is the chosen memory closer to the segment's true caption (F1 of content words) than the rejected one
  ("toward"), further ("away"), or as close ("same");
- use: of the wearer's asked questions whose evidence lies in that segment, does the chosen memory hold more of
  their true answers (`synth.truth.answerable`) than the rejected one ("useful") or fewer ("useless"). Most pairs
  differ in no such answer and are not counted here.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.adapt.reward import RelevanceReward, memory_text, task_distribution, words  # noqa: E402
from edge_agent.config import RewardConfig  # noqa: E402
from edge_agent.synth.truth import answerable, evidence_segments  # noqa: E402

# a shorter stop list than reward's function words ("with", "near", "under" count here): the README's truth
# grades were made with it
_STOP = frozenset("i the a an on in at to of from into was were and my".split())


def content_words(text: str) -> set[str]:
    """The words of a memory or caption that F1 compares (reward's tokenizer: face tags stay whole)."""
    return words(text) - _STOP


def truth_f1(memory: str, caption: str) -> float:
    """F1 of the memory's content words against the true caption's."""
    m, c = content_words(memory), content_words(caption)
    k = len(m & c)
    return 0.0 if k == 0 else 2 * k / (len(m) + len(c))


def truth_grade(chosen: str, rejected: str, caption: str) -> str:
    d = truth_f1(chosen, caption) - truth_f1(rejected, caption)
    return "toward" if d > 1e-9 else "away" if d < -1e-9 else "same"


def use_grade(chosen: str, rejected: str, questions: list[dict]) -> str | None:
    d = sum(bool(answerable(q, chosen)) - bool(answerable(q, rejected)) for q in questions)
    return None if d == 0 else "useful" if d > 0 else "useless"


def grade(parent: Path, rules: list[str], judge_path: Path | None) -> dict[str, dict]:
    from edge_agent.qa.embed import MiniLM
    from edge_agent.store import Store

    tmp = Path(tempfile.mkdtemp())
    shutil.copy(parent / "home" / "memory.db", tmp / "memory.db")
    store = Store.open(tmp / "memory.db")
    clip = json.loads((parent / "clip" / "events.json").read_text())
    captions = {s["index"]: s["caption"] for s in clip["segments"]}
    index_of = dict(store.conn.execute("SELECT id, idx FROM segments").fetchall())
    asked = {a["question"] for a in store.answers(limit=100000)}
    by_segment: dict[int, list[dict]] = {}
    for q in json.loads((parent / "clip" / "questions.json").read_text())["questions"]:
        if q["question"] in asked:
            for i in evidence_segments(q, clip["segment_seconds"]):
                by_segment.setdefault(i, []).append(q)
    windows: dict[int, list[dict]] = {}
    for c in store.candidates():
        windows.setdefault(c["segment_id"], []).append(c)
    text = {c["id"]: memory_text(c["text"]) for cs in windows.values() for c in cs}
    judge = None
    if judge_path is not None:
        from edge_agent.vlm.llama_cpp import LlamaCppBackend

        judge = LlamaCppBackend(judge_path, None, n_threads=1, n_ctx=4096)
    embedder, out = MiniLM(), {}
    for spec in rules:
        rule, _, off = spec.partition(":")
        cfg = RewardConfig(rule=rule, answer_match=off != "off")
        reward = RelevanceReward(task_distribution(store, cfg), embedder, cfg, None if rule == "embedding" else judge)
        grades: Counter = Counter()
        for cands in windows.values():
            for p in reward.judge_segment(cands):
                if p.reason == "format":
                    continue
                i = index_of[p.segment_id]
                chosen, rejected = text[p.chosen_id], text[p.rejected_id]
                grades[f"{p.reason} {truth_grade(chosen, rejected, captions[i])}"] += 1
                use = use_grade(chosen, rejected, by_segment.get(i, []))
                if use:
                    grades[f"{p.reason} {use}"] += 1
        out[spec] = {"stats": {k: v for k, v in reward.stats.as_dict().items() if v}, "grades": dict(sorted(grades.items()))}
        print(spec, json.dumps(out[spec]), flush=True)
    if judge is not None:
        judge.close()
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parents", nargs="+", type=Path, help="folders holding home/ and clip/")
    ap.add_argument("--rules", default="embedding:off,embedding", help="comma-separated RULE[:off]")
    ap.add_argument("--judge", type=Path, help="the judge GGUF (text only) for rules that ask one")
    ap.add_argument("--out", type=Path, help="write the grades of every folder here (JSON)")
    args = ap.parse_args()
    rules = args.rules.split(",")
    if any(r.partition(":")[0] != "embedding" for r in rules) and args.judge is None:
        sys.exit("error: --rules names a judge rule: give --judge PATH")
    result = {str(p): grade(p, rules, args.judge) for p in args.parents}
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
