"""Questions generated from the synthetic world's event log, in the categories of the real benchmarks.

Every question carries `asked_at` (stream seconds) and `evidence` [t_start, t_end]. The rule that keeps them
fair to a memory written segment by segment: at `asked_at`, every segment holding the evidence has ended
(its end <= asked_at), and nothing after `asked_at` changes the answer (e.g. "where did I leave the red cup?"
is asked before the cup is picked up again; counts include only events in segments already ended).

Categories: object_location, event_order, counting, attribute, person, activity_at_time, text.
Each question is multiple choice (four options, one right, distractors drawn from the world) with the letter
of the right one in `answer` and the open-ended reference answer in `open_answer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from edge_agent.synth.world import ACTIVITIES, COLOURS, Script, Shot, World, doing, note_text, where

CATEGORIES = ("object_location", "event_order", "counting", "attribute", "person", "activity_at_time", "text")
LETTERS = "ABCD"
ACTIVITY_PAST = {
    "washing dishes": "washed dishes at the sink", "cooking": "cooked at the counter",
    "typing on the laptop": "typed on the laptop at the desk", "watching tv": "watched tv",
    "folding clothes": "folded clothes on the bed",
}


def clock(t: float) -> str:
    """Stream seconds as m:ss (h:mm:ss past an hour)."""
    s = int(round(t))
    h, m, sec = s // 3600, (s % 3600) // 60, s % 60
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def past(e: dict[str, Any]) -> str:
    """The event as a past-tense phrase without 'I': 'put the red cup on the shelf in the kitchen'."""
    if e["type"] == "activity":
        return f"{ACTIVITY_PAST[e['activity']]} in the {e['room']}"
    if e["type"] == "read_sign":
        return f"read the note that said \"{e['text']}\""
    return e["description"][2:].rstrip(".")


class _Asker:
    def __init__(self, world: World, script: Script, segment_seconds: float, rng: np.random.Generator) -> None:
        self.w, self.s, self.seg, self.rng = world, script, segment_seconds, rng
        self.events = script.events
        self.duration = script.duration

    # -- time rules ------------------------------------------------------------------------------------
    def seg_end(self, t: float) -> float:
        """End of the segment holding time t (the last segment ends with the clip)."""
        return min((math.floor(t / self.seg + 1e-9) + 1) * self.seg, self.duration)

    def settled(self, asked_at: float, times: list[float]) -> bool:
        """Every time before asked_at lies in a segment that has ended by asked_at."""
        return all(self.seg_end(t) <= asked_at + 1e-9 for t in times if t < asked_at)

    def when(self, lo: float, hi: float, ok: Callable[[float], bool] | None = None) -> float | None:
        """A random asked_at in [lo, hi] (0.1 s resolution) that satisfies `ok`, or None."""
        hi = min(hi, self.duration)
        for _ in range(12):
            if lo > hi + 1e-9:
                return None
            a = max(lo, min(hi, math.floor((lo + (hi - lo) * self.rng.random()) * 10) / 10))
            if ok is None or ok(a):
                return round(a, 3)
        return None

    def shot_at(self, t: float) -> Shot:
        return next(s for s in self.s.shots if s.t0 <= t < s.t1 or s is self.s.shots[-1])

    def choices(self, answer: str, pool: list[str]) -> list[str] | None:
        """The answer and three distinct distractors from `pool`, unshuffled; None if the pool is too small."""
        others = sorted({p for p in pool if p != answer})
        if len(others) < 3:
            return None
        pick = self.rng.choice(len(others), size=3, replace=False)
        return [answer] + [others[int(i)] for i in pick]

    def q(self, category: str, question: str, answer: str, pool: list[str], asked_at: float | None,
          evidence: tuple[float, float]) -> dict[str, Any] | None:
        if asked_at is None:
            return None
        options = self.choices(answer, pool)
        if options is None:
            return None
        return {"category": category, "question": question, "options": options, "open_answer": answer,
                # evidence: what had been seen by asked_at (a meeting may still go on when it is asked)
                "asked_at": asked_at, "evidence": [round(evidence[0], 3), round(min(evidence[1], asked_at), 3)]}

    def before(self, t: float, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events if e["t"] < t and (kind is None or e["type"] == kind)]

    # -- categories ------------------------------------------------------------------------------------
    def object_location(self) -> list[dict[str, Any]]:
        pool = [where(p.name, r.name) for r in self.w.rooms.values() for p in r.places.values()
                if p.surface_y is not None]
        out = []
        for e in self.events:
            if e["type"] != "put_down":
                continue
            nxt = next((f for f in self.events if f["type"] == "pick_up" and f["thing"] == e["thing"]
                        and f["t"] > e["t"]), None)
            shot = self.shot_at(e["t"])
            asked = self.when(self.seg_end(e["t"]), nxt["t"] if nxt else self.duration)
            out.append(self.q("object_location", f"Where did I leave the {e['thing']}?", where(e["to"], e["room"]),
                              pool, asked, (shot.t0, shot.t1)))
        return out

    def event_order(self) -> list[dict[str, Any]]:
        out = []
        for e in self.events:
            # "What did I do right after X?": X and its successor told apart by their phrases.
            i = e["id"]
            if i + 1 >= len(self.events):
                continue
            nxt = self.events[i + 1]
            asked = self.when(self.seg_end(nxt["t"]), self.duration)
            if asked is None:
                continue
            seen = [past(f) for f in self.before(asked)]
            if seen.count(past(e)) != 1 or past(nxt) == past(e):
                continue
            pool = [p for p in seen if p != past(e)]
            out.append(self.q("event_order", f"What did I do right after I {past(e)}?", past(nxt), pool, asked,
                              (e["t"], nxt["t_end"])))
        for first in (True, False):
            if not self.events:  # a clip too short for any event (e.g. 15 s) has no order to ask about
                break
            for _ in range(max(2, len(self.events) // 3)):
                asked = self.when(self.seg_end(self.events[min(3, len(self.events) - 1)]["t"]), self.duration)
                if asked is None:
                    break
                seen = self.before(asked)
                phrases = [past(f) for f in seen]
                unique = [f for f in seen if phrases.count(past(f)) == 1 and self.seg_end(f["t"]) <= asked]
                if len(unique) < 4:
                    continue
                pick = sorted(int(k) for k in self.rng.choice(len(unique), size=4, replace=False))
                chosen = [unique[k] for k in pick]
                right = chosen[0] if first else chosen[-1]
                word = "first" if first else "last"
                out.append(self.q("event_order", f"Which of these did I do {word}?", past(right),
                                  [past(f) for f in chosen], asked, (chosen[0]["t"], chosen[-1]["t_end"])))
        return out

    def counting(self) -> list[dict[str, Any]]:
        subjects: list[tuple[str, list[dict[str, Any]]]] = []
        for name in self.w.things:
            subjects.append((f"How many times did I pick up the {name}?",
                             [e for e in self.events if e["type"] == "pick_up" and e["thing"] == name]))
        for p in self.w.people:
            subjects.append((f"How many times did I meet {p.tag}?",
                             [e for e in self.events if e["type"] == "meet" and e["person"] == p.tag]))
        for room in self.w.rooms:
            subjects.append((f"How many times did I walk into the {room}?",
                             [e for e in self.events if e["type"] == "enter_room" and e["room"] == room]))
        subjects.append(("How many notes did I read?", [e for e in self.events if e["type"] == "read_sign"]))
        out = []
        for text, evs in subjects:
            if not evs:
                continue
            times = [e["t"] for e in evs]
            for _ in range(2):
                asked = self.when(self.seg_end(times[0]), self.duration, lambda a: self.settled(a, times))
                if asked is None:
                    continue
                counted = [e for e in evs if e["t"] < asked]
                c = len(counted)
                pool = [str(n) for n in range(max(0, c - 3), c + 5)]
                out.append(self.q("counting", text, str(c), pool, asked, (counted[0]["t"], counted[-1]["t_end"])))
        return out

    def attribute(self) -> list[dict[str, Any]]:
        colours = list(COLOURS)
        out = []
        for e in self.events:
            if e["type"] in ("put_down", "pick_up"):
                place = e["to"] if e["type"] == "put_down" else e["from"]
                verb = f"I put {where(place, e['room'])}" if e["type"] == "put_down" else \
                    f"I picked up from the {place} in the {e['room']}"
                asked = self.when(self.seg_end(e["t"]), self.duration)
                if asked is None:
                    continue
                same = {f["colour"] for f in self.before(asked, e["type"]) if f["object"] == e["object"]
                        and f["room"] == e["room"] and (f.get("to") or f.get("from")) == place}
                if same != {e["colour"]}:
                    continue  # two different-coloured objects of that kind went there: ambiguous
                shot = self.shot_at(e["t"])
                out.append(self.q("attribute", f"What colour was the {e['object']} {verb}?", e["colour"], colours,
                                  asked, (shot.t0, shot.t1)))
            elif e["type"] == "meet":
                person = next(p for p in self.w.people if p.tag == e["person"])
                asked = self.when(self.seg_end(e["t"]), self.duration)
                out.append(self.q("attribute", f"What colour was the shirt of {person.tag}?", person.shirt, colours,
                                  asked, (e["t"], e["t_end"])))
        return out

    def person(self) -> list[dict[str, Any]]:
        tags = [p.tag for p in self.w.people]
        out = []
        for e in self.events:
            if e["type"] != "meet":
                continue
            room = e["room"]
            later = [f for f in self.events if f["type"] == "meet" and f["room"] == room and f["t"] > e["t"]]
            hi = later[0]["t"] if later else self.duration
            meets = [f["t"] for f in self.events if f["type"] == "meet" and f["room"] == room]
            asked = self.when(self.seg_end(e["t"]), hi, lambda a: self.settled(a, meets))
            if asked is None:
                continue
            met = {f["person"] for f in self.before(asked, "meet") if f["room"] == room}
            text = f"Who did I meet in the {room}?" if len(met) == 1 else f"Who did I meet most recently in the {room}?"
            out.append(self.q("person", text, e["person"], tags, asked, (e["t"], e["t_end"])))
        return out

    def activity_at_time(self) -> list[dict[str, Any]]:
        pool = [s.describe(self.w) for s in self.s.shots if s.kind not in ("look", "walk_out", "walk_in")]
        pool += [doing(a, r) for a, (r, _) in ACTIVITIES.items()]
        out = []
        for s in self.s.shots:
            if s.kind not in ("activity", "meet", "sign", "pick", "put") or s.t1 - s.t0 < 2.5:
                continue
            t = float(round(s.t0 + (0.3 + 0.4 * self.rng.random()) * (s.t1 - s.t0)))
            if not (s.t0 + 0.5 <= t < s.t1 - 0.5):
                continue
            asked = self.when(self.seg_end(t), self.duration)
            out.append(self.q("activity_at_time", f"What was I doing at {clock(t)} into the recording?",
                              s.describe(self.w), pool, asked, (s.t0, s.t1)))
        return out

    def text(self) -> list[dict[str, Any]]:
        pool = list(self.s.notes) + [note_text(self.rng) for _ in range(6)]
        out = []
        for e in self.events:
            if e["type"] != "read_sign":
                continue
            here = [f for f in self.events if f["type"] == "read_sign" and f["room"] == e["room"]
                    and f["place"] == e["place"]]
            later = [f["t"] for f in here if f["t"] > e["t"]]
            asked = self.when(self.seg_end(e["t"]), later[0] if later else self.duration)
            if asked is None:
                continue
            first = here[0] is e
            text = (f"What did the note {where(e['place'], e['room'])} say?" if first else
                    f"What did the last note I read {where(e['place'], e['room'])} say?")
            out.append(self.q("text", text, e["text"], pool, asked, (e["t"], e["t_end"])))
        return out


def make_questions(world: World, script: Script, segment_seconds: float, rng: np.random.Generator,
                   n_questions: int) -> list[dict[str, Any]]:
    """About `n_questions` questions, spread evenly over the categories, ordered by the time they are asked."""
    asker = _Asker(world, script, segment_seconds, rng)
    pools: dict[str, list[dict[str, Any]]] = {}
    for cat in CATEGORIES:
        seen: set[tuple[str, str]] = set()
        cands = []
        for q in getattr(asker, cat)():
            if q is not None and (q["question"], q["open_answer"]) not in seen:
                seen.add((q["question"], q["open_answer"]))
                cands.append(q)
        order = rng.permutation(len(cands))
        pools[cat] = [cands[int(i)] for i in order]
    chosen: list[dict[str, Any]] = []
    while len(chosen) < n_questions and any(pools.values()):
        for cat in CATEGORIES:
            if pools[cat] and len(chosen) < n_questions:
                chosen.append(pools[cat].pop())
    for q in chosen:  # shuffle the options; the letter of the right one is the answer
        perm = [int(i) for i in rng.permutation(4)]
        q["options"] = [q["options"][i] for i in perm]
        q["answer"] = LETTERS[perm.index(0)]
    chosen.sort(key=lambda q: (q["asked_at"], q["category"], q["question"]))
    out = []
    for i, q in enumerate(chosen):
        out.append({"id": f"q{i:04d}", "category": q["category"], "question": q["question"],
                    "options": q["options"], "answer": q["answer"], "open_answer": q["open_answer"],
                    "asked_at": q["asked_at"], "evidence": q["evidence"]})
    return out
