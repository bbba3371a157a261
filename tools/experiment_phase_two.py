"""Does Phase Two work? Simulated wearers live synthetic days through the product's own CLI, then are evaluated.

    .venv/bin/python tools/experiment_phase_two.py run --out /tmp/ea_phase_two            # resumable
    .venv/bin/python tools/experiment_phase_two.py table --out /tmp/ea_phase_two          # markdown table

Each wearer has its own home and a task mix (A: mostly "where did I leave X", B: mostly people and what
they did). A day is a held-out synthetic clip (seeds DAY_SEEDS, never used to train or tune the default):
`edge-agent run` writes the memories; the wearer asks the day's questions drawn from its mix with `edge-agent
ask` (each restricted to the memories written by the question's time), gives `edge-agent feedback` by the
ground truth (`--wrong --answer <truth>` when wrong); `edge-agent adapt` runs after each day, as the device
would schedule it at night. Nothing goes around the CLI.

Then every wearer's final adapter and the baseline are scored on other held-out seeds (EVAL_SEEDS) with
`edge-agent eval --bench synthetic --compare baseline --compare <wearer>=<adapter>`: Acc/Cov/Prec per category
with 95 % intervals, memory bytes per minute, and how often memories mention each kind of fact. The learning
curve is the dominant category's Acc with the adapter each night activated, after 10, 30 and 100 feedback events
(`--questions-per-day 10,20,70`). Day clips offer DAY_QUESTIONS_PER_MINUTE questions a minute to draw from, so
the wearer's mix decides what is asked rather than the world's even spread.

`table` also grades the eval memories against each clip's truth (events.json, questions.json): objects named
right, wrong or where there is none; per question, whether the memories of its evidence segments hold the answer
(`answerable`), and for "where did I leave X" and "who did I meet" why not (`memory_cause`): what a steering vector
could change (the writer left a thing it saw out) and what it cannot (the writer saw it wrong). `run --snapshots`
keeps each home as `adapt` found it, for tools/phase_two_pairs.py.

Every step writes its result under --out and is skipped when present, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.eval.metrics import wilson_interval  # noqa: E402
from edge_agent.synth.truth import (CAUSES, FACT_WORDS, answerable, evidence_segments, memory_cause,  # noqa: E402
                                   match_questions, things)

DAY_SEEDS = [7100, 7101, 7102, 7103, 7104, 7105]  # wearers' days (held out from train_default.py's seeds)
EVAL_SEEDS = [7200, 7201, 7202, 7203]  # scoring only: never lived by a wearer
MIXES = {
    "A": {"object_location": 0.8},  # the rest spread over the other categories
    "B": {"person": 0.45, "activity_at_time": 0.35},
}
DOMINANT = {"A": "object_location", "B": "person"}


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"EDGE_AGENT_MODEL__N_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(home.parent)}
    proc = subprocess.run([sys.executable, "-m", "edge_agent.cli", *args, "--home", str(home)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=3600)
    if check and proc.returncode != 0:
        raise SystemExit(f"edge-agent {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
    return proc


def cached(path: Path, make):
    """JSON at `path`, computed once (the resume mechanism)."""
    if path.is_file():
        return json.loads(path.read_text())
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1))
    return value


DAY_QUESTIONS_PER_MINUTE = 20  # a wearer's day offers many questions, so its mix, not the world's, decides


def day_clip(out: Path, seed: int, minutes: float) -> Path:
    clip = out / "clips" / f"seed{seed}-{minutes:g}min-q{DAY_QUESTIONS_PER_MINUTE}"
    if not (clip / "questions.json").is_file():
        subprocess.run([sys.executable, "-m", "edge_agent.cli", "synth", "--seed", str(seed), "--minutes",
                        f"{minutes:g}", "--questions-per-minute", str(DAY_QUESTIONS_PER_MINUTE), "--out", str(clip)],
                       cwd=ROOT, check=True, capture_output=True)
    return clip


def questions_on(day: int, schedule: list[int]) -> int:
    """Questions asked on `day` (0-based): the schedule's entry, its last one repeating."""
    return schedule[min(day, len(schedule) - 1)]


def pick_questions(questions: list[dict], mix: dict[str, float], n: int, rng: random.Random) -> list[dict]:
    """n questions drawn by the wearer's category mix (without replacement while a category has any)."""
    by_cat: dict[str, list[dict]] = {}
    for q in questions:
        by_cat.setdefault(q["category"], []).append(q)
    rest = [c for c in by_cat if c not in mix]
    weights = dict(mix)
    for c in rest:
        weights[c] = (1 - sum(mix.values())) / max(len(rest), 1)
    chosen: list[dict] = []
    while len(chosen) < n and any(by_cat.values()):
        cats = [c for c in by_cat if by_cat[c] and weights.get(c, 0) > 0]
        if not cats:
            break
        c = rng.choices(cats, [weights[c] for c in cats])[0]
        chosen.append(by_cat[c].pop(rng.randrange(len(by_cat[c]))))
    return sorted(chosen, key=lambda q: q["asked_at"])


DAY_ONE_START = 1796461200  # 2026-12-05 09:00 UTC: each simulated day's clip starts at its own 09:00


def stream_origin(home: Path, n_before: int) -> float:
    """Absolute time of stream second 0 of the day just ingested: its memories' earliest start."""
    rows = json.loads(cli(home, "memories", "--json").stdout)
    new = sorted(rows, key=lambda r: r["id"])[n_before:]
    return min(r["t_start"] for r in new) if new else 0.0


def live_day(out: Path, wearer: str, day: int, seed: int, minutes: float, per_day: int,
             snapshot: bool = False) -> dict:
    home = out / f"wearer_{wearer}"
    clip = day_clip(out, seed, minutes)
    n_before = len(json.loads(cli(home, "memories", "--json", check=False).stdout or "[]"))
    t0 = time.perf_counter()
    # Day d starts at a fixed clock time: the answerer's prompt states clock times, so stamping a day from its
    # clip file's mtime (new each run) would change the prompts, and so some answers, from one run to the next.
    start = DAY_ONE_START + day * 86400
    ran = json.loads(cli(home, "run", str(clip / "video.mp4"), "--start", str(start), "--json").stdout)
    origin = stream_origin(home, n_before)
    qs = pick_questions(json.loads((clip / "questions.json").read_text())["questions"], MIXES[wearer], per_day,
                        random.Random(f"{wearer}-{day}"))
    asked = []
    for q in qs:
        opts = [f"{'ABCD'[i]}. {o}" for i, o in enumerate(q["options"])]
        args = ["ask", q["question"], "--until", f"{origin + q['asked_at']:.3f}", "--json"]
        for o in opts:
            args += ["-o", o]
        res = json.loads(cli(home, *args).stdout)
        right = res.get("choice") == q["answer"]
        fb = ["feedback", str(res["answer_id"]), "--correct"] if right else [
            "feedback", str(res["answer_id"]), "--wrong", "--answer", q["open_answer"]]
        cli(home, *fb)
        asked.append({"id": q["id"], "category": q["category"], "choice": res.get("choice"), "truth": q["answer"],
                      "right": right, "cited": len(res.get("citations", []))})
    if snapshot:  # the home as `adapt` finds it (it deletes the frames it used): tools/phase_two_pairs.py reads it
        shutil.copytree(home, out / "snapshots" / f"wearer_{wearer}_night{day}", dirs_exist_ok=True)
    adapt = json.loads(cli(home, "adapt", "--json", check=False).stdout or "{}")
    return {"wearer": wearer, "day": day, "seed": seed, "run": ran, "asked": asked, "adapt": adapt,
            "seconds": round(time.perf_counter() - t0, 1)}


def fact_rates(texts: list[str]) -> dict[str, float]:
    n = max(len(texts), 1)
    return {k: round(sum(bool(re.search(p, t, re.I)) for t in texts) / n, 3) for k, p in FACT_WORDS.items()}


def folder(config: str) -> str:
    """The folder `eval` keeps a config's stores in (edge_agent/eval/target.py names them so)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", config)[:80]


def memory_texts(run_dir: Path) -> dict[str, list[str]]:
    """Memory texts per config folder of one `eval` run (stores under <home>/eval/runs/<run>/<config>/)."""
    import sqlite3

    texts: dict[str, list[str]] = {}
    for db in sorted(run_dir.glob("*/*.db")):
        with sqlite3.connect(db) as conn:
            texts.setdefault(db.parent.name, []).extend(t for (t,) in conn.execute("SELECT text FROM memories"))
    return texts


def segment_memories(run_dir: Path, config: str) -> dict[int, str]:
    """segment index -> memory text written under `config` in one `eval` run."""
    import sqlite3

    written: dict[int, str] = {}
    for db in (run_dir / folder(config)).glob("*.db"):
        with sqlite3.connect(db) as conn:
            written.update(conn.execute("SELECT s.idx, m.text FROM memories m JOIN segments s ON s.id = m.segment_id"))
    return written


def mcnemar_p(only_before: int, only_after: int) -> float:
    """Exact two-sided McNemar p over the discordant cases: twice the one-sided binomial tail of the larger side."""
    from edge_agent.adapt.gate import p_value

    d = only_before + only_after
    return min(1.0, 2 * p_value(d, max(only_before, only_after) / d, 0.5)) if d else 1.0


def paired_mentions(rows: list[dict]) -> dict[str, dict[str, list]]:
    """Per adapter config, per kind of fact: memories of the same eval segments naming it without and with the
    adapter, [baseline, adapter, segments, exact two-sided McNemar p over the discordant segments]."""
    result: dict[str, dict[str, list]] = {}
    for run_dir in sorted({r["run_dir"] for r in rows if Path(r.get("run_dir", "")).is_dir()}):
        baseline = segment_memories(Path(run_dir), "baseline")
        for config in sorted({r["config"] for r in rows} - {"baseline"}):
            texts = segment_memories(Path(run_dir), config)
            counts = result.setdefault(config, {k: [0, 0, 0, 0] for k in FACT_WORDS})  # both, base, adapter, n
            for idx, base_text in baseline.items():
                if idx in texts:
                    for kind, pattern in FACT_WORDS.items():
                        b, a = (bool(re.search(pattern, t, re.I)) for t in (base_text, texts[idx]))
                        counts[kind][0] += b and a
                        counts[kind][1] += b and not a
                        counts[kind][2] += a and not b
                        counts[kind][3] += 1
    out: dict[str, dict[str, list]] = {}
    for config, kinds in result.items():
        out[config] = {}
        for kind, (both, base_only, adapter_only, n) in kinds.items():
            out[config][kind] = [both + base_only, both + adapter_only, n, mcnemar_p(base_only, adapter_only)]
    return out


def run_and_clip(out: Path, row: dict) -> tuple[Path, Path] | None:
    """An eval row's stores folder and the clip it scored (events.json and questions.json: the truth); None when
    either is gone."""
    run_dir, clip = Path(row.get("run_dir", "")), next((out / "eval_clips").glob(f"seed{row['seed']}-*"), None)
    if not run_dir.is_dir() or clip is None or not (clip / "questions.json").is_file():
        return None
    return run_dir, clip


def object_grades(out: Path, rows: list[dict]) -> dict[str, list[int]]:
    """Per config, the eval memories graded against the segment's true caption (the clip's events.json): of the
    segments whose caption holds an object, [the memory names it (colour and kind), names only other ones], and
    [segments with no object whose memory names one, segments]. A vector that makes the writer name more objects
    is only useful when they are the right ones."""
    grades: dict[str, list[int]] = {}
    for r in rows:
        if (found := run_and_clip(out, r)) is None:
            continue
        run_dir, clip = found
        captions = {s["index"]: s["caption"] for s in json.loads((clip / "events.json").read_text())["segments"]}
        g = grades.setdefault(r["config"], [0, 0, 0, 0, 0])  # has, right, wrong, invented, segments
        for idx, text in segment_memories(run_dir, r["config"]).items():
            truth, named = things(captions.get(idx, "")), things(text)
            g[4] += 1
            if truth:
                g[0] += 1
                g[1] += bool(truth & named)
                g[2] += bool(named) and not truth & named
            else:
                g[3] += bool(named)
    return grades


def graded_questions(out: Path, rows: list[dict]) -> list[dict]:
    """Every eval answer with what the memories behind it held, graded against the clip's truth (questions.json,
    events.json): config, seed, question id, category, right, answerable (see `answerable`) and, for object_location
    and person, its cause (see `memory_cause`)."""
    import sqlite3

    graded = []
    for r in rows:
        if (found := run_and_clip(out, r)) is None:
            continue
        run_dir, clip = found
        clip_info = json.loads((clip / "questions.json").read_text())
        captions = {c["index"]: c["caption"] for c in json.loads((clip / "events.json").read_text())["segments"]}
        memories = segment_memories(run_dir, r["config"])
        for db in (run_dir / folder(r["config"])).glob("*.db"):
            with sqlite3.connect(db) as conn:
                answered = conn.execute("SELECT q.text, q.options, q.asked_at, a.choice FROM answers a "
                                        "JOIN questions q ON q.id = a.question_id ORDER BY a.id").fetchall()
            for (*_, choice), q in zip(answered, match_questions(clip_info, [a[:3] for a in answered])):
                if q is None:
                    continue
                segments = evidence_segments(q, clip_info["segment_seconds"])
                said = " ".join(memories.get(i, "") for i in segments)
                truth = " ".join(captions.get(i, "") for i in segments)
                graded.append({"config": r["config"], "seed": r["seed"], "id": q["id"], "category": q["category"],
                               "right": choice == q["answer"], "answerable": answerable(q, said),
                               "cause": memory_cause(q, said, truth)})
    return graded


def answerable_rows(wearer: str, graded: list[dict]) -> list[str]:
    """Markdown rows: per config and category, questions whose memories hold the answer, Acc with and without,
    and for an adapter the change against the baseline on the same questions (exact McNemar)."""
    base = {(g["seed"], g["id"]): g["answerable"] for g in graded if g["config"] == "baseline"}
    lines = []
    for config in dict.fromkeys(g["config"] for g in graded):
        for cat in sorted({g["category"] for g in graded if g["answerable"] is not None}):
            gs = [g for g in graded if g["config"] == config and g["category"] == cat]
            held = [g for g in gs if g["answerable"]]
            rest = [g for g in gs if not g["answerable"]]
            paired = ""
            if config != "baseline":
                lost = sum(1 for g in gs if base.get((g["seed"], g["id"])) and not g["answerable"])
                won = sum(1 for g in gs if g["answerable"] and base.get((g["seed"], g["id"])) is False)
                paired = f"+{won} -{lost} (p={mcnemar_p(lost, won):.2g})"
            lines.append(f"| {wearer} | {config} | {cat} | {len(held)} of {len(gs)} | "
                         f"{sum(g['right'] for g in held)} / {len(held)} | {sum(g['right'] for g in rest)} / {len(rest)} "
                         f"| {paired} |")
    return lines


def nights(out: Path, wearer: str) -> list[tuple[int, str, str | None]]:
    """Per lived day, in order: (feedback events so far, the config live after that night, the adapter id that
    night activated or None). Configs are named by the feedback seen when activated; a refused night leaves the
    earlier adapter live, so the learning curve has a point after every night."""
    seen, live, result = 0, "baseline", []
    for path in sorted((out / f"wearer_{wearer}" / "days").glob("day*.json"), key=lambda p: int(p.stem[3:])):
        day = json.loads(path.read_text())
        seen += len(day["asked"])
        activated = day["adapt"]["adapter_id"] if day["adapt"].get("status") == "activated" else None
        if activated:
            live = f"{wearer}@{seen}fb"
        result.append((seen, live, activated))
    return result


def day_adapters(out: Path, wearer: str) -> list[tuple[str, str]]:
    """(config name, adapter id) of every adapter a day's `adapt` activated."""
    return [(live, activated) for _, live, activated in nights(out, wearer) if activated]


def eval_clip(out: Path, seed: int, minutes: float, questions_per_minute: float | None) -> list[str]:
    """`eval`'s data arguments: its own rendering of the seed, or (to ask more questions of the same minutes, which
    narrows the intervals at the same writing cost) a clip rendered here with `questions_per_minute`."""
    if questions_per_minute is None:
        return ["--seed", str(seed), "--minutes", f"{minutes:g}"]
    from edge_agent.synth import generate

    d = out / "eval_clips" / f"seed{seed}-{minutes:g}min-{questions_per_minute:g}qpm"
    if not (d / "questions.json").is_file():
        generate(seed=seed, minutes=minutes, out_dir=d, questions_per_minute=questions_per_minute)
    return ["--seed", str(seed), "--data", str(d)]


def evaluate(out: Path, wearer: str, minutes: float, n_seeds: int,
             questions_per_minute: float | None = None) -> list[dict]:
    """baseline vs each adapter this wearer's days activated (the learning curve), on every EVAL seed."""
    home = out / f"wearer_{wearer}"
    compare = ["--compare", "baseline"]
    for name, adapter_id in day_adapters(out, wearer):
        compare += ["--compare", f"{name}={adapter_id}"]
    results = []
    for seed in EVAL_SEEDS[:n_seeds]:
        res = json.loads(cli(home, "eval", "--bench", "synthetic", *eval_clip(out, seed, minutes, questions_per_minute),
                             *compare, "--json").stdout)
        run_dir = max((home / "eval" / "runs").iterdir(), key=lambda d: d.stat().st_mtime)
        texts = memory_texts(run_dir)
        results += [{**r, "seed": seed, "facts": fact_rates(texts.get(folder(r["config"]), [])),
                     "run_dir": str(run_dir)} for r in res]
    return results


def vectors(out: Path) -> dict:
    """What the vectors are: cosine between the wearers' last adapters, their provenance, and memories of the same
    eval windows written without and with each."""
    import numpy as np

    from edge_agent.vlm.steering import load_steering_vector

    info: dict = {"adapters": {}, "side_by_side": []}
    last = {}
    for wearer in MIXES:
        adapters = day_adapters(out, wearer)
        if not adapters:
            continue
        name, aid = adapters[-1]
        rows = json.loads(cli(out / f"wearer_{wearer}", "adapter", "list", "--json").stdout)
        row = next(r for r in rows if r["id"] == aid)
        vec = load_steering_vector(row["path"])
        last[wearer] = (name, vec)
        info["adapters"][wearer] = {"id": aid, "config": name, "norm": float(np.linalg.norm(vec.vector)),
                                    "pairs": len(row.get("pair_ids", [])),
                                    "feedback": len(row.get("feedback_ids", [])),
                                    "gate": (row.get("metrics") or {}).get("gate")}
    if len(last) == 2:
        a, b = last["A"][1].vector, last["B"][1].vector
        info["cosine_A_B"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))
        written = {}
        for wearer, (name, _) in last.items():
            evals = json.loads((out / f"wearer_{wearer}" / "eval.json").read_text())
            run_dir = Path(next(r["run_dir"] for r in evals if r["seed"] == EVAL_SEEDS[0]))
            for config in ("baseline", name):
                written[(wearer, config)] = segment_memories(run_dir, config)
        base = written.get(("A", "baseline"), {})
        for idx in sorted(base)[:6]:
            info["side_by_side"].append({"segment": idx, "baseline": base[idx],
                                         "A": written.get(("A", last["A"][0]), {}).get(idx),
                                         "B": written.get(("B", last["B"][0]), {}).get(idx)})
    return info


def run(args) -> None:
    out = Path(args.out)
    start = time.perf_counter()
    for wearer in args.wearers:
        home = out / f"wearer_{wearer}"
        if args.settings and not (home / "config.toml").is_file():  # the wearer's device settings, fixed at day 0
            home.mkdir(parents=True, exist_ok=True)
            (home / "config.toml").write_text(Path(args.settings).read_text())
        for day, seed in enumerate(DAY_SEEDS[:args.days]):
            day_result = cached(out / f"wearer_{wearer}" / "days" / f"day{day}.json",
                                lambda: live_day(out, wearer, day, seed, args.minutes,
                                                 questions_on(day, args.questions_per_day), args.snapshots))
            acc = sum(a["right"] for a in day_result["asked"]) / max(len(day_result["asked"]), 1)
            print(f"wearer {wearer} day {day} (seed {seed}): asked {len(day_result['asked'])}, right {acc:.0%}, "
                  f"adapt {day_result['adapt'].get('status')}: {day_result['adapt'].get('reason', '')}", flush=True)
        cached(out / f"wearer_{wearer}" / "eval.json", lambda: evaluate(out, wearer, args.eval_minutes, args.eval_seeds,
                                                                      args.eval_questions_per_minute))
    (out / "vectors.json").write_text(json.dumps(vectors(out), indent=1))
    print(f"done in {time.perf_counter() - start:.0f} s", flush=True)


def table(args) -> None:
    """Per wearer and config: Acc/Cov/Prec per category pooled over EVAL_SEEDS (Wilson 95 % intervals), memory
    bytes per minute, and the share of memories naming each kind of fact."""
    out = Path(args.out)
    print("| wearer | config | category | n | Acc % (95 % CI) | Cov % | Prec % |\n|---|---|---|---|---|---|---|")
    summary, curve_rows, paired_rows, grade_rows, cause_rows, answer_rows = [], [], [], [], [], []
    for wearer in args.wearers:
        path = out / f"wearer_{wearer}" / "eval.json"
        if not path.is_file():
            continue
        rows = json.loads(path.read_text())
        for r in rows:  # mention rates from the run's own stores (cheap; also fixes results cached before)
            if Path(r.get("run_dir", "")).is_dir():
                r["facts"] = fact_rates(memory_texts(Path(r["run_dir"])).get(folder(r["config"]), []))
        pooled: dict[tuple[str, str], list[int]] = {}
        for r in rows:
            for cat, sc in {**r["by_category"], "all": r}.items():
                k = pooled.setdefault((r["config"], cat), [0, 0, 0])
                k[0] += sc["n_questions"]
                k[1] += sc["n_answered"]
                k[2] += sc["n_correct"]
        for (config, cat), (n, answered, correct) in sorted(pooled.items()):
            lo, hi = wilson_interval(correct, n)
            prec = f"{100 * correct / answered:.1f}" if answered else "-"
            print(f"| {wearer} | {config} | {cat} | {n} | {100 * correct / max(n, 1):.1f} ({100 * lo:.0f}-"
                  f"{100 * hi:.0f}) | {100 * answered / max(n, 1):.1f} | {prec} |")
        for config, kinds in paired_mentions(rows).items():
            paired_rows.append(f"| {wearer} | {config} | " + " | ".join(
                f"{b} -> {a} of {n} (p={p:.2g})" for b, a, n, p in kinds.values()) + " |")
        for config, (has, right, wrong, invented, n) in object_grades(out, rows).items():
            grade_rows.append(f"| {wearer} | {config} | {right} of {has} | {wrong} of {has} | {invented} of {n - has} |")
        graded = graded_questions(out, rows)
        answer_rows += answerable_rows(wearer, graded)
        for config in dict.fromkeys(g["config"] for g in graded):
            for cat in ("object_location", "person"):
                gs = [g for g in graded if g["config"] == config and g["category"] == cat]
                cause_rows.append(f"| {wearer} | {config} | {cat} | " + " | ".join(
                    f"{sum(g['right'] for g in gs if g['cause'] == c)} / {sum(g['cause'] == c for g in gs)}"
                    for c in CAUSES) + " |")
        dominant = [(seen, live, pooled.get((live, DOMINANT[wearer]), [0, 0, 0]))
                     for seen, live, _ in nights(out, wearer)]
        curve_rows.append(f"| {wearer} ({DOMINANT[wearer]}) | " + " | ".join(
            f"{seen}: {live}, {c}/{n} ({100 * c / max(n, 1):.1f} %)" for seen, live, (n, _, c) in dominant) + " |")
        for config in dict.fromkeys(r["config"] for r in rows):
            rs = [r for r in rows if r["config"] == config]
            secs = sum(r["memory"]["video_seconds"] for r in rs)
            facts = {k: round(sum(r["facts"][k] * r["memory"]["n_memories"] for r in rs) /
                              max(sum(r["memory"]["n_memories"] for r in rs), 1), 3) for k in FACT_WORDS}
            summary.append((wearer, config, 60 * sum(r["memory"]["bytes"] for r in rs) / max(secs, 1), facts))
    print("\n| wearer | config | memory B/min | " + " | ".join(f"mentions {k}" for k in FACT_WORDS) + " |")
    print("|---|---|---|" + "---|" * len(FACT_WORDS))
    for wearer, config, bpm, facts in summary:
        print(f"| {wearer} | {config} | {bpm:.0f} | " + " | ".join(f"{100 * facts[k]:.0f} %" for k in FACT_WORDS) + " |")
    print("\n| wearer | adapter | " + " | ".join(f"segments naming {k}: baseline -> adapter (McNemar)" for k in FACT_WORDS)
          + " |\n|---|---|" + "---|" * len(FACT_WORDS))
    print("\n".join(paired_rows))
    print("\n| wearer | config | segments with an object: memory names it | names another | segments without one: "
          "memory names one |\n|---|---|---|---|---|")
    print("\n".join(grade_rows))
    print("\n| wearer | config | category | the evidence's memories hold the answer | right when they do | right when "
          "not | held vs baseline, same questions (McNemar) |\n|---|---|---|---|---|---|---|")
    print("\n".join(answer_rows))
    print("\n| wearer | config | category | right / asked when the evidence's memories hold the answer | name the "
          "object, not its place | left out: name another the captions name | misseen: only ones not there | name "
          "none |\n|---|---|---|---|---|---|---|---|")
    print("\n".join(cause_rows))
    print("\n| wearer (dominant category) | learning curve: feedback events so far: the config live, its Acc |\n|---|---|")
    print("\n".join(curve_rows))
    if (out / "vectors.json").is_file():
        print("\n```\n" + (out / "vectors.json").read_text() + "\n```")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run", "table"])
    p.add_argument("--out", default="/tmp/ea_phase_two", help="work folder (resumable)")
    p.add_argument("--wearers", nargs="+", default=["A", "B"], choices=sorted(MIXES))
    p.add_argument("--days", type=int, default=3, help="days lived per wearer (<= %d)" % len(DAY_SEEDS))
    p.add_argument("--minutes", type=float, default=10.0, help="length of each day's clip")
    p.add_argument("--questions-per-day", type=lambda v: [int(x) for x in v.split(",")], default=[10, 20, 70],
                   help="questions asked each day, comma-separated, the last repeating (10,20,70: adapters after "
                        "10, 30 and 100 feedback events, the learning curve)")
    p.add_argument("--eval-minutes", type=float, default=4.0)
    p.add_argument("--eval-questions-per-minute", type=float, default=None,
                   help="questions per minute of the eval clips (default: eval's own rendering, 3 a minute)")
    p.add_argument("--settings", help="a config.toml every wearer's home starts with (e.g. the Phase Two recipe)")
    p.add_argument("--snapshots", action="store_true",
                   help="copy each wearer's home before every night's adapt to <out>/snapshots/ (frames and all)")
    p.add_argument("--eval-seeds", type=int, default=len(EVAL_SEEDS), help="held-out seeds scored (<= %d)" % len(EVAL_SEEDS))
    args = p.parse_args()
    {"run": run, "table": table}[args.command](args)


if __name__ == "__main__":
    main()
