"""Open questions, as a wearer asks them (`edge-agent ask` without options), re-asked over the stores an end-to-end
run left (`tools/default_heldout.py --home DIR`): every synthetic question of every seed, without its options, at
the moment it was asked and over the memories written by then, through the product's answering path (the configured
model's reader and profile; `EDGE_AGENT_QA__X=...` overrides a setting, as for the eval).

    .venv/bin/python tools/reask_open.py --home /work/count/dev --out /tmp/open.json

Graded without a judge model: a counting answer by the number it gives (digits or words: "twice", "3 times"); any
other by the question's options: the answer is right when the right option is the one most like it (the most of that
option's content words in the answer, as a share of them; a tie is wrong) and it says nothing only a wrong option
says ("picking up the orange phone" is wrong where the right option is "putting the blue phone on the sofa" and a
wrong one names the orange phone). "Not in memory", or a count with no number, is not answered. Each row also says
whether one of the memories shown holds every content word of the answer (`held`): an answer no memory shown holds
was made up. Questions that point at their options ("Which of these did I do first?") cannot be asked open and are
left out. A store is copied before it is opened, so the run's own files are never touched.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from default_heldout import wilson  # noqa: E402
from edge_agent.config import load_config  # noqa: E402
from edge_agent.qa.answer import memories_and_reply  # noqa: E402
from edge_agent.store import Store  # noqa: E402
from edge_agent.synth.truth import match_questions  # noqa: E402
from train_default import content  # noqa: E402

NUMBER_WORDS = {"once": 1, "one": 1, "twice": 2, "two": 2, "thrice": 3, "three": 3, "four": 4, "five": 5, "six": 6,
                "seven": 7, "eight": 8, "nine": 9, "ten": 10}


def number_in(text: str) -> int | None:
    """The first number an answer gives, in digits or words; None when it gives none."""
    for word in re.findall(r"[a-z]+|\d+", text.lower()):
        if word.isdigit():
            return int(word)
        if word in NUMBER_WORDS:
            return NUMBER_WORDS[word]
    return None


def tells_option(said: str, options: list[str], right: int) -> bool:
    """Whether an open answer tells option `right`: it holds a larger share of that option's content words than of
    any other's, and no word only the other options have."""
    words = content(said)
    shares = [len(content(o) & words) / max(1, len(content(o))) for o in options]
    only_wrong = set().union(*(content(o) for i, o in enumerate(options) if i != right)) - content(options[right])
    return shares[right] > 0 and shares.count(max(shares)) == 1 and shares[right] == max(shares) \
        and not words & only_wrong


def held_by(said: str, shown: list[dict]) -> bool:
    """Whether one memory shown holds every content word of the answer (else the answer says what none of them
    says)."""
    words = content(said)
    return any(words <= content(m["text"]) for m in shown)


def graded(q: dict, reply: dict) -> tuple[bool, bool]:
    """(answered, right) of an open reply to the synthetic question `q`."""
    if reply["abstained"]:
        return False, False
    if q["category"] == "counting":
        n = number_in(reply["text"])
        return n is not None, n == int(q["open_answer"])
    return True, tells_option(reply["text"], q["options"], "ABCD".index(q["answer"]))


def reask_store(db_path: Path, clip: dict, reader, embedder, qa_cfg) -> list[dict]:
    """Every question the run asked of this store, asked again open over a copy of it: one row each."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "store.db"
        shutil.copy2(db_path, copy)
        with sqlite3.connect(copy) as db:
            asked = db.execute("SELECT q.text, q.options, q.asked_at FROM answers a JOIN questions q "
                               "ON q.id = a.question_id ORDER BY a.id").fetchall()
        store = Store.open(copy)
        rows = []
        for (text, _, at), q in zip(asked, match_questions(clip, asked)):
            if q is None or "of these" in text.lower():
                continue
            shown, reply = memories_and_reply(store, reader, text, [], at, qa_cfg, None, at, embedder)
            answered, right = graded(q, reply)
            rows.append({"category": q["category"], "question": text, "want": q["open_answer"],
                         "said": reply["text"], "reason": reply["reason"], "answered": answered, "right": right,
                         "held": answered and held_by(reply["text"], shown)})
        store.close()
    return rows


def totals(rows: list[dict]) -> dict:
    """Right, answered, precision and 95 % intervals, and the answers a memory shown holds (and how many of them
    are right), over all rows and per category."""
    def summary(rs):
        n, ans, ok = len(rs), sum(r["answered"] for r in rs), sum(r["right"] for r in rs)
        held = [r for r in rs if r["held"]]
        return {"right": ok, "answered": ans, "of": n, "acc": round(ok / max(1, n), 4), "acc_ci": wilson(ok, n),
                "prec": round(ok / max(1, ans), 4), "prec_ci": wilson(ok, ans),
                "held": len(held), "right_when_held": sum(r["right"] for r in held)}
    by_cat = defaultdict(list)
    for r in rows:
        by_cat[r["category"]].append(r)
    return {"all": summary(rows), "by_category": {c: summary(rs) for c, rs in sorted(by_cat.items())}}


def main(argv: list[str] | None = None) -> dict:
    from edge_agent.qa.embed import open_embedder
    from edge_agent.vlm.factory import open_reader

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--home", required=True, help="a tools/default_heldout.py --home folder (s<seed>/eval/...)")
    ap.add_argument("--out", required=True, help="JSON: totals and every row")
    args = ap.parse_args(argv)
    homes = sorted(p for p in Path(args.home).glob("s*") if p.is_dir())
    if not homes:
        raise SystemExit(f"reask_open: no s<seed> folders under --home {args.home}")
    with tempfile.TemporaryDirectory() as data:
        cfg = load_config(home=data, overrides={"model.n_threads": 1})
        reader, embedder = open_reader(cfg), open_embedder(cfg)
        rows = []
        for home in homes:
            db = sorted(home.glob("eval/runs/*/baseline/*.db"))[-1]
            clip = json.loads(next(home.glob("eval/data/*/questions.json")).read_text())
            rows += [{"seed": home.name, **r} for r in reask_store(db, clip, reader, embedder, cfg.qa)]
            print(home.name, totals(rows)["all"], flush=True)
    result = {"home": str(args.home), "qa": {k: v for k, v in vars(cfg.qa).items()}, **totals(rows), "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("all", "by_category")}, indent=1))
    return result


if __name__ == "__main__":
    main()
