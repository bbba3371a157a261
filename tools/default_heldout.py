"""Held-out end-to-end numbers of a model folder through the runtime: `edge-agent eval --bench synthetic --seed N`
per held-out seed (its own memories, retrieval, answering), then the answers read back from each run's SQLite
store for what the eval JSON does not print: the letter histogram, the E-rate, how often answers cite a memory,
per question category which stage lost the answer (`stages`): the writer (the memories of the question's
evidence segments do not hold it), retrieval (they hold it but none of them was shown) or the reader (shown, and
still answered wrong), and the writer's room, colour and kind over every segment it wrote (`writer_fields`).

    .venv/bin/python tools/default_heldout.py --seeds 9000-9011 --minutes 9 --jobs 2 --out /tmp/x.json

The eval runs on the model the config resolves (models/default/ unless EDGE_AGENT_MODEL__* says otherwise),
with EDGE_AGENT_MODEL__N_THREADS=1. Seeds 9000-9999 are never trained on (tools/train_default.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from edge_agent.eval.metrics import wilson_interval  # noqa: E402
from edge_agent.synth.truth import answerable, evidence_segments, match_questions  # noqa: E402
from train_default import fields  # noqa: E402

FIELD_KEYS = ("room", "room_one_room", "room_two_rooms", "room_visited", "colour", "object")


def wilson(k: int, n: int) -> list[float]:
    """95 % Wilson interval of k successes in n, rounded for the tables."""
    return [round(x, 3) for x in wilson_interval(k, n)]


def one_seed(seed: int, minutes: float, home: Path, model: str | None = None) -> dict:
    env = dict(os.environ, EDGE_AGENT_MODEL__N_THREADS="1")
    if model:
        env["EDGE_AGENT_MODEL__NAME"] = str(model)
    cmd = [sys.executable, "-m", "edge_agent.cli", "eval", "--bench", "synthetic", "--seed", str(seed),
           "--minutes", f"{minutes:g}", "--home", str(home), "--json"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode:
        raise RuntimeError(f"seed {seed}: {p.stderr[-2000:]}")
    res = json.loads(p.stdout)[0]
    db = sqlite3.connect(sorted(home.glob("eval/runs/*/baseline/*.db"))[-1])
    rows = db.execute("SELECT a.id, a.choice, a.abstained, q.text, q.options, "
                      "(SELECT count(*) FROM answer_citations c WHERE c.answer_id = a.id AND c.cited = 1), "
                      "q.asked_at FROM answers a JOIN questions q ON q.id = a.question_id ORDER BY a.id").fetchall()
    mems = [r[0] for r in db.execute("SELECT text FROM memories ORDER BY id")]
    graded = graded_answers(db, next(home.glob("eval/data/*/questions.json")), rows)
    written = written_fields(db, json.loads(next(home.glob("eval/data/*/events.json")).read_text()))
    db.close()
    hist: dict[str, int] = {}
    for r in rows:
        hist[r[1] or "open"] = hist.get(r[1] or "open", 0) + 1
    answered = [r for r in rows if not r[2]]
    sents = [[s.strip() for s in m.split(".") if s.strip()] for m in mems]
    return {"seed": seed, "n": res["n_questions"], "answered": res["n_answered"], "correct": res["n_correct"],
            "acc": res["acc"], "cov": res["cov"], "prec": res["prec"], "hist": hist,
            "abstained": sum(r[2] for r in rows), "cited_when_answered": sum(r[5] > 0 for r in answered),
            "n_answered_rows": len(answered), "memories": len(mems),
            "repeated_sentence_memories": sum(len(s) != len(set(s)) for s in sents),
            "replay_seconds": res.get("replay_seconds"), "graded": graded, "writer_fields": written}


def written_fields(db: sqlite3.Connection, clip: dict) -> dict:
    """[right, n] of the room, colour and object words of each written segment's memory against its caption
    (`train_default.fields`: whole words, the room as the caption's set of rooms; colour and object over the
    segments whose caption names an object), the room apart for segments spent in one room and those in which the
    wearer walked into another, and `room_visited`: the memory names only rooms the wearer was in during the
    segment, at least one. `edge-agent eval` replays a clip up to its last question, so the last 1-4 segments are
    never written: they are in `segments`, not in `written` or the counts."""
    memory_of = dict(db.execute("SELECT s.idx, m.text FROM segments s LEFT JOIN memories m ON m.segment_id = s.id"))
    moves = [(e["t"], e["room"]) for e in clip["events"] if e["type"] == "enter_room"]
    counts = {k: [0, 0] for k in FIELD_KEYS}

    def count(key: str, right: bool) -> None:
        counts[key][0] += right
        counts[key][1] += 1

    for s in clip["segments"]:
        if s["index"] not in memory_of:
            continue
        truth, said = fields(s["caption"]), fields(memory_of[s["index"]] or "")
        before = [room for t, room in moves if t <= s["t_start"]]
        rooms = {before[-1] if before else clip["world"]["start_room"]}
        rooms |= {room for t, room in moves if s["t_start"] < t < s["t_end"]}
        if truth["room"]:
            count("room", said["room"] == truth["room"])
            count("room_one_room" if len(rooms) == 1 else "room_two_rooms", said["room"] == truth["room"])
            count("room_visited", bool(said["room"]) and said["room"] <= rooms)
        if truth["object"]:
            count("colour", said["colour"] == truth["colour"])
            count("object", said["object"] == truth["object"])
    return {"segments": len(clip["segments"]), "written": len(memory_of), **counts}


def graded_answers(db: sqlite3.Connection, questions_json: Path, rows: list[tuple]) -> list[dict]:
    """Each answer (rows: id, choice, abstained, question text, options, citations, asked_at) graded against the
    clip's truth: category, right, abstained, `held` (the memories of the evidence segments hold the answer,
    `edge_agent.synth.truth.answerable`; None for counting and event order) and `shown_held` (so do the ones of
    them the answerer was shown)."""
    clip = json.loads(questions_json.read_text())
    asked = match_questions(clip, [(text, options, asked_at) for _, _, _, text, options, _, asked_at in rows])
    segment_of = dict(db.execute("SELECT m.id, s.idx FROM memories m JOIN segments s ON s.id = m.segment_id"))
    text_of = dict(db.execute("SELECT id, text FROM memories"))
    shown_to: dict[int, set[int]] = {}
    for answer_id, memory_id in db.execute("SELECT answer_id, memory_id FROM answer_citations"):
        shown_to.setdefault(answer_id, set()).add(memory_id)
    graded = []
    for (answer_id, choice, abstained, *_), q in zip(rows, asked):
        if q is None:
            continue
        segments = evidence_segments(q, clip["segment_seconds"])
        evidence = [m for m, idx in segment_of.items() if idx in segments]
        shown = shown_to.get(answer_id, set())
        held = answerable(q, " ".join(text_of[m] for m in evidence))
        shown_held = answerable(q, " ".join(text_of[m] for m in evidence if m in shown))
        graded.append({"category": q["category"], "right": choice == q["answer"], "abstained": bool(abstained),
                       "held": held, "shown_held": shown_held})
    return graded


def stages(graded: list[dict]) -> dict[str, dict]:
    """Per category: questions, right (Acc with its 95 % interval), and where the others were lost: the memories
    of the evidence segments hold the answer (`held`), one of those was shown (`shown_held`), right among those,
    and right among the rest (guesses; chance is 1 in 4)."""
    out = {}
    for cat in sorted({g["category"] for g in graded}):
        gs = [g for g in graded if g["category"] == cat]
        right = sum(g["right"] for g in gs)
        row = {"n": len(gs), "right": right, "acc_ci95": wilson(right, len(gs))}
        if gs[0]["held"] is not None:
            shown = [g for g in gs if g["shown_held"]]
            rest = [g for g in gs if not g["shown_held"]]
            row.update(held=sum(bool(g["held"]) for g in gs), shown_held=len(shown),
                       right_when_shown=sum(g["right"] for g in shown), right_otherwise=sum(g["right"] for g in rest))
        out[cat] = row
    return out


def writer_fields(per_seed: list[dict]) -> dict:
    """The seeds' `written_fields` summed: segments, written, and for each field right, n, Acc and its interval."""
    out = {k: sum(p[k] for p in per_seed) for k in ("segments", "written")}
    for k in FIELD_KEYS:
        right, n = (sum(p[k][i] for p in per_seed) for i in (0, 1))
        out[k] = {"acc": round(right / max(1, n), 3), "right": right, "n": n, "ci95": wilson(right, n)}
    return out


def stage_table(table: dict[str, dict]) -> str:
    """`stages` as a markdown table."""
    lines = ["| category | questions | right (Acc, 95 % CI) | evidence memories hold the answer | ... and one of them "
             "was shown | right when shown | right otherwise |", "|---|---|---|---|---|---|---|"]
    for cat, r in table.items():
        lo, hi = r["acc_ci95"]
        acc = f"{r['right']} ({100 * r['right'] / r['n']:.1f} %, {100 * lo:.1f}-{100 * hi:.1f})"
        if "held" in r:
            tail = (f"{r['held']} | {r['shown_held']} | {r['right_when_shown']} of {r['shown_held']} | "
                    f"{r['right_otherwise']} of {r['n'] - r['shown_held']}")
        else:
            tail = "- | - | - | -"
        lines.append(f"| {cat} | {r['n']} | {acc} | {tail} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="9000-9011")
    ap.add_argument("--minutes", type=float, default=9.0)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--model", default=None, help="a model folder (model.gguf + mmproj.gguf) instead of the default")
    ap.add_argument("--home", type=Path, default=None,
                    help="where each seed's eval home goes, kept for a later look (default: a fresh temporary "
                         "folder, removed at the end, so two runs at once never share a store)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/edge_agent_default/heldout.json"))
    args = ap.parse_args()
    if args.model and not (Path(args.model) / "manifest.json").is_file():
        # the manifest carries the model's profile (qa.choice = "score" for the embedded default's recipe): without
        # it multiple choice falls back to generated letters and measures a different answerer
        sys.exit(f"--model {args.model}: no manifest.json (its profile); run `tools/train_default.py manifest "
                 f"--out {args.model}` first")
    a, _, b = args.seeds.partition("-")
    seeds = list(range(int(a), int(b or a) + 1))
    with tempfile.TemporaryDirectory(prefix="edge_agent_heldout-") as tmp:
        home = args.home or Path(tmp)  # ~60 MB a seed: a temporary one goes once the seeds are graded
        with ThreadPoolExecutor(args.jobs) as ex:
            per = list(ex.map(lambda s: one_seed(s, args.minutes, home / f"s{s}", args.model), seeds))
    n = sum(p["n"] for p in per)
    k = sum(p["correct"] for p in per)
    ans = sum(p["answered"] for p in per)
    hist: dict[str, int] = {}
    for p in per:
        for L, c in p["hist"].items():
            hist[L] = hist.get(L, 0) + c
    summary = {"model": args.model or "default", "seeds": seeds, "minutes": args.minutes, "n_questions": n, "acc": round(k / max(1, n), 3),
               "acc_ci95": wilson(k, n), "cov": round(ans / max(1, n), 3), "cov_ci95": wilson(ans, n),
               "prec": round(k / max(1, ans), 3), "prec_ci95": wilson(k, ans), "letter_hist": hist,
               "e_rate": round(sum(p["abstained"] for p in per) / max(1, n), 3),
               "cited_when_answered": round(sum(p["cited_when_answered"] for p in per)
                                            / max(1, sum(p["n_answered_rows"] for p in per)), 3),
               "memories": sum(p["memories"] for p in per),
               "repeated_sentence_memories": sum(p["repeated_sentence_memories"] for p in per),
               "stages": stages([g for p in per for g in p["graded"]]),
               "writer_fields": writer_fields([p["writer_fields"] for p in per]), "per_seed": per}
    args.out.write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k not in ("per_seed", "stages", "writer_fields")}, indent=1))
    print("writer over the written segments:", ", ".join(f"{k} {100 * v['acc']:.1f} % of {v['n']}" for k, v in
                                                         summary["writer_fields"].items() if isinstance(v, dict)))
    print(stage_table(summary["stages"]))


if __name__ == "__main__":
    sys.exit(main())
