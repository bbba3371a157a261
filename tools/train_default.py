"""Train the embedded default model (models/default/): a small Qwen3-VL trained on the synthetic world, in stages.

    .venv/bin/python tools/train_default.py stage answer        # one stage (resumes its own checkpoint)
    .venv/bin/python tools/train_default.py data                # render + cut the clips the vision stages use
    .venv/bin/python tools/train_default.py finalize            # last finished stage -> models/default/ + manifest
    .venv/bin/python tools/train_default.py reader --from-dir D # a text-only read stage -> models/default/reader.gguf
    .venv/bin/python tools/train_default.py reader --from-dir D --as judge   # ... -> models/default/judge.gguf
    .venv/bin/python tools/train_default.py widen --from-dir D --to-dir E --heads 6 --kv-heads 6   # more heads, same function
    .venv/bin/python tools/train_default.py own --own-clips 500   # the writer's own memories of fresh clips (--own-share)
    .venv/bin/python tools/train_default.py judge               # Phase Two's judge on held-out pairs, as adapt asks
    .venv/bin/python tools/train_default.py parity              # transformers vs llama.cpp logits, one prompt
    .venv/bin/python tools/train_default.py eval                # held-out metrics through llama.cpp (clips cut as
                                      # the --out folder's profile cuts them, unless --keyframes/--frame-size)
    .venv/bin/python tools/train_default.py read-dev --from-dir D   # dev multiple choice over ground-truth memories
    .venv/bin/python tools/train_default.py read-gt --dev-worlds 9000-9011   # ... retrieved as `ask` retrieves them
    .venv/bin/python tools/train_default.py pixels              # which caption words the writer takes from the frames
    .venv/bin/python tools/train_default.py hf-from-gguf --to-dir D # shipped reader.gguf -> an hf folder to train
    .venv/bin/python tools/train_default.py soup --from-dir D --with-dir E --weight 0.5 --to-dir F   # average two fine-tunes
    .venv/bin/python tools/train_default.py chain --keyframes 8 --extra-clips 3000 --threads 2 --out D   # the whole
                                      # recipe from a random start in about three hours (CHAIN), resumable -> folder D

Stages (each checkpoints weights, optimizer, RNG and data position to /tmp/edge_agent_default/<stage>.pt every
--save-minutes and resumes from there; each prints its own held-out probe while it trains):

  answer  text only: questions from fresh world seeds over ground-truth memories, in contrastive groups (the same
          question with the right option rotated through A-D, the evidence removed -> E, the open form -> short
          text); questions the memories cannot answer -> E; citations = the memories holding the evidence; judge
          rows (Phase Two's pairwise prompt, both orderings) mixed in. Loss weighted on answer and citation tokens.
  vision  vision tower only, training-only heads on the merger output (room, shot kind, focus object kind and
          colour, person present, activity) on keyframes cut by the runtime's capture path. Heads are dropped.
          The 200 clips hold ~1,100 keyframe pairs with an object: too few to separate the kinds; `--extra-clips
          800` (5x the clips) took the held-out kind 0.24 -> 0.64 (models/default/HISTORY.md, "What the writer sees").
  write   vision + text: the runtime's writer prompt, windows of 0-4 earlier segments whose memories are partly
          "(none)" or degraded, content tokens weighted up, replay of the read stage's rows; `--see-rows N` adds
          short rows that are all object (see_row); `--room-change-share F` draws that share of writer rows from
          segments that span two rooms (the shipped writer is such a stage averaged with the writer it started
          from: `soup`). Probes: teacher forced, greedy (as the device decodes), see rows.
  lookup  text only: recall rows (train_default.recall_row: facts at random, so only finding the one memory that
          holds the answer and copying it and its id answers them) as the memory lines and the question alone,
          2 memories growing to 2-8. The lookup forms here, on short cheap rows, and carries into the product's
          prompt (tools/reading_probe.py measured it apart).
  joint   (not in STAGES' order: give `--from-dir`) write, read and short lookup rows in every step, so
          no skill drifts while another is learnt. Probes: lookup, read and the writer decoded greedily.
  read    text only: open questions over 1-8 ground-truth memories (growing over the first half) -> the short
          answer + citations, or "not in memory"; replay of writer rows. What the likelihood answerer
          (qa.choice = "score", the default model's profile) uses to rank multiple-choice options. With
          `--write-replay 0` from the shipped weights it trains the separate reader (`reader`): on one small model
          every round of reading training cost the writer (models/default/HISTORY.md), so the reader is a copy.
          `--judge-pairs N` adds Phase Two's judge prompt; judging in turn cost reading, so a read stage run
          mostly on judge pairs (`--batch 2 --judge-pairs 10`) ships as a third copy, the judge (`reader --as judge`).
          `--own-share F` draws that share of the rows from the writer's own memories of fresh clips (`own`):
          answered where those memories hold the answer, "not in memory" where they do not (own_row).
          `--rank-questions N` adds N multiple-choice questions a step trained on the runtime's decision: the
          softmax over the options' mean log-probabilities against the right one (rank_step).

`--frame-size N` trains (and profiles) at keyframes of N px (capture.frame_size; the shipped model: 128), and
`--keyframes K` at K keyframes a segment (capture.keyframes_per_segment); the data cache is per size and count.

Every stage starts from the previous stage's weights (`--from-dir` overrides; the shipped read stage started from
the model shipped before it); the first from the shipped checkpoint (copied once to /tmp/edge_agent_default/base). Held-out seeds 9000-9999 are never trained or tuned on. Results and timings:
models/default/README.md and models/default/manifest.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.adapt.reward import JUDGE_SYSTEM, TaskQuestion, judge_messages  # noqa: E402,F401
from edge_agent.config import CaptureConfig  # noqa: E402
from edge_agent.errors import ConfigError  # noqa: E402
from edge_agent.eval.metrics import wilson_interval  # noqa: E402
from edge_agent.memory.prompts import writer_messages  # noqa: E402
from edge_agent.models import JUDGE_FILE, READER_FILE  # noqa: E402
from edge_agent.config import QAConfig  # noqa: E402
from edge_agent.qa.answer import (  # noqa: E402
    ANSWER_PREFIX, LETTERS, MEMORIES_CLOSE, MEMORIES_OPEN, NOT_IN_MEMORY, build_messages, reply_from_memories)
from edge_agent.synth import FORMAT_VERSION  # noqa: E402
from edge_agent.synth.truth import things  # noqa: E402
from edge_agent.synth.world import (  # noqa: E402
    ACTIVITIES, COLOURS, OBJECT_KINDS, PLACE_KINDS, ROOM_LAYOUTS, doing, note_text, where)
from edge_agent.types import Frame, ImagePart, Message, Segment  # noqa: E402
from edge_agent.vlm.prompt import PromptEncoder, image_tokens, pixel_inputs  # noqa: E402

OUT = ROOT / "models" / "default"
# data cache + checkpoints (not shipped); TRAIN_DEFAULT_WORK runs two candidates side by side (share data/ by a link)
WORK = Path(os.environ.get("TRAIN_DEFAULT_WORK", "/tmp/edge_agent_default"))
VIDEO_SEEDS = list(range(100, 300))  # rendered clips (vision + writing)
EXTRA_VIDEO_SEED0 = 10000  # --extra-clips N adds seeds 10000.. (never held out; rendering is ~0.5 s a clip)
TEXT_SEED0 = 20000  # text-only worlds: seeds 20000 + n, drawn without end
HELDOUT_SEEDS = list(range(9000, 9012))  # never trained on; probes and eval
DEV_SEEDS = list(range(8000, 8008))  # never trained on either: candidates are chosen here (`judge --dev`)
# fresh rendered clips the shipped writer writes its own memories of (`own`), for the reader's read rows over them
# (`--own-share`): never trained on by the writer, so its memories there are as wrong as on a wearer's day
OWN_SEED0 = 30000
MINUTES = 2.0
# Longest side of the keyframes the model is trained (and profiled) at; the shipped model: 128. At 256 the
# synthetic world's objects (20-30 px tall at 256x192) span 1-2 patches of 16 px instead of a quarter of a merged
# token: the vision probe's held-object kind rose 0.24 -> 0.48, but a 300-step write stage did not carry it into
# the memories (models/default/HISTORY.md, "Tried at 256 px"). Set by --frame-size.
FRAME_SIZE = 128
# Keyframes a segment is cut to for training (and profiled at; capture.keyframes_per_segment). At 4, an object
# picked or put in 2-3 s of a 10 s segment is often in one keyframe only, and its colour is then named about half
# the time (models/default/HISTORY.md, "A writer-only write stage on 3,200 clips"). Set by --keyframes.
KEYFRAMES = 4
STAGES = ("answer", "vision", "write", "lookup", "read")  # the order a stage's default --from-dir follows
# after the chain, from a model that has been through it (`--from-dir`): lookup, read and write rows in every step
EXTRA_STAGES = ("joint",)
GENERATOR_VERSION = "edge_agent.synth FORMAT_VERSION 2 (world.py/questions.py as of this recipe)"

# ---------------------------------------------------------------------------------------------------- worlds


def text_world(seed: int, minutes: float) -> dict:
    """A world's event log, captions and questions without rendering video (same RNG streams as synth.generate)."""
    from edge_agent.synth.questions import CATEGORIES, make_questions
    from edge_agent.synth.world import build_script, build_world, segment_captions

    rng = np.random.default_rng([seed, 0])
    world = build_world(rng)
    duration = round(float(minutes) * 60.0, 3)
    script = build_script(world, duration, rng)
    n_q = max(len(CATEGORIES), int(math.ceil(3.0 * float(minutes))))
    qs = make_questions(world, script, 10.0, np.random.default_rng([seed, 1]), n_q)
    return {"seed": seed, "segments": segment_captions(world, script, 10.0), "questions": qs, "world": world,
            "script": script}


def clip(seed: int, minutes: float = MINUTES) -> dict:
    """A rendered clip cut by the runtime's capture path: segments (keyframes + caption + frame labels)."""
    import pickle

    from edge_agent.capture import open_source, segment_stream
    from edge_agent.synth import generate

    k = "" if KEYFRAMES == 4 else f"-k{KEYFRAMES}"  # the 4-keyframe caches keep their names
    cache = WORK / "data" / f"v2-s{seed}-{minutes:g}-f{FRAME_SIZE}{k}-synth{FORMAT_VERSION}.pkl"
    if cache.is_file():
        return pickle.loads(cache.read_bytes())
    d = WORK / "synth" / f"s{seed}"
    paths = generate(seed=seed, minutes=minutes, out_dir=d)
    events = json.loads(paths.events.read_text())
    captions = {s["index"]: s["caption"] for s in events["segments"]}
    tw = text_world(seed, minutes)
    with open_source(str(paths.video)) as src:
        segs = list(segment_stream(src, CaptureConfig(frame_size=FRAME_SIZE, keyframes_per_segment=KEYFRAMES)))
    out = {"seed": seed, "segments": [
        {"index": s.index, "t_start": s.t_start, "t_end": s.t_end, "caption": captions[s.index],
         "frames": [f.image for f in s.keyframes], "frame_idx": [f.index for f in s.keyframes],
         "frame_t": [f.t for f in s.keyframes],
         "labels": [frame_label(tw["world"], tw["script"], f.t) for f in s.keyframes]}
        for s in segs if s.index in captions and s.keyframes],
        "questions": json.loads(paths.questions.read_text())["questions"]}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_bytes(pickle.dumps(out))
    tmp.replace(cache)
    shutil.rmtree(d, ignore_errors=True)
    return out


# vision head classes (index 0 = none where it applies)
SHOT_KINDS = ("look", "pick", "put", "walk_out", "walk_in", "meet", "sign", "activity")
ROOM_NAMES = ("kitchen", "office", "living room", "bedroom")
KINDS = ("none", "cup", "keys", "book", "phone", "bowl", "bottle")
COLOUR_NAMES = ("none", "red", "blue", "green", "yellow", "purple", "orange")
ACTS = ("none", "washing dishes", "cooking", "typing on the laptop", "watching tv", "folding clothes")
HEADS = {"room": len(ROOM_NAMES), "shot": len(SHOT_KINDS), "kind": len(KINDS), "colour": len(COLOUR_NAMES),
         "person": 2, "activity": len(ACTS)}


def frame_label(world, script, t: float) -> dict[str, int]:
    """What the frame at stream time t shows, from the script: the shot's room and kind, the object in focus
    (picked, put or carried), whether a person is in view, the activity."""
    shot = next((s for s in script.shots if s.t0 <= t < s.t1), script.shots[-1])
    thing = shot.thing if shot.kind in ("pick", "put") else shot.holding
    th = world.things.get(thing) if thing else None
    return {"room": ROOM_NAMES.index(shot.room), "shot": SHOT_KINDS.index(shot.kind),
            "kind": KINDS.index(th.kind) if th else 0, "colour": COLOUR_NAMES.index(th.colour) if th else 0,
            "person": int(shot.kind == "meet"), "activity": ACTS.index(shot.activity) if shot.activity else 0}


def as_segment(s: dict) -> Segment:
    return Segment(s["index"], s["t_start"], s["t_end"],
                   [Frame(i, t, im) for i, t, im in zip(s["frame_idx"], s["frame_t"], s["frames"])])


# ---------------------------------------------------------------------------------------------------- answers

_STOP = set("the a an on in at to of from with and i my me did was were into around that said it".split()) | {
    "put", "picked", "picking", "putting", "up", "took", "moved", "met", "read", "reading", "walked", "walking",
    "looked", "looking", "talking", "carrying", "washed", "washing", "cooked", "cooking", "typed", "typing",
    "watched", "watching", "folded", "folding", "note", "a"}


def content(text: str) -> set[str]:
    """Content words (4-letter stems; face tags whole, since "<face_1>" and "<face_2>" share a stem) of an
    answer or caption: what must be in a memory for it to tell."""
    return {w if w.startswith("<") else w[:4] for w in re.findall(r"[a-z0-9_<>]+", text.lower()) if w not in _STOP}


_COUNT = [(re.compile(r"pick up the (.+)\?$"), "the {} from"), (re.compile(r"meet (<face_\d+>)\?$"), "met {}"),
          (re.compile(r"walk into the (.+)\?$"), "walked into the {}"), (re.compile(r"notes did I read"), "read a note")]


def evidence(c: dict, q: dict) -> tuple[list[dict], bool]:
    """(segments that hold the evidence, whether the ground-truth memories tell the answer)."""
    segs = [s for s in c["segments"] if s["t_end"] <= q["asked_at"] + 1e-6]
    if q["category"] == "counting":
        for pat, fmt in _COUNT:
            m = pat.search(q["question"])
            if m:
                needle = fmt.format(*m.groups())
                holds = [s for s in segs if needle in s["caption"]]
                return holds, 0 < len(holds) <= 8 and str(len(holds)) == q["open_answer"]
        return [], False
    e0, e1 = q["evidence"]
    overlap = [s for s in segs if s["t_start"] < e1 + 1e-6 and e0 < s["t_end"]]
    want = content(q["open_answer"])
    holds = [s for s in overlap if content(s["caption"]) & want] or overlap
    if len(holds) > 6:
        holds = sorted(holds, key=lambda s: -len(content(s["caption"]) & want))[:6]
        holds.sort(key=lambda s: s["t_start"])
    told = set().union(*[content(s["caption"]) for s in holds]) if holds else set()
    return holds, bool(holds) and want <= told and "shirt" not in q["question"]


def show(c: dict, q: dict, rng: random.Random, holds: list[dict], remove: bool,
         n_shown: int | None = None, hard: bool = False) -> tuple[list[dict], dict]:
    """Memories for the prompt (store-like ids from a random offset) and the id of each segment; `n_shown`
    fixes how many are shown (the evidence first), else 2-8 at random. The others are drawn at random, or (`hard`)
    those that share the most content words with the question, as retrieval would bring them."""
    segs = [s for s in c["segments"] if s["t_end"] <= q["asked_at"] + 1e-6]
    first = rng.randint(1, 400)
    ids = {s["index"]: first + j for j, s in enumerate(segs)}

    def others(pool: list[dict], k: int) -> list[dict]:
        if not hard:
            return rng.sample(pool, min(len(pool), k))
        asked = content(q["question"])
        return sorted(pool, key=lambda s: (-len(content(s["caption"]) & asked), rng.random()))[:k]

    if remove:
        e0, e1 = q["evidence"]
        bad = {s["index"] for s in holds} | {s["index"] for s in segs if s["t_start"] < e1 and e0 < s["t_end"]}
        shown = others([s for s in segs if s["index"] not in bad], n_shown or rng.randint(2, 8))
    else:
        n = max(len(holds), n_shown or rng.choice([2, 3, 4, 5, 6, 8]))
        shown = list(holds) + others([s for s in segs if s not in holds], max(0, n - len(holds)))
    mems = [{"id": ids[s["index"]], "t_start": s["t_start"], "t_end": s["t_end"], "text": s["caption"]} for s in shown]
    return mems, ids


def reply(answer: str, cites: list[int]) -> str:
    return json.dumps({"answer": answer, "citations": sorted(cites)})


def qa_group(c: dict, q: dict, rng: random.Random, open_row: bool = True,
             e_row: bool = True) -> list[tuple[list[Message], str, str]]:
    """One question as a contrastive group: (messages, reply, kind) rows.

    The right option at each of A-D (same memories, the three distractors shuffled), the evidence removed -> E,
    and (open_row) the open question -> its short answer. When the memories do not tell the answer every row
    of the group is E / "not in memory", with no citations."""
    holds, told = evidence(c, q)
    mems, ids = show(c, q, rng, holds, remove=False)
    if not mems:
        return []
    right = q["options"][LETTERS.index(q["answer"])]
    wrong = [o for o in q["options"] if o != right]
    cites = [ids[s["index"]] for s in holds] if told else []
    rows = []
    for r in range(4):
        d = wrong[:]
        rng.shuffle(d)
        opts = d[:r] + [right] + d[r:]
        rows.append((build_messages(q["question"], opts, mems, q["asked_at"]),
                     reply(LETTERS[r] if told else "E", cites), "mc"))
    mems_e, _ = show(c, q, rng, holds, remove=True) if e_row else ([], {})
    if mems_e:
        d = q["options"][:]
        rng.shuffle(d)
        rows.append((build_messages(q["question"], d, mems_e, q["asked_at"]), reply("E", []), "mc_e"))
    if open_row:
        rows.append((build_messages(q["question"], [], mems, q["asked_at"]),
                     reply(q["open_answer"] if told else NOT_IN_MEMORY, cites), "open"))
    return rows


def read_row(c: dict, q: dict, rng: random.Random, n_shown: int,
             remove: bool, hard: bool = False) -> tuple[list[Message], str, str] | None:
    """One open question over `n_shown` memories -> its short answer and citations, or (evidence removed, or
    memories that do not tell) "not in memory". What the likelihood answerer scores: the options of a multiple
    choice question are candidate answers of this same prompt (`qa.choice = "score"`)."""
    holds, told = evidence(c, q)
    mems, ids = show(c, q, rng, holds, remove=remove, n_shown=n_shown, hard=hard)
    if not mems:
        return None
    if remove or not told:
        return build_messages(q["question"], [], mems, q["asked_at"]), reply(NOT_IN_MEMORY, []), "open"
    return (build_messages(q["question"], [], mems, q["asked_at"]),
            reply(q["open_answer"], [ids[s["index"]] for s in holds]), "open")


def rank_case(c: dict, q: dict, rng: random.Random, n_shown: int,
              hard: bool = False) -> tuple[list[Message], list[str], int] | None:
    """(open prompt over `n_shown` memories, the question's options, index of the right one) for a multiple-choice
    question whose memories tell the answer: what `rank_step` trains the likelihood answerer to rank."""
    if not q["options"]:
        return None
    holds, told = evidence(c, q)
    if not told:
        return None
    mems, _ = show(c, q, rng, holds, remove=False, n_shown=n_shown, hard=hard)
    if not mems:
        return None
    return build_messages(q["question"], [], mems, q["asked_at"]), list(q["options"]), LETTERS.index(q["answer"])


def own_row(c: dict, q: dict, rng: random.Random, n_shown: int,
            remove: bool) -> tuple[list[Message], str, str] | None:
    """`read_row` over the writer's own memories of a clip (`own`): the short answer and the evidence memories'
    ids where those memories hold it (its content words, as `evidence` asks of the true captions, and for "where
    did I leave X" the object X itself: `synth.truth.things`), else "not in memory", so that P("not in memory")
    learns how often memories like these miss what the question needs. Counting and event order (decided by a
    day of memories, not a few) are left to the ground-truth rows."""
    if q["category"] in ("counting", "event_order"):
        return None
    # the clip as its memories tell it
    remembered = {**c, "segments": [{**s, "caption": s["memory"]} for s in c["segments"] if s["memory"]]}
    true_holds, truth_tells = evidence(c, q)
    holds = [s for s in remembered["segments"] if s["index"] in {h["index"] for h in true_holds}]
    mems, ids = show(remembered, q, rng, holds, remove=remove, n_shown=n_shown)
    if not mems:
        return None
    msgs = build_messages(q["question"], [], mems, q["asked_at"])
    said = " ".join(s["caption"] for s in holds)
    tells = truth_tells and content(q["open_answer"]) <= content(said) and (
        q["category"] != "object_location" or things(q["question"]) <= things(said))
    if remove or not holds or not tells:
        return msgs, reply(NOT_IN_MEMORY, []), "open"
    return msgs, reply(q["open_answer"], [ids[s["index"]] for s in holds]), "open"


def written(be, c: dict, cfg, n_segments: int | None = None):
    """(segment, WriteResult) for the first `n_segments` of a clip, written as the runtime writes them: the
    runtime's MemoryWriter, which shows the cfg.window_segments - 1 segments before each and their memories."""
    from edge_agent.memory.writer import MemoryWriter, WindowEntry

    writer = MemoryWriter(be, cfg, stream_key=f"s{c['seed']}")
    window: list = []  # every segment so far: the writer keeps its window's share of them
    for s in c["segments"][:n_segments]:
        seg = as_segment(s)
        r = writer.write(window, seg)
        yield s, r
        window.append(WindowEntry(seg, r.text))


def folder_config(out: Path):
    """The runtime's config for the model folder `out`: its manifest's profile over the built-in defaults (an
    EDGE_AGENT_* variable still wins, as in the runtime), without changing this process's environment."""
    from edge_agent.config import load_config

    return load_config(environ={"EDGE_AGENT_MODEL__NAME": str(out.resolve()), **os.environ})


def write_own(args) -> None:
    """`own`: the writer of the model folder (`--out`) writes its own memories of `--own-clips` fresh clips
    (seeds OWN_SEED0..), as the runtime does (the folder profile's window, retries), -> WORK/own/s<seed>.json:
    each segment's true caption and memory (null where no valid one came), and the clip's questions. Resumes by
    file."""
    from rich.progress import Progress

    out = WORK / "own"
    out.mkdir(parents=True, exist_ok=True)
    wcfg = folder_config(args.out).writer
    with open_default(args.out) as be, Progress() as bar:
        task = bar.add_task("own memories", total=args.own_clips)
        for seed in range(OWN_SEED0, OWN_SEED0 + args.own_clips):
            f = out / f"s{seed}.json"
            if not f.is_file():
                c = clip(seed)
                segs = [{k: s[k] for k in ("index", "t_start", "t_end", "caption")} | {"memory": r.text}
                        for s, r in written(be, c, wcfg)]
                tmp = f.with_suffix(".tmp")
                tmp.write_text(json.dumps({"seed": seed, "segments": segs, "questions": c["questions"]}))
                tmp.replace(f)
            bar.advance(task)


def own_clips() -> list[dict]:
    files = sorted((WORK / "own").glob("s*.json"))
    if not files:
        raise SystemExit(f"--own-share needs the writer's own memories: run `tools/train_default.py own` first "
                         f"(none in {WORK / 'own'})")
    return [json.loads(f.read_text()) for f in files]


RECALL_KINDS = ["object", "object", "person", "note", "activity"]  # `--recall-colour` adds two "colour" ones


def recall_row(rng: random.Random, n_shown: int, remove: bool = False) -> tuple[list[Message], str, str]:
    """An open question over `n_shown` memories assembled at random from the world's own sentences (objects put
    somewhere, people met in a room, notes read), each fact's key unique among them: no prior over worlds can
    answer it, only finding the one memory that holds it and copying its answer and id. The read stage mixes
    these in because on world questions alone the model learnt each category's most frequent answer and a
    constant citation, even over 2 memories, and never began to read (`--recall-share`; tools/reading_probe.py
    trains them alone). With `--recall-colour` they also ask the world's attribute question ("What colour was the
    book I put on the sofa in the living room?"), which the shipped reader answers by the option's token count."""
    rooms = list(ROOM_LAYOUTS)
    facts, used, object_spots, colour_spots = [], set(), set(), set()
    nrng = np.random.default_rng(rng.randrange(2**32))
    while len(facts) < n_shown:
        kind = rng.choice(RECALL_KINDS)
        room = rng.choice(rooms)
        places = [p for p in ROOM_LAYOUTS[room]["places"] if PLACE_KINDS[p][1] is not None]  # a surface to put on
        if kind == "object":
            colour, obj, place = rng.choice(list(COLOURS)), rng.choice(OBJECT_KINDS), rng.choice(places)
            thing, at = f"{colour} {obj}", where(place, room)
            if (obj, place, room) in colour_spots:  # a colour question about that spot would become ambiguous
                continue
            object_spots.add((obj, place, room))
            key, fact = ("object", thing), (f"I put the {thing} {at}.", f"Where did I leave the {thing}?", at)
        elif kind == "colour":  # the world's attribute question: bind the colour to the object named with its place
            colour, obj, place = rng.choice(list(COLOURS)), rng.choice(OBJECT_KINDS), rng.choice(places)
            if (obj, place, room) in object_spots | colour_spots:  # another object of that kind there: ambiguous
                continue
            colour_spots.add((obj, place, room))
            if rng.random() < 0.5:
                said, verb = f"I put the {colour} {obj} {where(place, room)}.", f"I put {where(place, room)}"
            else:
                said = f"I picked up the {colour} {obj} from the {place} in the {room}."
                verb = f"I picked up from the {place} in the {room}"
            key, fact = ("colour", obj), (said, f"What colour was the {obj} {verb}?", colour)
        elif kind == "person":
            face = f"<face_{rng.randint(1, 6)}>"
            key, fact = ("person", room), (f"I met {face} in the {room}.", f"Who did I meet in the {room}?", face)
        elif kind == "note":
            text = note_text(nrng)
            key, fact = ("note", room), (f'I read a note at the door in the {room} that said "{text}".',
                                         f"What did the note at the door in the {room} say?", text)
        else:
            act = rng.choice(list(ACTIVITIES))
            key, fact = ("activity", len(facts)), (f"I was {doing(act, ACTIVITIES[act][0])}.", None, None)
        if key not in used:
            used.add(key)
            facts.append(fact)
    asked = [i for i, f in enumerate(facts) if f[1]]
    if not asked:
        return recall_row(rng, n_shown, remove)
    target = rng.choice(asked)
    first, t = rng.randint(1, 400), 0.0
    mems = []
    for i, (sentence, _, _) in enumerate(facts):
        t += 10.0 * rng.randint(1, 4)
        mems.append({"id": first + i, "t_start": t, "t_end": t + 10.0, "text": sentence})
    question, answer = facts[target][1], facts[target][2]
    if remove:
        mems.pop(target)
        return build_messages(question, [], mems, t + 15.0), reply(NOT_IN_MEMORY, []), "open"
    return build_messages(question, [], mems, t + 15.0), reply(answer, [first + target]), "open"


def reply_exact(model, tok, prompt_ids: list[int], reply_ids: list[int], device) -> tuple[bool, bool]:
    """(answer right, citations right), each token for token under teacher forcing (arg-max at every token). The
    answer is the reply's tokens that start before its answer value ends; the rest are the citations."""
    import torch

    x = torch.tensor([prompt_ids + reply_ids], device=device)
    with torch.no_grad():
        pred = model(input_ids=x).logits[0, len(prompt_ids) - 1:-1].argmax(-1).tolist()
    ok = [a == b for a, b in zip(pred, reply_ids)]
    text = tok.decode(reply_ids)
    end = text.index('", "citations"')
    n_ans = sum(a < end for a, _ in tok.encode(text, add_special_tokens=False).offsets)
    return all(ok[:n_ans]), all(ok[n_ans:])


def probe_recall(model, tok, penc, device, n: int = 24) -> dict:
    """Fresh recall rows (2-6 memories, fixed seed): the share whose answer and whose citation the model
    reproduces token for token under teacher forcing (arg-max at every token). Near 0 means it does not read: the
    shipped shape learns to copy in minutes, so what is missing is the lookup (tools/reading_probe.py tells them
    apart)."""
    rng = random.Random(99)
    ans = cite = 0
    model.eval()
    for _ in range(n):
        msgs, rep, _ = recall_row(rng, rng.randint(2, 6))
        e = penc.encode(msgs, rep)
        a, c = reply_exact(model, tok, e.ids[:e.n_prompt], e.ids[e.n_prompt:], device)
        ans += a
        cite += c
    model.train()
    return {"n": n, "answer_exact": round(ans / n, 3), "citation_exact": round(cite / n, 3)}


def lookup_row(tok, penc, rng: random.Random, top: int, fmt: str) -> tuple[list[int], list[int]]:
    """(prompt ids, reply ids) of one recall row over 2-`top` memories; 1 in 5 has its evidence removed (reply "not
    in memory"). `fmt` "product" is the runtime's prompt (~500 tokens, ~300 of them the system message); "short" is
    the memory lines and the question alone (~120 tokens at 2 memories, ~4x cheaper a step), where the lookup
    forms first."""
    msgs, rep, _ = recall_row(rng, rng.randint(2, top), remove=rng.random() < 0.2)
    if fmt == "product":
        e = penc.encode(msgs, rep)
        return e.ids[:e.n_prompt], e.ids[e.n_prompt:]
    user = msgs[1].parts[0]
    lines = user.split(MEMORIES_OPEN + "\n")[1].split("\n" + MEMORIES_CLOSE)[0]
    question = next(line for line in user.splitlines() if line.startswith("Question:"))
    return tok.encode(lines + "\n" + question + "\n").ids, tok.encode(rep).ids


def padded(rows, pad: int, device):
    """(prompt ids, reply ids) rows -> token ids, padded, and a 0/1 weight on every reply token."""
    import torch

    width = max(len(p) + len(r) for p, r in rows)
    x = torch.full((len(rows), width), pad, device=device)
    w = torch.zeros(len(rows), width, device=device)
    for i, (p, r) in enumerate(rows):
        x[i, :len(p) + len(r)] = torch.tensor(p + r, device=device)
        w[i, len(p):len(p) + len(r)] = 1
    return x, w


def ids_step(model, x, w) -> float:
    """Backward of the loss over token ids `x`, each target token weighted by `w` (0/1: reply tokens only);
    returns the loss."""
    import torch

    logits = model(input_ids=x).logits[:, :-1]
    per_token = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                  reduction="none")
    loss = (per_token * w[:, 1:].reshape(-1)).sum() / w[:, 1:].sum()
    loss.backward()
    return loss.item()


def probe_lookup(model, tok, penc, top: int, fmt: str, device, n: int = 60) -> dict:
    """On held-out recall rows (fixed seed) whose evidence is shown: the share whose answer, and whose citation,
    the model gets right token for token (arg-max under teacher forcing). A guess from the prior rarely gets a
    whole place or note text, and never the id."""
    rng = random.Random(99)
    answer = cited = shown = 0
    model.eval()
    for _ in range(n):
        p, r = lookup_row(tok, penc, rng, top, fmt)
        if NOT_IN_MEMORY in tok.decode(r):
            continue
        a, c = reply_exact(model, tok, p, r, device)
        shown += 1
        answer += a
        cited += c
    model.train()
    return {"rows": shown, "answer_exact": round(answer / shown, 3), "citation_exact": round(cited / shown, 3)}


# ---------------------------------------------------------------------------------------------------- judge


def degrade(caption: str, rng: random.Random, c: dict) -> str:
    """A worse memory of the same moment: another segment's caption, a generic line, a fact swapped, or a
    sentence dropped."""
    k = rng.randrange(4)
    sents = re.findall(r"[^.]+\.", caption)
    if k == 0:
        others = [s["caption"] for s in c["segments"] if s["caption"] != caption]
        if others:
            return rng.choice(others)
    if k == 1 and len(sents) == 2:
        return sents[rng.randrange(2)].strip()
    if k == 2:
        for group in (COLOUR_NAMES[1:], KINDS[1:], ROOM_NAMES):
            hit = [w for w in group if w in caption]
            if hit:
                return caption.replace(hit[0], rng.choice([w for w in group if w != hit[0]]))
    room = next((r for r in ROOM_NAMES if r in caption), rng.choice(ROOM_NAMES))
    return rng.choice([f"I looked around the {room}.", f"I was in the {room}.", "I was walking."])


JUDGE_SAME_MOMENT = [0.0]  # share of judge cases that are two true memories of one moment (`--judge-same-moment`)
JUDGE_SWAPPED = [0.0]  # share that are a memory and its copy with the listed answer's fact swapped (`--judge-swapped`)


def moment_variants(c: dict) -> dict[int, list[str]]:
    """Segment index -> the other true captions of that moment: the same cap filled with other facts first (as the
    writer's sampled candidates differ), one per `VARIANT_DROP` set. Cached on the world."""
    if "_variants" not in c:
        out: dict[int, list[str]] = {}
        base = {s["index"]: s["caption"] for s in c["segments"]}
        for drop in VARIANT_DROP[1:]:
            for i, caption in captions_without(c, drop).items():
                b = base.get(i)
                if b and caption != b and "looked around" not in caption:
                    out.setdefault(i, []).append(caption)
        c["_variants"] = out
    return c["_variants"]


def same_moment_case(c: dict, rng: random.Random) -> tuple[list[TaskQuestion], str, str] | None:
    """Two true memories of one moment that keep different facts; the better is the one holding the answer to
    listed questions the other cannot answer (each listed with its answer, as a wearer's correction is, so the
    verdict can be read from the prompt)."""
    variants = moment_variants(c)
    if not variants:
        return None
    i = rng.choice(sorted(variants))
    one = next(s["caption"] for s in c["segments"] if s["index"] == i)
    other = rng.choice(variants[i])
    pair = [one, other]
    rng.shuffle(pair)
    good, bad = pair
    answers = [q for q in c["questions"] if content(q["open_answer"]) and content(q["open_answer"]) <= content(good)
               and not content(q["open_answer"]) <= content(bad)]
    if not answers:
        return None
    shown = rng.sample(answers, min(len(answers), rng.randint(1, 2)))
    others = [q for q in c["questions"] if q not in shown]
    listed = [TaskQuestion(f"{q['question']} Answer: {q['open_answer']}", 1.0) for q in shown]
    listed += [TaskQuestion(q["question"], 1.0) for q in rng.sample(others, min(len(others), rng.randint(0, 5)))]
    rng.shuffle(listed)
    return listed, good, bad


# What the writer's sampled candidates of one moment swap (clip 9003's, in the CLI loop): who, which note, where,
# which colour or kind, which room; multi-word names first, so "coffee table" is swapped whole.
SWAPPABLE = [sorted(PLACE_KINDS, key=len, reverse=True), list(COLOUR_NAMES[1:]), list(KINDS[1:]), list(ROOM_NAMES)]


def swap_fact(caption: str, answer: str, rng: random.Random) -> str | None:
    """`caption` with the fact `answer` gives (a face, a note's text, a place, colour, kind or room) swapped for
    another of its kind, or None when the caption does not hold it."""
    face = re.search(r"<face_\d+>", answer)
    if face:
        if face[0] not in caption:
            return None
        return caption.replace(face[0], rng.choice([f"<face_{i}>" for i in range(1, 6) if f"<face_{i}>" != face[0]]))
    note = re.search(r'"([^"]+)"', caption)
    if note and note[1] in answer:
        return caption.replace(note[1], note_text(np.random.default_rng(rng.randrange(1 << 30))))
    for names in SWAPPABLE:
        for name in names:
            word = r"(?<![a-z])" + re.escape(name) + r"(?![a-z])"
            if re.search(word, answer) and re.search(word, caption):
                return re.sub(word, rng.choice([n for n in names if n != name]), caption)
    return None


def swapped_case(c: dict, rng: random.Random) -> tuple[list[TaskQuestion], str, str] | None:
    """A true memory against a copy with one fact swapped, the listed question whose answer (listed with it, as a
    wearer's correction is) holds that fact: only the prompt's answer tells them apart, as for the writer's
    candidates that name different people, notes or places for one moment."""
    q = rng.choice(c["questions"])
    want = content(q["open_answer"])
    holds = [s["caption"] for s in c["segments"] if want and want <= content(s["caption"])]
    if not holds or q["category"] == "counting" or "shirt" in q["question"]:  # no memory tells a shirt (evidence)
        return None
    good = rng.choice(holds)
    bad = swap_fact(good, q["open_answer"], rng)
    # a swap that lands on another true memory (the keys went from the counter to the sink once, to the table later)
    # is no worse memory
    if bad is None or bad == good or want <= content(bad) or bad in {s["caption"] for s in c["segments"]}:
        return None
    others = [o for o in c["questions"] if o is not q]
    listed = [TaskQuestion(f"{q['question']} Answer: {q['open_answer']}", 1.0)]
    listed += [TaskQuestion(o["question"], 1.0) for o in rng.sample(others, min(len(others), rng.randint(0, 5)))]
    rng.shuffle(listed)
    return listed, good, bad


def judge_case(c: dict, rng: random.Random) -> tuple[list[TaskQuestion], str, str] | None:
    """Questions, the better memory and a worse one (the same memory: a tie), or None when no listed question
    tells them apart.

    Ground truth from the log: the questions listed include ones the true caption answers (their answer's
    content words are in it and not in the worse memory); some listed questions are unrelated, as in a real
    deployment's task distribution. Rarely the same memory twice -> tie. A `JUDGE_SAME_MOMENT` share are
    `same_moment_case`s instead, a `JUDGE_SWAPPED` share `swapped_case`s."""
    special = JUDGE_SAME_MOMENT[0] + JUDGE_SWAPPED[0]
    if special:  # (draws nothing when both are 0: the cases of earlier runs stay what they were)
        r = rng.random()
        if r < JUDGE_SAME_MOMENT[0]:
            return same_moment_case(c, rng)
        if r < special:
            return swapped_case(c, rng)
    qs = [q for q in c["questions"]]
    if not qs:
        return None
    s = rng.choice(c["segments"])
    good = s["caption"]
    useful = [q for q in qs if content(q["open_answer"]) and content(q["open_answer"]) <= content(good)]
    if rng.random() < 0.06:
        bad = good
    else:
        bad = degrade(good, rng, c)
        useful = [q for q in useful if not content(q["open_answer"]) <= content(bad)]
        if not useful or bad == good:
            return None
    shown = rng.sample(useful, min(len(useful), rng.randint(1, 3))) if useful else []
    others = [q for q in qs if q not in shown]
    shown += rng.sample(others, min(len(others), rng.randint(0, 8 - len(shown) - 1) if len(shown) < 8 else 0))
    rng.shuffle(shown)
    tq = [TaskQuestion(q["question"] + (f" Answer: {q['open_answer']}" if rng.random() < 0.3 else ""), 1.0)
          for q in shown]
    return tq, good, bad


def judge_pair(c: dict, rng: random.Random) -> list[tuple[list[Message], str, str]]:
    """Phase Two's judge prompt on a `judge_case`, both orderings (A = better, then B = better); one row for a tie."""
    case = judge_case(c, rng)
    if case is None:
        return []
    tq, good, bad = case
    if bad == good:
        return [(judge_messages(tq, good, bad), json.dumps({"better": "tie"}), "judge")]
    return [(judge_messages(tq, good, bad), json.dumps({"better": "A"}), "judge"),
            (judge_messages(tq, bad, good), json.dumps({"better": "B"}), "judge")]


# ---------------------------------------------------------------------------------------------------- writer

CONTENT_WORDS = sorted({*COLOUR_NAMES[1:], *KINDS[1:], *ROOM_NAMES, *ACTS[1:], "shelf", "table", "counter", "sink",
                        "desk", "bed", "sofa", "fridge", "door", "tv", "whiteboard", "nightstand", "dresser",
                        "moved", "took", "picked", "put", "met", "talking", "read", "note", "walked", "looked",
                        "carrying"}, key=len, reverse=True)


# which facts a clip's training captions keep first: by seed, one kind of event is dropped from the candidates
# of segments that have more facts than the 2-sentence cap keeps (so the caption stays as long and true)
VARIANT_DROP = ({}, {"pick_up", "put_down"}, {"meet", "read_sign"}, {"activity", "enter_room"})


def captions_without(c: dict, drop: set[str]) -> dict[int, str]:
    """Segment index -> the caption of world `c` when its script has no event of the types in `drop` (the same
    cap filled with other true facts first)."""

    from edge_agent.synth.world import segment_captions

    script = dataclasses.replace(c["script"], events=[e for e in c["script"].events if e["type"] not in drop])
    return {s["index"]: s["caption"] for s in segment_captions(c["world"], script, 10.0)}


def caption_variants(seed: int, minutes: float = MINUTES) -> dict[int, str]:
    """Segment index -> the clip's training caption: the world's own caption, or for 3 of 4 seeds (by seed) the
    same cap filled with other facts first (objects, people/text, or activity/rooms dropped where another true
    fact can take their place). Each variant is still a true description of the segment."""
    tw = text_world(seed, minutes)
    base = {s["index"]: s["caption"] for s in tw["segments"]}
    drop = VARIANT_DROP[seed % len(VARIANT_DROP)]
    if not drop:
        return base
    out = dict(base)
    for i, caption in captions_without(tw, drop).items():
        b = base.get(i)
        if b and caption != b and caption.count(".") >= b.count(".") and "looked around" not in caption and \
                "carrying" not in caption:
            out[i] = caption
    return out


def each_sentence_once(caption: str) -> str:
    """The caption without repeated sentences. The world captions one sentence per event, and an activity cut
    into two events in one segment reads "I was watching tv in the living room." twice (1.5 % of training
    captions): a memory the runtime's validator refuses, which the writer must not learn to write."""
    sentences = [x.strip() for x in re.findall(r"[^.]+\.", caption)]
    return " ".join(dict.fromkeys(sentences)) if sentences else caption


def room_change_segments(clips: list[dict]) -> list[tuple[int, int]]:
    """(clip, segment) positions whose keyframes show two rooms (the wearer walked from one to the other): a
    quarter of the segments, and where most of the writer's room misses are (which facts of a busy segment the
    memory keeps: the walk or the other two). `--room-change-share` draws that share of writer rows from them."""
    return [(j, i) for j, c in enumerate(clips) for i, s in enumerate(c["segments"])
            if len({lab["room"] for lab in s["labels"]}) > 1]


def writer_example(c: dict, i: int, k: int, rng: random.Random,
                   captions: dict[int, str] | None = None) -> tuple[list[Message], str, str]:
    """Segment i with its k earlier segments; each earlier memory is the truth (70 %), "(none)" (15 %) or a
    degraded one (15 %), so the model learns to describe the new frames, not to copy the previous memory.
    `captions` (caption_variants) replaces the target caption. Memories and target say each sentence once."""
    segs = c["segments"]
    ctx = []
    for s in segs[max(0, i - k):i]:
        r = rng.random()
        mem = s["caption"] if r < 0.7 else (None if r < 0.85 else degrade(s["caption"], rng, c))
        ctx.append((as_segment(s), mem and each_sentence_once(mem)))
    msgs = writer_messages(f"s{c['seed']}", ctx, as_segment(segs[i]))
    target = (captions or {}).get(segs[i]["index"], segs[i]["caption"])
    return msgs, json.dumps({"description": each_sentence_once(target)}), "write"


SEE_SYSTEM = "You see through the wearer's camera."
SEE_QUESTION = "\nWhat did I pick up, put down or carry?"


def see_row(c: dict, rng: random.Random) -> tuple[list[Message], str, str] | None:
    """One segment's keyframes alone -> the object the wearer picks, puts or carries in them ("the orange bottle")
    or "nothing": a short reply that is all object and colour, so the gradient that ties those words to the image
    tokens is not diluted by a caption's other 40 tokens. 3 in 4 rows have an object (the rest "nothing")."""
    want_object = rng.random() < 0.75
    for _ in range(20):
        s = rng.choice(c["segments"])
        seen = [(lab["colour"], lab["kind"]) for lab in s["labels"] if lab["kind"]]
        if bool(seen) == want_object:
            break
    else:
        return None
    reply = "nothing"
    if seen:
        colour, kind = max(set(seen), key=seen.count)
        reply = f"the {COLOUR_NAMES[colour]} {KINDS[kind]}"
    seg = as_segment(s)
    parts = [ImagePart(f"see-{c['seed']}-{s['index']}-{i}", f.image) for i, f in enumerate(seg.keyframes)]
    return [Message("system", [SEE_SYSTEM]), Message("user", parts + [SEE_QUESTION])], reply, "see"


# ---------------------------------------------------------------------------------------------------- tokens


def tokenizer_from(hf_dir: Path):
    """(tokenizers.Tokenizer, PromptEncoder) of a checkpoint folder."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(hf_dir) / "tokenizer.json"))
    return tok, PromptEncoder.from_tokenizer(tok)


def tokenizer():
    return tokenizer_from(ensure_base())


def special_ids(tok) -> dict[str, int]:
    """Ids of the special tokens the batches and steps use: padding, image pads, the vision start, the turn's end."""
    return {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|image_pad|>", "<|vision_start|>", "<|im_end|>")}


def reply_weights(tok, kind: str, text: str, w_key: float, w_end: float = 1.0) -> list[float]:
    """Per-token loss weights of a reply (+ <|im_end|>): w_key on what the task is about (the answer value and
    citations; the verdict; the caption's content words), 1 on the rest of the JSON; in a memory, w_end (if
    larger) on each sentence's closing full stop, where the writer decides to end the memory or say one more fact.

    Character spans are mapped to tokens through the tokenizer's offsets, so a letter merged with its quote
    still gets the weight."""
    enc = tok.encode(text, add_special_tokens=False)
    key = np.zeros(len(text), dtype=bool)
    if kind in ("mc", "mc_e", "open", "judge"):
        for m in re.finditer(r'"(?:answer|better)": "([^"]*)"', text):
            key[m.start(1):m.end(1)] = True
        for m in re.finditer(r'"citations": \[([^\]]*)\]', text):
            key[m.start(1) - 1:m.end(1) + 1] = True
    else:
        low = text.lower()
        for w in CONTENT_WORDS:
            for m in re.finditer(re.escape(w), low):
                key[m.start():m.end()] = True
        for m in re.finditer(r"<face_\d+>|\"[A-Z0-9 :]+\\?\"", text):
            key[m.start():m.end()] = True
    end = np.zeros(len(text), dtype=bool)
    if kind == "write":
        for m in re.finditer(r'\.(?= I |"\})', text):
            end[m.start()] = True
    ws = [max(w_key if key[a:b].any() else 1.0, w_end if end[a:b].any() else 1.0) for a, b in enc.offsets]
    return ws + [1.0]


def encode_rows(tok, penc: PromptEncoder, rows, w_key: float, w_end: float = 1.0):
    out = []
    for msgs, rep, kind in rows:
        e = penc.encode(msgs, rep)
        w = reply_weights(tok, kind, rep, w_key, w_end)
        if len(w) != len(e.ids) - e.n_prompt:  # tokenizing the reply alone must match the encoder's completion
            raise AssertionError(f"weights {len(w)} vs reply tokens {len(e.ids) - e.n_prompt}: {rep!r}")
        out.append((e, w, kind))
    return out


def batch_tensors(rows, pad_id: int, image_pad: int, device):
    """Right-padded batch: input_ids, attention_mask, labels (-100 outside replies), weights, pixels, grids."""
    import torch

    L = max(len(e.ids) for e, _, _ in rows)
    ids = torch.full((len(rows), L), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), L), dtype=torch.long)
    lab = torch.full((len(rows), L), -100, dtype=torch.long)
    wts = torch.zeros((len(rows), L))
    chunks = []
    for b, (e, w, _) in enumerate(rows):
        n = len(e.ids)
        ids[b, :n] = torch.tensor(e.ids)
        att[b, :n] = 1
        lab[b, e.n_prompt:n] = torch.tensor(e.ids[e.n_prompt:])
        wts[b, e.n_prompt:n] = torch.tensor(w)
        chunks += e.chunks
    out = {"input_ids": ids, "attention_mask": att, "labels": lab, "weights": wts,
           "mm_token_type_ids": (ids == image_pad).long()}
    if chunks:
        pix, grids = pixel_inputs(chunks)
        out["pixel_values"] = torch.from_numpy(pix)
        out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    return {k: v.to(device) for k, v in out.items()}


def common_prefix(rows, vision_start: int) -> int:
    """Length of the token prefix all rows share (the system message...), stopping before any image token."""
    first = rows[0][0].ids
    n = min(min(len(e.ids) for e, _, _ in rows), min(e.n_prompt for e, _, _ in rows))
    n = min([n] + [e.ids.index(vision_start) for e, _, _ in rows if e.chunks])
    for e, _, _ in rows[1:]:
        k = 0
        while k < n and e.ids[k] == first[k]:
            k += 1
        n = k
    return n


def forward_logits(model, batch: dict, P: int, prefix_grad: bool = False):
    """Logits of positions P.. of the batch (predicting tokens P+1..), running the shared first P tokens once
    without gradient: the prefix (the system message) is the same for every row, so its keys/values are computed
    at batch 1 and expanded. Positions (M-RoPE, 3 rows + the text row) are those of the whole sequence, sliced.
    With `prefix_grad` the prefix is run with gradient (a contrastive group shares its memories: the prefix
    holds them, and they must learn too); the expanded cache carries the gradient back to it."""
    import contextlib

    import torch
    from transformers import DynamicCache

    ids, att = batch["input_ids"], batch["attention_mask"]
    B = ids.shape[0]
    P = max(P, 1)
    mm = batch["mm_token_type_ids"]
    with torch.no_grad():
        pos3, _ = model.model.get_rope_index(ids, mm_token_type_ids=mm, image_grid_thw=batch.get("image_grid_thw"),
                                             attention_mask=att)
        text_pos = torch.arange(ids.shape[1], device=ids.device).view(1, 1, -1).expand(1, B, -1)
        pos = torch.cat([text_pos, pos3], dim=0)  # (4, B, L)
    with contextlib.nullcontext() if prefix_grad else torch.no_grad():
        cache = DynamicCache(config=model.config.text_config)
        model.model.language_model(input_ids=ids[:1, :P], attention_mask=att[:1, :P], position_ids=pos[:, :1, :P],
                                   past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(B)
    kw = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
    out = model(input_ids=ids[:, P:], attention_mask=att, position_ids=pos[:, :, P:], past_key_values=cache,
                mm_token_type_ids=mm[:, P:], use_cache=True, **kw)
    return out.logits


def weighted_loss(model, batch: dict, P: int, prefix_grad: bool = False):
    """(sum of weighted token losses, sum of weights) of the replies."""
    import torch

    logits = forward_logits(model, batch, P, prefix_grad)[:, :-1]
    labels = batch["labels"][:, max(P, 1) + 1:]
    w = batch["weights"][:, max(P, 1) + 1:] * (labels != -100)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                                           ignore_index=-100, reduction="none")
    return (ce * w.reshape(-1)).sum(), w.sum()


def lm_step(model, tok, penc, rows, ids, device, w_key: float, w_end: float = 1.0,
            packed: bool = False) -> tuple[float, float]:
    """Backward of the weighted mean loss over all rows; rows grouped by kind so similar lengths pad together.
    `packed`: all text rows in one padded forward (for a GPU, see rank_step). Returns (loss, weight)."""
    enc = encode_rows(tok, penc, rows, w_key, w_end)
    groups: list[tuple[list, bool]] = []
    for kind in sorted({r[2] for r in enc if r[0].chunks}):  # by kind: short see rows never pad to a writer row
        groups.append(([r for r in enc if r[0].chunks and r[2] == kind], False))  # prefix: the system message
    # text rows: clusters sharing a long prefix (a contrastive group's memories and question) run it once
    text = sorted((r for r in enc if not r[0].chunks), key=lambda r: r[0].ids)
    shared = common_prefix(text, ids["<|vision_start|>"]) if text else 0  # the system message of every row
    for r in text:
        if packed and groups and groups[-1][1]:
            groups[-1][0].append(r)
        elif groups and groups[-1][1] and common_prefix([groups[-1][0][0], r], ids["<|vision_start|>"]) >= shared + 24:
            groups[-1][0].append(r)
        else:
            groups.append(([r], True))
    total_w = sum(float(sum(w)) for _, w, _ in enc)
    loss_sum = 0.0
    for grp, pg in groups:
        batch = batch_tensors(grp, ids["<|endoftext|>"], ids["<|image_pad|>"], device)
        P = common_prefix(grp, ids["<|vision_start|>"])
        if len(grp) == 1:  # a lone row: its whole prompt but the last token as the prefix
            P = grp[0][0].n_prompt - 1
        s, _ = weighted_loss(model, batch, P, prefix_grad=pg)
        (s / total_w).backward()
        loss_sum += s.item()
    return loss_sum / total_w, total_w


def answer_span(tok, text: str) -> tuple[str, int, int]:
    """(reply prefix '{"answer": "<text>"', first, end): the reply tokens [first, end) that the product's likelihood
    answerer scores (qa.answer.answer_logprobs: from the token holding the opening quote through the closing quote)."""
    rep = ANSWER_PREFIX + json.dumps(text)[1:]  # JSON-escaped, as in the replies it was trained on
    enc = tok.encode(rep, add_special_tokens=False)
    return rep, next(i for i, (a, b) in enumerate(enc.offsets) if b >= len(ANSWER_PREFIX)), len(enc.ids)


def option_rows(tok, penc, msgs, options: list[str]) -> list:
    """One row per option: the open prompt `msgs` with the option as the answer, weighted on its scored tokens."""
    rows = []
    for o in options:
        rep, first, end = answer_span(tok, o)
        e = penc.encode(msgs, rep)
        w = [0.0] * (len(e.ids) - e.n_prompt)
        w[first:end] = [1.0] * (end - first)
        rows.append((e, w, "rank"))
    return rows


def row_scores(model, rows, ids, device):
    """Mean log-probability per weighted reply token of each row, with gradient; the rows' shared prefix runs once."""
    batch = batch_tensors(rows, ids["<|endoftext|>"], ids["<|image_pad|>"], device)
    P = max(common_prefix(rows, ids["<|vision_start|>"]), 1)
    logp = forward_logits(model, batch, P, prefix_grad=True)[:, :-1].float().log_softmax(-1)
    labels = batch["labels"][:, P + 1:]
    w = batch["weights"][:, P + 1:] * (labels != -100)
    lp = logp.gather(2, labels.clamp(min=0)[..., None])[..., 0]
    return (lp * w).sum(1) / w.sum(1)


def option_scores(model, tok, penc, msgs, options: list[str], ids, device):
    """Mean log-probability per scored token of each option as the answer to `msgs` (the product's ranking rule),
    with gradient. The options share the prompt, which runs once (with gradient) and is expanded to each."""
    return row_scores(model, option_rows(tok, penc, msgs, options), ids, device)


def rank_step(model, tok, penc, cases, ids, device, scale: float, weight: float, packed: bool = False) -> float:
    """Backward of `weight` x the mean over `cases` of the cross-entropy of softmax(scale x option scores) against
    the right option: trains the decision the likelihood answerer makes (which option scores highest), where the
    read rows' cross-entropy only raises the right answer, not above the options beside it. Returns the mean loss.

    `packed`: every option of every case in one padded forward (only the system message runs once) instead of a
    forward per case (its prompt once, expanded to its options). Same loss; on a GPU one launch-bound pass instead
    of one per case, on a CPU each prompt's work once per option."""
    import torch

    if packed:
        rows, spans = [], []
        for msgs, options, right in cases:
            spans.append((len(rows), len(options), right))
            rows += option_rows(tok, penc, msgs, options)
        scores = row_scores(model, rows, ids, device)
        losses = [torch.nn.functional.cross_entropy(scale * scores[s:s + n][None], torch.tensor([right], device=device))
                  for s, n, right in spans]
        loss = torch.stack(losses).mean()
        (weight * loss).backward()
        return loss.item()
    total = 0.0
    for msgs, options, right in cases:
        scores = option_scores(model, tok, penc, msgs, options, ids, device)
        loss = torch.nn.functional.cross_entropy(scale * scores[None], torch.tensor([right], device=device))
        (weight * loss / len(cases)).backward()
        total += loss.item()
    return total / max(1, len(cases))


# ---------------------------------------------------------------------------------------------------- probes


def first_reply_token_logits(model, tok, penc, rows, ids, device, key: str):
    """For each row, the logits at the position that predicts the first token of the reply value (the letter /
    verdict), teacher forced. Returns (logits (n, V), target token ids)."""
    import torch

    outs, tgts = [], []
    for msgs, rep, kind in rows:
        e = penc.encode(msgs, rep)
        enc = tok.encode(rep, add_special_tokens=False)
        at = rep.index(f'"{key}": "') + len(f'"{key}": "')
        j = next(i for i, (a, b) in enumerate(enc.offsets) if a <= at < b)
        batch = batch_tensors([(e, [1.0] * (len(e.ids) - e.n_prompt), kind)], ids["<|endoftext|>"],
                              ids["<|image_pad|>"], device)
        with torch.no_grad():
            kw = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
            lg = model(input_ids=batch["input_ids"][:, :e.n_prompt + j], mm_token_type_ids=batch[
                "mm_token_type_ids"][:, :e.n_prompt + j], **kw).logits[0, -1]
        outs.append(lg.float().cpu())
        tgts.append(e.ids[e.n_prompt + j])
    return torch.stack(outs), tgts


def letter_ids(tok) -> dict[str, int]:
    """Token of each answer letter right after '{"answer": "' (read back from the tokenizer, not assumed)."""
    out = {}
    for L in "ABCDE":
        rep = reply(L, [])
        enc = tok.encode(rep, add_special_tokens=False)
        at = rep.index(L, len('{"answer": "') - 1)
        j = next(i for i, (a, b) in enumerate(enc.offsets) if a <= at < b)
        out[L] = enc.ids[j]
    return out


def probe_answer(model, tok, penc, ids, device, n_q: int = 24) -> dict:
    """Held-out worlds (9000+): multiple choice teacher-forced at the letter, arg-max over A-E."""
    import torch

    rng = random.Random(123)
    lid = letter_ids(tok)
    rows = []
    for s in HELDOUT_SEEDS:
        c = text_world(s, 4.0)
        for q in c["questions"]:
            for r in qa_group(c, q, rng, open_row=False):
                rows.append(r)
    rng.shuffle(rows)
    rows = rows[: n_q * 5]
    model.eval()
    lg, _ = first_reply_token_logits(model, tok, penc, rows, ids, device, "answer")
    model.train()
    cols = torch.tensor([lid[L] for L in "ABCDE"])
    pred = ["ABCDE"[int(i)] for i in lg[:, cols].argmax(1)]
    want = [json.loads(r[1])["answer"] for r in rows]
    ev = [i for i, w in enumerate(want) if w != "E"]
    ne = [i for i, w in enumerate(want) if w == "E"]
    hist = {L: pred.count(L) for L in "ABCDE"}
    return {"n": len(rows), "acc": round(sum(p == w for p, w in zip(pred, want)) / len(rows), 3),
            "acc_letter": round(sum(pred[i] == want[i] for i in ev) / max(1, len(ev)), 3),
            "e_rate_with_evidence": round(sum(pred[i] == "E" for i in ev) / max(1, len(ev)), 3),
            "e_acc_without": round(sum(pred[i] == "E" for i in ne) / max(1, len(ne)), 3), "hist": hist}


def answer_token_logprobs(model, tok, penc, msgs, text: str, device) -> list[float]:
    """Log-probability of each token of `text` as the answer of the open prompt `msgs` (the tokens of
    '{"answer": "<text>"' from the one holding the opening quote through the closing quote): what the product's
    likelihood answerer scores (qa.answer.answer_logprobs), in torch."""
    import torch

    rep, first, end = answer_span(tok, text)
    e = penc.encode(msgs, rep)
    x = torch.tensor([e.ids], device=device)
    with torch.no_grad():
        lp = model(input_ids=x).logits[0, e.n_prompt - 1:-1].float().log_softmax(-1)
    return lp.gather(1, x[0, e.n_prompt:][:, None])[:, 0][first:end].tolist()


def probe_read(model, tok, penc, device, n_q: int = 32) -> dict:
    """Held-out worlds: multiple choice by the product's likelihood rule over the open prompt (the option with the
    highest mean token log-probability; E when P("not in memory") >= 0.5, qa.abstain_probability's default), on
    questions whose evidence is shown (8 memories as `ask` retrieves) and on some with it removed."""
    rng = random.Random(321)
    items = []
    for s in HELDOUT_SEEDS:
        c = text_world(s, 4.0)
        for q in c["questions"]:
            if q["options"]:
                items.append((c, q))
    rng.shuffle(items)
    model.eval()
    right = e_with = n = 0
    abst = abst_n = 0
    hist = {L: 0 for L in "ABCDE"}
    by_cat: dict[str, list[int]] = {}
    for c, q in items[:n_q]:
        holds, told = evidence(c, q)
        remove = rng.random() < 0.2 or not told
        mems, _ = show(c, q, rng, holds, remove=remove, n_shown=8)
        if not mems:
            continue
        msgs = build_messages(q["question"], [], mems, q["asked_at"])
        means = [float(np.mean(answer_token_logprobs(model, tok, penc, msgs, o, device))) for o in q["options"]]
        p_abstain = math.exp(sum(answer_token_logprobs(model, tok, penc, msgs, NOT_IN_MEMORY, device)))
        pred = "E" if p_abstain >= 0.5 else "ABCD"[int(np.argmax(means))]
        if remove:
            abst_n += 1
            abst += pred == "E"
            continue
        n += 1
        ok = pred == q["answer"]
        right += ok
        e_with += pred == "E"
        hist[pred] += 1
        by_cat.setdefault(q["category"], [0, 0])
        by_cat[q["category"]][0] += ok
        by_cat[q["category"]][1] += 1
    model.train()
    return {"n": n, "acc": round(right / max(1, n), 3), "e_rate_with_evidence": round(e_with / max(1, n), 3),
            "abstain_n": abst_n, "abstain_acc": round(abst / max(1, abst_n), 3), "hist": hist, "by_category": by_cat}


def probe_judge(model, tok, penc, ids, device, n: int = 40) -> dict:
    """Held-out judge pairs in both orderings: verdict accuracy and position consistency (arg-max over A/B/tie)."""
    import torch

    rng = random.Random(7)
    pairs = []
    for s in HELDOUT_SEEDS:
        c = text_world(s, 4.0)
        for _ in range(8):
            p = judge_pair(c, rng)
            if len(p) == 2:
                pairs.append(p)
    pairs = pairs[:n]
    rows = [r for p in pairs for r in p]
    cand = {}
    for v in ("A", "B", "tie"):
        rep = json.dumps({"better": v})
        enc = tok.encode(rep, add_special_tokens=False)
        at = rep.index('"better": "') + len('"better": "')
        cand[v] = enc.ids[next(i for i, (a, b) in enumerate(enc.offsets) if a <= at < b)]
    model.eval()
    lg, _ = first_reply_token_logits(model, tok, penc, rows, ids, device, "better")
    model.train()
    cols = torch.tensor([cand[v] for v in ("A", "B", "tie")])
    pred = [("A", "B", "tie")[int(i)] for i in lg[:, cols].argmax(1)]
    right = sum(p == json.loads(r[1])["better"] for p, r in zip(pred, rows))
    consistent = sum(pred[2 * i] == "A" and pred[2 * i + 1] == "B" or pred[2 * i] == "B" and pred[2 * i + 1] == "A"
                     for i in range(len(pairs)))
    return {"pairs": len(pairs), "acc": round(right / max(1, len(rows)), 3),
            "consistent_correct": round(sum(pred[2 * i] == "A" and pred[2 * i + 1] == "B"
                                            for i in range(len(pairs))) / max(1, len(pairs)), 3),
            "position_consistent": round(consistent / max(1, len(pairs)), 3),
            "hist": {v: pred.count(v) for v in ("A", "B", "tie")}}


def probe_write(model, tok, penc, ids, device, clips, n: int = 24) -> dict:
    """Held-out segments, teacher forced: accuracy of the arg-max on the caption's content tokens, and on all
    reply tokens."""
    import torch

    rng = random.Random(5)
    rows = []
    for c in clips:
        for i in rng.sample(range(len(c["segments"])), min(6, len(c["segments"]))):
            rows.append(writer_example(c, i, min(i, 2), rng))
    rows = rows[:n]
    model.eval()
    hit = tot = hit_all = tot_all = 0
    for r in encode_rows(tok, penc, rows, 3.0):
        batch = batch_tensors([r], ids["<|endoftext|>"], ids["<|image_pad|>"], device)
        with torch.no_grad():
            kw = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
            lg = model(input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], **kw).logits[0]
        e, w, _ = r
        pred = lg[e.n_prompt - 1:len(e.ids) - 1].argmax(-1).cpu().tolist()
        gold = e.ids[e.n_prompt:]
        for p, g, wt in zip(pred, gold, w):
            hit_all += p == g
            tot_all += 1
            if wt > 1:
                hit += p == g
                tot += 1
    model.train()
    return {"n": len(rows), "content_token_acc": round(hit / max(1, tot), 3),
            "token_acc": round(hit_all / max(1, tot_all), 3)}


def probe_write_greedy(model, tok, penc, ids, device, clips, n: int = 24) -> dict:
    """Held-out segments, decoded greedily as the device writes them (up to 2 earlier segments, their memories drawn
    as in training): the share whose memory names the segment's room, object colour and object kind (eval's
    `fields`, counted where the true caption has one), and how many distinct object words the memories use. Teacher-forced token accuracy does not predict
    this: a writer that names one object for every segment scores 0.72 there and chance here."""
    import torch

    rng = random.Random(5)
    rows = []
    for c in clips:
        for i in rng.sample(range(len(c["segments"])), min(6, len(c["segments"]))):
            rows.append((writer_example(c, i, min(i, 2), rng)[0], c["segments"][i]["caption"]))
    rows = rows[:n]
    model.eval()
    hit = {k: [0, 0] for k in FIELD_WORDS}
    named: set[str] = set()
    for msgs, caption in rows:
        e = penc.encode(msgs, None)
        b = batch_tensors([(e, [], "write")], ids["<|endoftext|>"], ids["<|image_pad|>"], device)
        k = len(e.ids)
        with torch.no_grad():
            out = model.generate(input_ids=b["input_ids"][:, :k], attention_mask=b["attention_mask"][:, :k],
                                 mm_token_type_ids=b["mm_token_type_ids"][:, :k], pixel_values=b["pixel_values"],
                                 image_grid_thw=b["image_grid_thw"], max_new_tokens=60, do_sample=False,
                                 eos_token_id=ids["<|im_end|>"])
        truth, said = fields(caption), fields(tok.decode(out[0, k:].tolist()))
        named |= said["object"]
        for f in FIELD_WORDS:
            if truth[f]:
                hit[f][0] += truth[f] == said[f]
                hit[f][1] += 1
    model.train()
    return {"n": len(rows), **{f"{f}_acc": round(h / max(1, t), 3) for f, (h, t) in hit.items()},
            "object_n": hit["object"][1], "distinct_objects": len(named)}


def probe_see(model, tok, penc, ids, device, clips, n: int = 48) -> dict:
    """Held-out see rows (see_row), teacher forced: the share whose colour word and whose object word the arg-max
    gets right, on rows with an object, and the share of "nothing" rows answered "nothing"."""
    import torch

    rng = random.Random(11)
    rows = [r for r in (see_row(clips[i % len(clips)], rng) for i in range(n)) if r]
    colour = kind = n_obj = nothing = n_none = 0
    model.eval()
    for e, w, _ in encode_rows(tok, penc, rows, 8.0):
        batch = batch_tensors([(e, w, "see")], ids["<|endoftext|>"], ids["<|image_pad|>"], device)
        with torch.no_grad():
            kw = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
            lg = model(input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"], **kw).logits[0]
        ok = [int(lg[e.n_prompt - 1 + j].argmax()) == g for j, g in enumerate(e.ids[e.n_prompt:])]
        if max(w) > 1:  # "the <colour> <kind>": the two weighted tokens
            key = [o for o, wt in zip(ok, w) if wt > 1]
            n_obj += 1
            colour += key[0]
            kind += all(key[1:])
        else:
            n_none += 1
            nothing += all(ok)
    model.train()
    return {"objects": n_obj, "colour_acc": round(colour / max(1, n_obj), 3), "kind_acc": round(kind / max(1, n_obj), 3),
            "nothing_acc": round(nothing / max(1, n_none), 3)}


def probe_pixels(model, tok, penc, ids, device, clips, n: int = 120) -> dict:
    """What the writer reads from the pixels: on held-out segments with no earlier ones (the frames are all it has),
    the teacher-forced loss and arg-max accuracy of the caption's room, colour and object-kind words with the
    segment's own keyframes, and with another held-out segment's keyframes in their place (same text). A word the
    writer takes from the frames gets much worse when they are swapped; one it guesses from a prior does not."""
    import torch

    rng = random.Random(0)
    segs = [(c, i) for c in clips for i in range(len(c["segments"]))]
    words = {"room": set(ROOM_NAMES), "colour": set(COLOUR_NAMES[1:]), "kind": set(KINDS[1:])}
    out = {w: {"own": [0.0, 0, 0], "swapped": [0.0, 0, 0]} for w in words}  # loss sum, right, n
    model.eval()
    for c, i in rng.sample(segs, min(n, len(segs))):
        s = c["segments"][i]
        oc, oi = rng.choice([x for x in segs if x != (c, i)])
        other = oc["segments"][oi]["frames"]
        msgs, reply, _ = writer_example(c, i, 0, rng)
        for name, frames in (("own", s["frames"]), ("swapped", other[:len(s["frames"])] + s["frames"][len(other):])):
            parts, k = [], 0
            for part in msgs[1].parts:
                if isinstance(part, str):
                    parts.append(part)
                else:
                    parts.append(ImagePart(f"{part.key}-{name}", frames[k]))
                    k += 1
            e = penc.encode([msgs[0], Message("user", parts)], json.dumps({"description": s["caption"]}))
            b = batch_tensors([(e, [1.0] * (len(e.ids) - e.n_prompt), "write")], ids["<|endoftext|>"],
                              ids["<|image_pad|>"], device)
            with torch.no_grad():
                lg = model(input_ids=b["input_ids"], mm_token_type_ids=b["mm_token_type_ids"],
                           pixel_values=b["pixel_values"], image_grid_thw=b["image_grid_thw"]).logits[0].float()
            logp = torch.log_softmax(lg[e.n_prompt - 1:len(e.ids) - 1], -1)
            for j, t in enumerate(e.ids[e.n_prompt:]):
                word = tok.decode([t]).strip().lower()
                for w, vocab in words.items():
                    if word in vocab:
                        acc = out[w][name]
                        acc[0] -= logp[j, t].item()
                        acc[1] += int(logp[j].argmax()) == t
                        acc[2] += 1
    model.train()
    return {w: {name: {"n": a[2], "loss": round(a[0] / max(1, a[2]), 3), "acc": round(a[1] / max(1, a[2]), 3)}
                for name, a in r.items()} for w, r in out.items()}


# ---------------------------------------------------------------------------------------------------- vision


class Heads:
    """Training-only classifiers on the merger output of one image chunk (merged tokens x hidden, flattened).
    Never exported."""

    def __init__(self, n_tokens: int, hidden: int, device):
        import torch

        self.net = torch.nn.ModuleDict({k: torch.nn.Sequential(torch.nn.Linear(n_tokens * hidden, 128),
                                                               torch.nn.GELU(), torch.nn.Linear(128, n))
                                        for k, n in HEADS.items()}).to(device)


def image_features(model, pixel_values, grid):
    """Merger output per chunk, (n_chunks, n_tokens, hidden)."""
    out = model.model.get_image_features(pixel_values=pixel_values, image_grid_thw=grid)
    embeds = out[0] if isinstance(out, tuple) else getattr(out, "pooler_output", out)
    if isinstance(embeds, (list, tuple)):
        return torch_stack(embeds)
    return embeds.reshape(grid.shape[0], -1, embeds.shape[-1])


def torch_stack(xs):
    import torch

    return torch.stack(list(xs))


def vision_chunks(clips) -> list[tuple[list[np.ndarray], dict[str, int]]]:
    """Keyframes paired as the runtime pairs them (consecutive pairs of a segment, an odd last one alone), each
    with the first frame's labels."""
    out = []
    for c in clips:
        for s in c["segments"]:
            fr, lb = s["frames"], s["labels"]
            for j in range(0, len(fr), 2):
                out.append((fr[j:j + 2], lb[j]))
    return out


def vision_batch(items, device):
    import torch

    from edge_agent.vlm.prompt import ImageChunk

    chunks = [ImageChunk(tuple(ImagePart(f"k{i}/{j}", f) for j, f in enumerate(frames)))
              for i, (frames, _) in enumerate(items)]
    pix, grids = pixel_inputs(chunks)
    labels = {k: torch.tensor([lb[k] for _, lb in items], device=device) for k in HEADS}
    return torch.from_numpy(pix).to(device), torch.tensor(grids, device=device), labels


def probe_vision(model, heads, device, chunks) -> dict:
    import torch

    model.eval()
    right = {k: 0 for k in HEADS}
    right_obj = {"kind": [0, 0], "colour": [0, 0]}
    with torch.no_grad():
        for i in range(0, len(chunks), 64):
            items = chunks[i:i + 64]
            pix, grid, lab = vision_batch(items, device)
            f = image_features(model, pix, grid).flatten(1)
            for k, h in heads.net.items():
                p = h(f).argmax(-1)
                right[k] += int((p == lab[k]).sum())
                if k in right_obj:
                    m = lab[k] > 0
                    right_obj[k][0] += int((p[m] == lab[k][m]).sum())
                    right_obj[k][1] += int(m.sum())
    model.train()
    n = len(chunks)
    return {"n": n, **{k: round(v / n, 3) for k, v in right.items()},
            "kind_when_object": round(right_obj["kind"][0] / max(1, right_obj["kind"][1]), 3),
            "colour_when_object": round(right_obj["colour"][0] / max(1, right_obj["colour"][1]), 3),
            "n_object": right_obj["kind"][1]}


# ---------------------------------------------------------------------------------------------------- stages

STAGE_DEFAULTS = {  # steps, batch (rows or chunks), lr, minutes cap
    "answer": dict(steps=150, batch=4, lr=2e-3, minutes=42, probe_every=40),
    "vision": dict(steps=1500, batch=64, lr=2e-3, minutes=10, probe_every=300),
    "write": dict(steps=300, batch=10, lr=1.5e-3, minutes=38, probe_every=50),
    "lookup": dict(steps=700, batch=32, lr=1e-3, minutes=40, probe_every=100),
    "read": dict(steps=900, batch=24, lr=2e-3, minutes=110, probe_every=50),
    "joint": dict(steps=400, batch=8, lr=1e-3, minutes=60, probe_every=50),
}


def load_model(path: Path, device):
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    m = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).to(device)
    m.train()
    return m


def ensure_base() -> Path:
    """The starting point: a copy of the shipped checkpoint (models/default/hf), taken once."""
    base = WORK / "base"
    if not (base / "model.safetensors").is_file():
        base.mkdir(parents=True, exist_ok=True)
        for f in (ROOT / "models" / "default" / "hf").iterdir():
            shutil.copy2(f, base / f.name)
    return base


def stage_dir(name: str) -> Path:
    return WORK / f"stage-{name}"


def previous_weights(name: str) -> Path:
    i = STAGES.index(name) if name in STAGES else len(STAGES)
    for prev in reversed(STAGES[:i]):
        d = stage_dir(prev)
        if (d / "done.json").is_file():
            return d / "hf"
        if (d / "stopped.json").is_file():  # shipped from its checkpoint (`finalize --from-dir .../ckpt.pt`)
            return d / "hf-from-ckpt"
    return ensure_base()


def save_hf(model, d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    base = ensure_base()
    for f in base.iterdir():
        if f.name not in ("model.safetensors", "config.json", "generation_config.json"):
            shutil.copy2(f, tmp / f.name)
    shutil.rmtree(d, ignore_errors=True)
    tmp.rename(d)


def run_stage(name: str, args) -> None:
    import torch

    d = stage_dir(name)
    if (d / "done.json").is_file():
        print(f"[{name}] done already: {(d / 'done.json').read_text()}", flush=True)
        return
    cfg = dict(STAGE_DEFAULTS[name])
    for k in ("steps", "batch", "lr", "minutes", "probe_every"):
        v = getattr(args, k)
        if v is not None:
            cfg[k] = v
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    tok, penc = tokenizer()
    ids = special_ids(tok)
    # data
    video = held = chunks = held_chunks = None
    if name in ("vision", "write", "read", "joint"):
        # a read stage with no writer replay trains on text alone: only its writer probe reads (held-out) clips
        text_only = name == "read" and not args.write_replay
        seeds = [] if text_only else VIDEO_SEEDS + list(range(EXTRA_VIDEO_SEED0, EXTRA_VIDEO_SEED0 + args.extra_clips))
        video = [clip(s) for s in seeds]
        held = [clip(s) for s in HELDOUT_SEEDS[:4]]
        variants = [caption_variants(s) for s in seeds] if name != "vision" else None
    if name == "vision":
        chunks = vision_chunks(video)
        held_chunks = vision_chunks(held)
        print(f"[vision] {len(chunks)} training chunks, {len(held_chunks)} held-out", flush=True)

    own = own_clips() if args.own_share else None
    start_from = Path(args.from_dir) if args.from_dir else previous_weights(name)
    model = load_model(start_from, device)
    heads = None
    if name == "vision":
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.model.visual.parameters():
            p.requires_grad_(True)
        heads = Heads(image_tokens(*chunks[0][0][0].shape[:2]), model.config.vision_config.out_hidden_size, device)
        params = list(model.model.visual.parameters()) + list(heads.net.parameters())
    elif args.new_heads_only:
        params = new_head_params(model, *args.new_heads_only)
    elif args.top_layers:
        params = top_layer_params(model, args.top_layers)
    else:
        params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], betas=(0.9, 0.95), weight_decay=0.05)
    rng = random.Random(args.seed * 1000 + (STAGES + EXTRA_STAGES).index(name))
    torch.manual_seed(args.seed * 1000 + (STAGES + EXTRA_STAGES).index(name))
    # text worlds by stage and --seed, so a stage continued under another seed draws worlds it has not seen
    text_seed = TEXT_SEED0 + 100000 * (STAGES + EXTRA_STAGES).index(name) + 1_000_000 * args.seed
    state = {"step": 0, "seconds": 0.0, "probes": [], "text_seed": text_seed,
             "losses": []}
    ckpt = d / "ckpt.pt"
    if ckpt.is_file():
        st = torch.load(ckpt, weights_only=False)
        model.load_state_dict(st["model"])
        if heads is not None:
            heads.net.load_state_dict(st["heads"])
        opt.load_state_dict(st["opt"])
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        state = st["state"]
        print(f"[{name}] resumed at step {state['step']} ({state['seconds']:.0f}s)", flush=True)
    d.mkdir(parents=True, exist_ok=True)

    def probe() -> dict:
        t = time.time()
        if name == "answer":
            p = {"answer": probe_answer(model, tok, penc, ids, device), "judge": probe_judge(model, tok, penc, ids,
                                                                                            device)}
        elif name == "vision":
            p = {"vision": probe_vision(model, heads, device, held_chunks)}
        elif name == "lookup":
            p = {"lookup": probe_lookup(model, tok, penc, 8, "short", device),
                 "recall": probe_recall(model, tok, penc, device)}
        elif name == "read":
            p = {"read": probe_read(model, tok, penc, device), "recall": probe_recall(model, tok, penc, device)}
            if args.judge_pairs:
                p["judge"] = probe_judge(model, tok, penc, ids, device)
            if state["step"] in (0, cfg["steps"]) or state["step"] % (4 * cfg["probe_every"]) == 0:
                p["write"] = probe_write(model, tok, penc, ids, device, held, n=12)
        elif name == "joint":
            p = {"lookup": probe_lookup(model, tok, penc, 8, "short", device), "read": probe_read(model, tok, penc, device),
                 "write_greedy": probe_write_greedy(model, tok, penc, ids, device, held),
                 "see": probe_see(model, tok, penc, ids, device, held)}
        else:
            p = {"write": probe_write(model, tok, penc, ids, device, held),
                 "write_greedy": probe_write_greedy(model, tok, penc, ids, device, held),
                 "see": probe_see(model, tok, penc, ids, device, held)}
            if args.read_replay:  # the replayed skill drifts too (MC over ground-truth memories 43.9 -> 38.6 %)
                p["read"] = probe_read(model, tok, penc, device)
        p["step"] = state["step"]
        p["probe_seconds"] = round(time.time() - t)
        print(f"[{name}] probe {json.dumps(p)}", flush=True)
        return p

    def save() -> None:
        tmp = d / "ckpt.tmp"
        torch.save({"model": model.state_dict(), "heads": heads.net.state_dict() if heads else None,
                    "opt": opt.state_dict(), "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                    "state": state, "cfg": cfg}, tmp)
        tmp.replace(ckpt)

    def next_text_world():
        state["text_seed"] += 1
        return text_world(state["text_seed"], rng.choice([2.0, 3.0, 4.0, 6.0]))

    def answer_rows(n_groups: int, n_judge: int, e_share: float = 1.0) -> list:
        rows = []
        while n_groups > 0:
            c = next_text_world()
            qs = c["questions"][:]
            rng.shuffle(qs)
            for q in qs[:2]:
                g = qa_group(c, q, rng, e_row=rng.random() < e_share)
                if g:
                    rows += g
                    n_groups -= 1
            for _ in range(n_judge):
                rows += judge_pair(c, rng)
            n_judge = 0
        return rows

    def judge_rows(n_pairs: int) -> list:
        """Phase Two's judge prompt, both orderings of each pair in the same step (so a constant verdict cannot
        lower the loss), from fresh text worlds."""
        rows = []
        while len(rows) < 2 * n_pairs:
            rows += judge_pair(next_text_world(), rng)
        return rows

    room_changes = room_change_segments(video or [])

    def write_rows(n: int) -> list:
        rows = []
        for _ in range(n):
            if args.room_change_share and room_changes and rng.random() < args.room_change_share:
                j, i = room_changes[rng.randrange(len(room_changes))]
            else:
                j = rng.randrange(len(video))
                i = rng.randrange(len(video[j]["segments"]))
            c = video[j]
            rows.append(writer_example(c, i, min(i, rng.choice(args.write_windows)), rng, variants[j]))
        return rows

    def see_rows(n: int) -> list:
        return [r for r in (see_row(video[rng.randrange(len(video))], rng) for _ in range(n)) if r]

    def read_rows(n: int, frac: float) -> list:
        """Open questions; the memories shown grow from 1-2 to 1-8 over the first half (a curriculum: the
        matching is learnt on short prompts first, which are also cheap), evidence removed in 1 of 5."""
        top = 8 if args.shown_from_start else 2 + round(6 * min(1.0, 2 * frac))
        n_recall = round(n * args.recall_share)
        rows = [recall_row(rng, rng.randint(2, max(2, top)), remove=rng.random() < 0.2) for _ in range(n_recall)]
        while len(rows) < n_recall + round(n * args.own_share):
            c = own[rng.randrange(len(own))]
            r = own_row(c, rng.choice(c["questions"]), rng, rng.randint(1, top), remove=rng.random() < 0.2)
            if r:
                rows.append(r)
        while len(rows) < n:
            c = next_text_world()
            qs = [q for q in c["questions"]]
            rng.shuffle(qs)
            for q in qs[:3]:
                r = read_row(c, q, rng, rng.randint(1, top), remove=rng.random() < 0.2,
                             hard=args.hard_share > 0 and rng.random() < args.hard_share)
                if r:
                    rows.append(r)
        return rows[:n]

    def rank_cases(n: int) -> list:
        """Multiple-choice questions from fresh text worlds over 8 memories, as `ask` retrieves them (`rank_step`)."""
        cases = []
        while len(cases) < n:
            c = next_text_world()
            qs = c["questions"][:]
            rng.shuffle(qs)
            for q in qs[:3]:
                r = rank_case(c, q, rng, 8, hard=args.hard_share > 0 and rng.random() < args.hard_share)
                if r:
                    cases.append(r)
        return cases[:n]

    print(f"[{name}] from {start_from}, {cfg}, threads {args.threads}, device {device}", flush=True)
    if not state["probes"]:
        state["probes"].append(probe())
    t0 = time.time() - state["seconds"]
    last_save = time.time()
    ema = None
    while state["step"] < cfg["steps"]:
        step = state["step"]
        # the schedule runs on whichever ends first, the planned steps or the stage's wall-clock cap, so a stage
        # slowed by a busy machine still anneals to its final learning rate
        frac = max(step / cfg["steps"], (time.time() - t0) / 60 / cfg["minutes"])
        if frac >= 1:
            print(f"[{name}] time cap {cfg['minutes']} min reached at step {step}", flush=True)
            break
        warm = min(1.0, (step + 1) / 20)
        lr = cfg["lr"] * warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        if name == "answer":
            loss, _ = lm_step(model, tok, penc, answer_rows(cfg["batch"], 2), ids, device, args.w_key)
        elif name == "vision":
            items = [chunks[rng.randrange(len(chunks))] for _ in range(cfg["batch"])]
            pix, grid, lab = vision_batch(items, device)
            f = image_features(model, pix, grid).flatten(1)
            ls = {k: torch.nn.functional.cross_entropy(h(f), lab[k]) for k, h in heads.net.items()}
            total = ls["room"] + ls["shot"] + 2 * ls["kind"] + 2 * ls["colour"] + ls["person"] + ls["activity"]
            total.backward()
            loss = total.item()
        elif name == "lookup":
            # 2 memories at first, 2-8 by three quarters of the way: grown faster, the citation fell back
            # (models/default/HISTORY.md, "Tried: copying and looking up, apart"). Text only: the writer's format
            # suffers (teacher-forced token accuracy 0.82 -> 0.44 in 700 steps); the read stage's writer replay
            # repaired it, not the objects its memories name ("Tried: the lookup stage, then read, then write again");
            # a write stage after read, content weight 8, did (the shipped run)
            top = 2 + round(6 * min(1.0, frac / 0.75))
            rows = [lookup_row(tok, penc, rng, top, "short") for _ in range(cfg["batch"])]
            loss = ids_step(model, *padded(rows, ids["<|endoftext|>"], device))
        elif name == "read":
            loss, _ = lm_step(model, tok, penc, read_rows(cfg["batch"], frac) + write_rows(args.write_replay) +
                              judge_rows(args.judge_pairs), ids, device, args.w_key, packed=args.pack)
            if args.rank_questions:
                loss += rank_step(model, tok, penc, rank_cases(args.rank_questions), ids, device, args.rank_scale,
                                  args.rank_weight, packed=args.pack)
        elif name == "joint":
            # all three skills in every step, so none drifts while another is learnt (lookup alone cost the writer
            # its objects, models/default/HISTORY.md "Tried: one more lookup -> read -> write round"): the two
            # losses are each a mean over their own tokens, summed
            top = 2 + round(6 * min(1.0, frac / 0.5))
            loss, _ = lm_step(model, tok, penc, write_rows(cfg["batch"]) + read_rows(cfg["batch"], 1.0) +
                              see_rows(args.see_rows), ids, device, args.w_key)
            rows = [lookup_row(tok, penc, rng, top, "short") for _ in range(2 * cfg["batch"])]
            loss += ids_step(model, *padded(rows, ids["<|endoftext|>"], device))
        else:
            # replay of the read stage's open questions (what the likelihood answerer uses), so a write stage run
            # after it (a new frame size) keeps the skill; the answer stage's letters are not used any more
            rows = write_rows(cfg["batch"]) + read_rows(args.read_replay, 1.0) + see_rows(args.see_rows)
            loss, _ = lm_step(model, tok, penc, rows, ids, device, args.w_key, args.w_end)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        state["step"] += 1
        ema = loss if ema is None else 0.95 * ema + 0.05 * loss
        state["losses"].append(round(loss, 4))
        if step % 10 == 0:
            print(f"[{name}] step {step} loss {loss:.4f} ema {ema:.4f} lr {lr:.2e} {time.time() - t0:.0f}s",
                  flush=True)
        if state["step"] % cfg["probe_every"] == 0:
            state["probes"].append(probe())
        if time.time() - last_save > args.save_minutes * 60:
            state["seconds"] = time.time() - t0
            save()
            last_save = time.time()
    state["seconds"] = time.time() - t0
    if not state["probes"] or state["probes"][-1]["step"] != state["step"]:
        state["probes"].append(probe())
    save()
    save_hf(model, d / "hf")
    done = {"stage": name, "steps": state["step"], "planned_steps": cfg["steps"], "seconds": round(state["seconds"]),
            "cfg": cfg, "threads": args.threads, "device": str(device), "from": str(start_from),
            "final_probe": state["probes"][-1], "probes": state["probes"]}
    (d / "done.json").write_text(json.dumps(done, indent=1))
    print(f"[{name}] finished {state['step']} steps in {state['seconds']:.0f}s", flush=True)


# ---------------------------------------------------------------------------------------------------- ship


def last_stage_dir() -> Path:
    for name in reversed(STAGES):
        if (stage_dir(name) / "done.json").is_file():
            return stage_dir(name)
    raise SystemExit("no finished stage")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def finalize(args) -> None:
    """The chosen stage's checkpoint -> <out>/hf + model.gguf + mmproj.gguf through the project's exporter."""
    from edge_agent.export import export_hf

    src = Path(args.from_dir) if args.from_dir else last_stage_dir() / "hf"
    if src.suffix == ".pt":  # a stage checkpoint (e.g. a stage stopped by the session's clock): weights -> hf
        import torch

        state = torch.load(src, weights_only=False)
        model = load_model(ensure_base(), "cpu")
        model.load_state_dict(state["model"])
        save_hf(model, src.parent / "hf-from-ckpt")
        (src.parent / "stopped.json").write_text(json.dumps({"steps": state["state"]["step"],
                                                             "seconds": round(state["state"]["seconds"]),
                                                             "cfg": state["cfg"], "probes": state["state"]["probes"]}))
        src = src.parent / "hf-from-ckpt"
    out = args.out
    hf = out / "hf"
    tmp = out / "hf.new"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(hf, ignore_errors=True)
    tmp.rename(hf)
    export_hf(hf, out, args.outtype, name=f"edge-agent-default-s{args.seed}")
    print(f"finalized {src} -> {out}", flush=True)


def manifest(args) -> None:
    """manifest.json: seed, generator version, recipe, per-stage probes, measured table, sha256 of each file."""
    out = args.out
    stages = {}
    for name in STAGES + EXTRA_STAGES:
        f = stage_dir(name) / "done.json"
        g = stage_dir(name) / "stopped.json"
        if f.is_file():
            stages[name] = json.loads(f.read_text())
        elif g.is_file():  # stopped before its schedule ended; shipped from its last checkpoint
            stages[name] = dict(json.loads(g.read_text()), stopped_early=True)
    measured = {}
    for key, f in (("writer_and_mc_gt_memories", WORK / f"eval-{args.measured_name}.json"),
                   ("end_to_end", WORK / f"heldout-{args.measured_name}.json"), ("parity", WORK / "parity.json"),
                   ("pixels", WORK / f"pixels-{args.measured_name}.json"),
                   ("previous_model_writer_and_mc", WORK / f"eval-{args.previous_name}.json"),
                   ("previous_model_end_to_end", WORK / f"heldout-{args.previous_name}.json")):
        if f.is_file():
            measured[key] = json.loads(f.read_text())
    files = {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(out.rglob("*")) if p.is_file() and p.name not in ("manifest.json",)}
    # A model retrained from the one shipped before it keeps that one's record (its stages ran in an earlier
    # session whose stage folders are gone): the provenance chain, each model's record holding its predecessor's.
    previous, old = None, {}
    old_path = out / "manifest.json"
    if old_path.is_file():
        old = json.loads(old_path.read_text())
        weights = "hf/model.safetensors"
        if old.get("files", {}).get(weights, {}).get("sha256") != files.get(weights, {}).get("sha256"):
            previous = {k: old.get(k) for k in ("recipe", "stages", "measured", "profile", "previous")}
            previous["weights_sha256"] = old.get("files", {}).get(weights, {}).get("sha256")
        else:
            previous = old.get("previous")
    man = {"seed": args.seed, "generator": GENERATOR_VERSION, "recipe": args.recipe,
           "video_seeds": [VIDEO_SEEDS[0], VIDEO_SEEDS[-1]],
           "extra_video_seeds": [EXTRA_VIDEO_SEED0, EXTRA_VIDEO_SEED0 + args.extra_clips - 1] if args.extra_clips else None,
           "text_seeds_from": TEXT_SEED0,
           "heldout_seeds": [HELDOUT_SEEDS[0], HELDOUT_SEEDS[-1]], "stages": stages, "measured": measured,
           # what it was trained at (read by edge_agent.models; the same as the catalog's entry)
           "profile": {"frame_size": FRAME_SIZE, "keyframes_per_segment": KEYFRAMES, "answer_choice": "score",
                       # a question naming a time reads the 3 memories of that moment, one asking where a thing was
                       # left the latest memory naming it, one asking what colour a thing was the 3 latest naming it
                       # (HISTORY.md, "The moment alone", "The latest memory", "The colour of a thing")
                       "moment_memories": 3, "latest_memories": 1, "colour_memories": 3,
                       # the writer sees the new segment alone: earlier segments' frames and memories in its window
                       # made it name the wrong object (HISTORY.md, "The writer's window")
                       "window_segments": 1,
                       # "which of these did I do first / last?" is answered by the times of the memories like each
                       # option: this reader chose about at chance (HISTORY.md, "Which came first")
                       "order_by_time": True,
                       # a moment's or a colour's options matched to the memories those routes find (MiniLM): this
                       # reader ranked them worse (HISTORY.md, "Options matched to the memory")
                       "match_options": True,
                       # "what did the note say?" answered only by an option a memory quotes, else "not in memory":
                       # this writer cannot make out a note's words (HISTORY.md, "Words no memory quotes")
                       "quoted_text": True,
                       # "where did I leave X?" shown the latest memory naming X is answered, never "not in memory":
                       # this reader abstained on one plain memory (HISTORY.md, "Where a thing went")
                       "where_answered": True,
                       # Phase Two's product recipe, measured on this model (configs/phase_two/product.toml)
                       "candidate_share": 0.3, "adapt_learning_rate": 1e-2, "adapt_steps": 50, "adapt_sft_weight": 1.0,
                       "ram_gb": 0.5, "disk_gb": 0.1},
           "previous": previous, "files": files}
    # records kept by hand (runs tried and not shipped, notes): carried over, never dropped by a rebuild
    man.update({k: v for k, v in old.items() if k not in man})
    (out / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    print(f"manifest: {len(files)} files", flush=True)


# ---------------------------------------------------------------------------------------------------- eval

FIELD_WORDS = {
    "room": ["kitchen", "office", "living room", "bedroom"],
    "colour": ["red", "blue", "green", "yellow", "purple", "orange"],
    "object": ["cup", "keys", "book", "phone", "bowl", "bottle"],
}


def fields(text: str) -> dict[str, set[str]]:
    """The room, colour and object words a memory names, as whole words: "book" is not in "bookshelf", nor
    "blue" in a note that says "WIFI BLUE40"."""
    t = text.lower()
    return {k: {w for w in ws if re.search(rf"\b{w}\b", t)} for k, ws in FIELD_WORDS.items()}


def open_default(out: Path, n_ctx: int = 4096):
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    return LlamaCppBackend(out / "model.gguf", out / "mmproj.gguf", n_threads=1, n_ctx=n_ctx, image_cache_size=64)


def open_answerer(out: Path, writer, files: tuple[str, ...] = (READER_FILE,)):
    """What answers in the runtime: the first of `files` the folder ships (text only), else `writer` (left open).
    The judge, as `adapt` opens it: files=(JUDGE_FILE, READER_FILE)."""
    from contextlib import nullcontext

    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    path = next((out / f for f in files if (out / f).is_file()), None)
    return LlamaCppBackend(path, None, n_threads=1, n_ctx=4096) if path else nullcontext(writer)


def wilson(k: int, n: int) -> list[float]:
    """95 % Wilson interval of k successes in n, rounded for the tables."""
    return [round(x, 3) for x in wilson_interval(k, n)]


def evaluate(args) -> dict:
    """Held-out seeds through llama.cpp: the runtime's MemoryWriter (the folder profile's window, grammar, no
    retries) on the first segments of each clip, and questions over ground-truth memories (8 shown, as `ask`
    retrieves; each multiple choice also with its evidence removed, which must give E; the open question over the
    same memories)."""
    wcfg = dataclasses.replace(folder_config(args.out).writer, max_retries=0)
    qcfg = QAConfig(choice=args.choice)
    w = {"n": 0, "valid": 0, "repeat": 0, "exact": 0, **{k: [0, 0] for k in FIELD_WORDS}}
    qa = {"n": 0, "correct": 0, "e_with_evidence": 0, "abstain_n": 0, "abstain_correct": 0, "hist": {},
          "cited_ok": 0, "open_n": 0, "open_text": 0, "open_right": 0, "by_category": {}}
    rng = random.Random(1)
    seeds = HELDOUT_SEEDS[: args.eval_clips]
    with open_default(args.out) as be, open_answerer(args.out, be) as reader:
        for seed in seeds:
            c = clip(seed)
            for s, r in written(be, c, wcfg, args.eval_segments):
                w["n"] += 1
                w["valid"] += r.text is not None
                text = r.text or ""
                sents = [x.strip() for x in re.findall(r"[^.]+\.", text)]
                w["repeat"] += len(sents) != len(set(sents))
                w["exact"] += text == s["caption"]
                ft, fp = fields(s["caption"]), fields(text)
                for k in FIELD_WORDS:
                    if ft[k]:
                        w[k][0] += ft[k] == fp[k]
                        w[k][1] += 1
                if args.verbose:
                    print(f"  [{s['index']}] true: {s['caption']}\n       pred: {text}", flush=True)
            tw = text_world(seed, 4.0)
            for q in tw["questions"]:
                holds, told = evidence(tw, q)
                for remove in (False, True):
                    mems, _ = show(tw, q, rng, holds, remove=remove, n_shown=8)  # top_k memories, as `ask`
                    if not mems or (remove and not told):
                        continue
                    if q["options"]:
                        p = reply_from_memories(reader, q["question"], q["options"], mems, q["asked_at"], qcfg)
                        if remove or not told:
                            qa["abstain_n"] += 1
                            qa["abstain_correct"] += p["choice"] == "E"
                        else:
                            qa["n"] += 1
                            qa["correct"] += p["choice"] == q["answer"]
                            right_n = qa["by_category"].setdefault(q["category"], [0, 0])
                            right_n[0] += p["choice"] == q["answer"]
                            right_n[1] += 1
                            qa["e_with_evidence"] += p["choice"] == "E"
                            qa["hist"][p["choice"]] = qa["hist"].get(p["choice"], 0) + 1
                            qa["cited_ok"] += p["choice"] != "E" and bool(p["cited"])
                    if not remove:  # the open question over the same memories
                        p = reply_from_memories(reader, q["question"], [], mems, q["asked_at"], qcfg)
                        qa["open_n"] += 1
                        qa["open_text"] += bool(p["text"]) and p["text"] != NOT_IN_MEMORY
                        qa["open_right"] += told and p["text"].lower() == q["open_answer"].lower()
    ans = qa["n"] - qa["e_with_evidence"]
    summary = {
        "seeds": seeds, "segments": w["n"], "valid_memory": round(w["valid"] / max(1, w["n"]), 3),
        "valid_ci": wilson(w["valid"], w["n"]), "repeated_sentence": w["repeat"],
        "exact_caption": round(w["exact"] / max(1, w["n"]), 3),
        **{f"{k}_acc": round(w[k][0] / max(1, w[k][1]), 3) for k in FIELD_WORDS},
        **{f"{k}_ci": wilson(*w[k]) for k in FIELD_WORDS}, "field_counts": {k: w[k][1] for k in FIELD_WORDS},
        "mc_questions": qa["n"], "mc_acc_gt_memories": round(qa["correct"] / max(1, qa["n"]), 3),
        "mc_ci": wilson(qa["correct"], qa["n"]), "letter_hist": qa["hist"],
        "mc_by_category": dict(sorted(qa["by_category"].items())),  # [right, questions]
        "e_rate_with_evidence": round(qa["e_with_evidence"] / max(1, qa["n"]), 3),
        "abstain_acc_without_evidence": round(qa["abstain_correct"] / max(1, qa["abstain_n"]), 3),
        "abstain_n": qa["abstain_n"], "cited_when_answered": round(qa["cited_ok"] / max(1, ans), 3),
        "open_n": qa["open_n"], "open_text_rate": round(qa["open_text"] / max(1, qa["open_n"]), 3),
        "open_exact": round(qa["open_right"] / max(1, qa["open_n"]), 3), "choice": args.choice,
        "answered_by": READER_FILE if (args.out / READER_FILE).is_file() else "model.gguf",
    }
    print(json.dumps(summary, indent=1), flush=True)
    (WORK / f"eval-{args.out.name}.json").write_text(json.dumps(summary, indent=1))
    return summary


def read_gt(args) -> dict:
    """`read-gt`: multiple choice over text worlds' ground-truth memories (`--dev-worlds`, 4 minutes each; one
    memory a segment, as a writer that never erred would write them) put in a store, then retrieved and answered as
    `ask` does under the folder's profile (qa.moment_k, latest_k, colour_k, order_by_time, match_options,
    quoted_text, where_answered; MiniLM; the folder's reader through llama.cpp): what the product answers when its
    memories are true. `eval`'s MC shows the evidence among 7 memories drawn at random instead, so it measures the
    reader apart from retrieval. Only questions whose memories tell the answer count, as there; E is wrong. Saved to
    <work>/read-gt-<worlds>-<folder>.json with each question's grade."""
    import tempfile

    from edge_agent.qa.answer import memories_and_reply
    from edge_agent.qa.retrieve import question_embedder
    from edge_agent.store import Store

    qcfg = dataclasses.replace(folder_config(args.out).qa, choice=args.choice)
    embedder = question_embedder(qcfg, None)
    first, last = (int(x) for x in args.dev_worlds.split("-"))
    graded = []
    with open_answerer(args.out, None) as reader, tempfile.TemporaryDirectory() as tmp:
        for seed in range(first, last + 1):
            tw = text_world(seed, 4.0)
            store = Store.open(Path(tmp) / f"w{seed}.db")
            sid = store.get_or_create_stream(f"world {seed}", f"gt-{seed}", 0.0, "synthetic")
            for s in tw["segments"]:
                store.commit_segment(sid, Segment(s["index"], s["t_start"], s["t_end"]), memory=s["caption"],
                                     failure=None, writer_model="ground truth", adapter_id=None, n_tokens=0,
                                     latency_s=0.0)
            for i, q in enumerate(tw["questions"]):
                if not q["options"] or not evidence(tw, q)[1]:
                    continue
                _, p = memories_and_reply(store, reader, q["question"], q["options"], q["asked_at"], qcfg,
                                          until=q["asked_at"], embedder=embedder)
                graded.append({"seed": seed, "question": i, "category": q["category"], "pred": p["choice"],
                               "right": p["choice"] == q["answer"]})
            store.close()
    by_cat = {c: [sum(g["right"] for g in graded if g["category"] == c),
                  sum(g["category"] == c for g in graded)] for c in sorted({g["category"] for g in graded})}
    right = sum(g["right"] for g in graded)
    res = {"worlds": args.dev_worlds, "n": len(graded), "acc": round(right / max(1, len(graded)), 3),
           "acc_ci": wilson(right, len(graded)), "by_category": by_cat,
           "qa": {k: getattr(qcfg, k) for k in ("choice", "top_k", "moment_k", "latest_k", "colour_k",
                                                 "order_by_time", "match_options", "quoted_text",
                                                 "where_answered", "who_named")},
           "graded": graded}
    print("read-gt", json.dumps({k: v for k, v in res.items() if k != "graded"}), flush=True)
    (WORK / f"read-gt-{args.dev_worlds}-{args.out.name}.json").write_text(json.dumps(res, indent=1))
    return res


def read_dev(args) -> dict:
    """`read-dev`: a text-only hf folder (`--from-dir`) on multiple choice over 8 ground-truth memories of the dev
    text worlds (`--dev-worlds`, 4 minutes each; never rendered, cheap, so ~1,100 questions instead of the 132
    of `eval`), in torch by the runtime's rule (the option with the highest mean log-probability, E when
    P("not in memory") >= 0.5): what reader candidates are chosen on. `--dev-worlds 9000-9095` measures held-out
    text worlds the same way, once a reader is chosen. Saved to <work>/read-dev-<worlds>-<folder>.json with each
    question's grade, for paired comparisons."""
    import torch

    first, last = (int(x) for x in args.dev_worlds.split("-"))
    torch.set_num_threads(args.threads)
    tok, penc = tokenizer()
    ids = special_ids(tok)
    src = Path(args.from_dir)
    model = load_model(src, args.device).eval()
    _, first_tok, end_tok = answer_span(tok, NOT_IN_MEMORY)
    graded = []
    with torch.no_grad():
        for seed in range(first, last + 1):
            rng = random.Random(seed)
            c = text_world(seed, 4.0)
            for i, q in enumerate(c["questions"]):
                case = rank_case(c, q, rng, 8)
                if case is None:
                    continue
                msgs, options, right = case
                scores = option_scores(model, tok, penc, msgs, options + [NOT_IN_MEMORY], ids, args.device).tolist()
                abstain = math.exp(scores[-1] * (end_tok - first_tok)) >= 0.5  # the whole phrase's probability
                pred = "E" if abstain else LETTERS[max(range(len(options)), key=scores.__getitem__)]
                graded.append({"seed": seed, "question": i, "category": q["category"], "pred": pred,
                               "right": pred == LETTERS[right]})
    by_cat = {c: [sum(g["right"] for g in graded if g["category"] == c),
                  sum(g["category"] == c for g in graded)] for c in {g["category"] for g in graded}}
    right = sum(g["right"] for g in graded)
    res = {"from": str(src), "worlds": args.dev_worlds, "n": len(graded), "right": right,
           "acc": round(right / max(1, len(graded)), 4), "ci": wilson(right, len(graded)),
           "abstained": sum(g["pred"] == "E" for g in graded), "by_category": dict(sorted(by_cat.items()))}
    print("read-dev", json.dumps(res), flush=True)
    (WORK / f"read-dev-{args.dev_worlds}-{'_'.join(src.parts[-3:])}.json").write_text(
        json.dumps({**res, "graded": graded}))
    return res


def pixels(args) -> dict:
    """`pixels`: probe_pixels on the model folder's hf/ over held-out clips, printed and saved next to its evals."""
    import torch

    torch.set_num_threads(args.threads)
    tok, penc = tokenizer_from(args.out / "hf")
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|image_pad|>")}
    model = load_model(args.out / "hf", "cpu")
    result = probe_pixels(model, tok, penc, ids, "cpu", [clip(s) for s in HELDOUT_SEEDS[: args.eval_clips]])
    print(json.dumps(result, indent=1), flush=True)
    (WORK / f"pixels-{args.out.name}.json").write_text(json.dumps(result, indent=1))
    return result


def parity(args) -> float:
    """Last-token logits of one real writer prompt (3 earlier segments, odd keyframe counts included) in
    transformers (f32 checkpoint) vs llama.cpp (the shipped GGUF); also checks the token sequences agree."""
    import torch

    torch.set_num_threads(1)
    tok, penc = tokenizer()
    ids = special_ids(tok)
    c = clip(HELDOUT_SEEDS[0])
    i = next((j for j in range(3, len(c["segments"]))
              if any(len(s["frames"]) % 2 for s in c["segments"][j - 3:j + 1])), 3)
    msgs, _, _ = writer_example(c, i, 3, random.Random(0))
    e = penc.encode(msgs, None)
    batch = batch_tensors([(e, [], "write")], ids["<|endoftext|>"], ids["<|image_pad|>"], "cpu")
    model = load_model(args.out / "hf", "cpu").eval()
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                    pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]).logits[0, -1].numpy()
    with open_default(args.out) as be:
        toks = be.prompt_tokens(msgs)
        mine = [-1 if t == ids["<|image_pad|>"] else t for t in e.ids]
        same = toks == mine
        got = be.logits(msgs)
    diff = float(np.abs(got[: ref.shape[0]] - ref).max())
    res = {"tokens": len(e.ids), "token_sequences_equal": same, "max_abs_logit_diff": diff,
           "logit_scale": float(np.abs(ref).max())}
    print("parity", json.dumps(res), flush=True)
    (WORK / "parity.json").write_text(json.dumps(res))
    return diff


def widen(args) -> None:
    """`widen`: an hf folder (`--from-dir`) with more attention heads (`--heads`, `--kv-heads`) -> `--to-dir`,
    computing the same function: each old query head keeps its keys and values (copied to the kv head it now
    reads), the new heads start random and write through zero columns of o_proj, so training starts from the
    model as it was. Tried on the reader (plateaued at 3 heads reading through 1 kv head of 32 dims): not better
    in 40-65 CPU minutes, trained whole or new heads only (`--new-heads-only`; models/default/HISTORY.md, "Tried:
    a wider reader ...")."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    if not (args.from_dir and args.to_dir):
        raise SystemExit("widen: give --from-dir (the hf folder to widen) and --to-dir (the new one)")
    src, dst = Path(args.from_dir), Path(args.to_dir)
    old_model = load_model(src, "cpu").eval()
    tc = old_model.config.text_config
    H, KV, hd, D = tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim, tc.hidden_size
    H2, KV2 = args.heads, args.kv_heads
    if H2 < H or KV2 < KV or H2 % KV2:
        raise SystemExit(f"widen: --heads {H2} --kv-heads {KV2} must be at least {H} and {KV}, heads a multiple of kv heads")
    # old query head i reads kv head i // (H/KV); in the new model it reads i // (H2/KV2), which must hold that copy
    reads = {}
    for i in range(H):
        if reads.setdefault(i // (H2 // KV2), i // (H // KV)) != i // (H // KV):
            raise SystemExit(f"widen: old heads sharing a kv head under --heads {H2} --kv-heads {KV2} read different ones")
    torch.manual_seed(args.seed)
    cfg = json.loads((src / "config.json").read_text())
    cfg["text_config"].update(num_attention_heads=H2, num_key_value_heads=KV2)
    new_model = Qwen3VLForConditionalGeneration(type(old_model.config).from_dict(cfg))
    old = old_model.state_dict()
    new = {}
    for k, v in new_model.state_dict().items():
        w = old[k].clone()
        if v.shape != w.shape:
            std = tc.initializer_range
            if k.endswith("q_proj.weight"):
                w = torch.cat([w, torch.randn((H2 - H) * hd, D) * std])
            elif k.endswith(("k_proj.weight", "v_proj.weight")):
                heads = [torch.randn(hd, D) * std for _ in range(KV2)]
                for j2, j in reads.items():
                    heads[j2] = old[k][j * hd:(j + 1) * hd]
                w = torch.cat(heads)
            elif k.endswith("o_proj.weight"):
                w = torch.cat([w, torch.zeros(D, (H2 - H) * hd)], dim=1)
            else:
                raise SystemExit(f"widen: {k} changed shape {tuple(w.shape)} -> {tuple(v.shape)}")
        new[k] = w
    new_model.load_state_dict(new)
    new_model.save_pretrained(dst)
    for f in src.iterdir():  # tokenizer, chat template, image processor: the source's own
        if f.is_file() and f.name not in ("model.safetensors", "config.json", "generation_config.json"):
            shutil.copy2(f, dst / f.name)
    x = torch.randint(0, tc.vocab_size, (1, 64))
    with torch.no_grad():
        diff = float((old_model(input_ids=x).logits - new_model.eval()(input_ids=x).logits).abs().max())
    print(f"widen: {H}/{KV} -> {H2}/{KV2} heads, {sum(p.numel() for p in old_model.parameters())} -> "
          f"{sum(p.numel() for p in new_model.parameters())} parameters, max |logit difference| {diff:.1e}", flush=True)


def top_layer_params(model, n: int) -> list:
    """The last `n` decoder layers, the final norm and the output head trained, every other weight frozen: autograd
    then stops at the first trained layer, so a step skips the backward of the layers below (the cost the judge
    step spends most of its minutes on, `--top-layers`)."""
    for p in model.parameters():
        p.requires_grad_(False)
    lm = model.model.language_model
    trained = [*lm.layers[-n:], lm.norm, model.lm_head]
    for m in trained:
        for p in m.parameters():
            p.requires_grad_(True)
    return [p for m in trained for p in m.parameters()]


def new_head_params(model, old_heads: int, old_kv_heads: int) -> list:
    """A widened model (`widen`) trained in its new heads only: every other weight frozen, and the old heads'
    rows of q/k/v_proj and columns of o_proj kept by zeroing their gradient, so the model it grew from is kept
    but for AdamW's weight decay on those four matrices."""
    import torch

    for p in model.parameters():
        p.requires_grad_(False)
    hd = model.config.text_config.head_dim
    params = []
    for layer in model.model.language_model.layers:
        a = layer.self_attn
        for w, dim, n_old in ((a.q_proj.weight, 0, old_heads), (a.k_proj.weight, 0, old_kv_heads),
                              (a.v_proj.weight, 0, old_kv_heads), (a.o_proj.weight, 1, old_heads)):
            w.requires_grad_(True)
            w.register_hook(lambda g, dim=dim, n=n_old * hd: g.index_fill(dim, torch.arange(n), 0.0))
            params.append(w)
    return params


def export_reader(args) -> dict:
    """`reader`: a text-only read stage's hf folder (`--from-dir`) -> <out>/reader.gguf (`--as judge`:
    <out>/judge.gguf) through the project's exporter, with the parity of one answer prompt (transformers f32 vs the
    GGUF) saved next to the evals and, in a shipped folder, recorded under the manifest's `reader` (`judge`)."""
    import tempfile

    from edge_agent.export import export_hf

    src = Path(args.from_dir or stage_dir("read") / "hf")
    target = JUDGE_FILE if args.as_ == "judge" else READER_FILE
    with tempfile.TemporaryDirectory(dir=WORK) as tmp:
        model_path, _ = export_hf(src, Path(tmp), args.outtype, name=f"edge-agent-default-{args.as_}-s{args.seed}")
        shutil.copy2(model_path, args.out / target)
    res = answer_parity(src, args.out / target)
    print(f"{args.as_} parity", json.dumps(res), flush=True)
    (WORK / f"{args.as_}-parity.json").write_text(json.dumps(res))
    man_path = args.out / "manifest.json"
    if man_path.is_file():  # the shipped folder: record the file, its stage and its parity
        man = json.loads(man_path.read_text())
        done = src.parent / "done.json"
        man["files"][target] = {"sha256": sha256(args.out / target), "bytes": (args.out / target).stat().st_size}
        man[args.as_] = {**man.get(args.as_, {}), "recipe": args.recipe, "outtype": args.outtype, "parity": res,
                         "stage": json.loads(done.read_text()) if done.is_file() else None}
        man_path.write_text(json.dumps(man, indent=1) + "\n")
    return res


def answer_parity(hf_dir: Path, gguf_path: Path) -> dict:
    """Last-token logits of one held-out answer prompt (8 memories): transformers f32 (`hf_dir`) vs llama.cpp (a
    text GGUF), and whether the two tokenize it alike."""
    import torch

    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    torch.set_num_threads(1)
    tok, penc = tokenizer()
    tw = text_world(HELDOUT_SEEDS[0], 4.0)
    q = tw["questions"][0]
    mems, _ = show(tw, q, random.Random(0), evidence(tw, q)[0], remove=False, n_shown=8)
    msgs = build_messages(q["question"], [], mems, q["asked_at"])
    e = penc.encode(msgs, None)
    model = load_model(hf_dir, "cpu").eval()
    with torch.no_grad():
        ref = model(input_ids=torch.tensor([e.ids])).logits[0, -1].numpy()
    with LlamaCppBackend(gguf_path, None, n_threads=1, n_ctx=4096) as be:
        same = be.prompt_tokens(msgs) == list(e.ids)
        got = be.logits(msgs)
    return {"from": str(hf_dir), "tokens": len(e.ids), "token_sequences_equal": same,
            "max_abs_logit_diff": float(np.abs(got[: ref.shape[0]] - ref).max()),
            "logit_scale": float(np.abs(ref).max())}


def hf_from_gguf(args) -> dict:
    """`hf-from-gguf`: a shipped text GGUF (`--from-gguf`, e.g. models/default/reader.gguf) back to an hf folder
    (`--to-dir`) that a stage can continue from (`--from-dir`): the language model's tensors dequantized from the
    GGUF, the vision tower, config and tokenizer from the hf folder `--from-dir` (default models/default/hf: the
    reader and judge are copies of the writer's architecture). The hf folders a training run leaves in its work dir
    do not outlive the machine; the shipped GGUF does. Q8_0 keeps each weight to within half a step of its block's scale / 127, so the folder is the
    shipped model to within the parity printed (transformers on the folder vs llama.cpp on the GGUF)."""
    import gguf
    from safetensors.numpy import load_file, save_file

    from edge_agent.export.gguf_export import split_name

    src, dst, template = Path(args.from_gguf), Path(args.to_dir), Path(args.from_dir or OUT / "hf")
    weights = load_file(template / "model.safetensors")
    n_layers = json.loads((template / "config.json").read_text())["text_config"]["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3VL, n_layers)
    tensors = {t.name: t for t in gguf.GGUFReader(src).tensors}
    replaced = 0
    for hf_name, w in weights.items():
        split = split_name(hf_name)
        if split is None or split[0] != "text":
            continue
        t = tensors.get(names.get_name(split[1], try_suffixes=(".weight", ".bias")))
        if t is None:
            raise SystemExit(f"hf-from-gguf: {src} has no tensor for {hf_name}")
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if data.size != w.size:
            raise SystemExit(f"hf-from-gguf: {src}'s {t.name} holds {data.size} values, {hf_name} needs {w.size} "
                             "(not the architecture of models/default/hf)")
        weights[hf_name] = data.reshape(w.shape)
        replaced += 1
    folder_with_weights(template, dst, lambda path: save_file(weights, path, metadata={"format": "pt"}))
    res = {"tensors_from_gguf": replaced, **answer_parity(dst, src)}
    print("hf-from-gguf", json.dumps(res), flush=True)
    return res


def folder_with_weights(template: Path, dst: Path, save_weights) -> None:
    """`dst` = a copy of the hf folder `template` whose model.safetensors `save_weights(path)` writes, built beside
    it and renamed into place, so a crash while writing never leaves a half-written `dst`."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(template, tmp)
    save_weights(str(tmp / "model.safetensors"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def soup(args) -> dict:
    """`soup`: the weight-space average of two fine-tunes of one model, every parameter (1 - w) * `--from-dir` +
    w * `--with-dir` (w = `--weight`), config and tokenizer from `--from-dir`, -> `--to-dir`. A stage that moves
    one field tends to cost another (the room-change stage: room up, colour down); averaging the fine-tune with
    the model it started from keeps part of each (models/default/HISTORY.md, "A writer averaged ...")."""
    import torch
    from safetensors.torch import load_file, save_file

    if not (args.from_dir and args.with_dir and args.to_dir and args.weight is not None):
        raise SystemExit("soup: give --from-dir, --with-dir (two hf folders of one architecture), --weight and --to-dir")
    src, other, dst = Path(args.from_dir), Path(args.with_dir), Path(args.to_dir)
    for folder in (src, other):
        if not (folder / "model.safetensors").is_file():
            raise SystemExit(f"soup: {folder} has no model.safetensors (not an hf folder)")
    a, b = load_file(src / "model.safetensors"), load_file(other / "model.safetensors")
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise SystemExit(f"soup: {src} and {other} are not the same architecture (tensor names or shapes differ)")
    w = args.weight
    mixed = {k: (((1 - w) * a[k].float() + w * b[k].float()).to(a[k].dtype) if a[k].is_floating_point() else a[k])
             for k in a}
    folder_with_weights(src, dst, lambda path: save_file(mixed, path, metadata={"format": "pt"}))
    res = {"tensors": len(mixed), "weight": w, "from": str(src), "with": str(other)}
    print("soup", json.dumps(res), flush=True)
    return res


# `chain`: the whole recipe as one command inside one budget, from a random start. The shipped files are stages
# continued across sessions (about 16 CPU hours in all, README "What limits it"); the issue asks for about three
# hours, so this is the recipe a user can rerun in that budget, and what it reaches is measured apart
# (models/default/README.md, "Recipe"). Each step is a stage in its own work folder
# (WORK/chain/<step>), so a step resumes from its checkpoint and a finished step is skipped on a rerun. The flags come
# from the shipped lineage (the stages that moved a probe); the shares, the lookup step and the judge's flags were
# chosen by rules written first and measured on dev worlds 8000-8047, never held out (models/default/README.md,
# "Chain E").
CHAIN = (  # (step, share of the budget, the stage and its flags); "{prev}" is the step before's trained hf folder
    ("vision", 0.05, "stage vision --from-dir {prev} --batch 64 --probe-every 500"),
    ("write", 0.30, "stage write --from-dir {prev} --see-rows 16 --batch 16 --read-replay 0 --lr 1.5e-3 --w-key 8 "
                    "--write-windows 0 --room-change-share 0.25 --probe-every 1000"),
    ("lookup", 0.15, "stage lookup --from-dir {prev} --batch 32 --probe-every 100"),
    ("reader", 0.18, "stage read --from-dir {prev} --recall-share 0.5 --recall-colour --write-replay 0 --lr 1e-3 "
                     "--batch 16 --probe-every 100"),
    ("judge", 0.32, "stage read --from-dir {prev} --recall-share 0.5 --recall-colour --shown-from-start "
                    "--write-replay 0 --judge-pairs 16 --judge-same-moment 0.2 --judge-swapped 0.6 --lr 1e-3 --batch 0 "
                    "--probe-every 100"),
)
CHAIN_MINUTES = 174.0  # three hours less the 5.4 minutes of faces.npz's own training (tools/train_faces.py), reused


def chain_commands(args, work: Path) -> list[tuple[str, list[str], Path]]:
    """The chain's steps as (step, the train_default.py arguments, its work folder): each step's minutes are its
    share of `--minutes` (the time cap ends it, so the cosine schedule anneals by the clock), its start the step
    before's result, the first step's a random initialisation of the shipped shape (`chain_init`)."""
    total = args.minutes or CHAIN_MINUTES
    prev = work / "init" / "hf"
    steps = []
    for step, share, flags in CHAIN:
        folder = work / step
        argv = flags.format(prev=prev).split() + [
            "--minutes", f"{share * total:g}", "--steps", "1000000", "--seed", str(args.seed),
            "--threads", str(args.threads), "--device", args.device, "--keyframes", str(KEYFRAMES),
            "--frame-size", str(FRAME_SIZE), "--extra-clips", str(args.extra_clips),
            "--save-minutes", str(args.save_minutes)]
        steps.append((step, argv, folder))
        prev = folder / f"stage-{argv[1]}" / "hf"  # argv is "stage <name> ...": the stage writes stage-<name>/
    return steps


def chain_init(seed: int, dst: Path) -> None:
    """A randomly initialised model of the shipped shape and tokenizer (seeded): the chain's starting point."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, Qwen3VLForConditionalGeneration

    if (dst / "model.safetensors").is_file():
        return
    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(ensure_base())
    model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    folder_with_weights(ensure_base(), dst, lambda path: save_file(weights, path, metadata={"format": "pt"}))


def chain(args, run=None) -> dict:
    """`chain`: every step of CHAIN not yet done (each resumable), then the model folder `--out`: the writer
    (`finalize`), reader.gguf and judge.gguf (`reader`), the shipped faces.npz, and a manifest with the shipped
    profile and the chain's record (each step's seconds and probes). `run(argv, env)` runs one step (a test's fake)."""
    import subprocess

    def run_tool(argv, env):
        code = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv], env=env).returncode
        if code:
            raise SystemExit(f"chain: `train_default.py {argv[0]} {argv[1]}` exited {code}; rerun chain to resume")

    run = run or run_tool
    work = WORK / "chain"
    out = Path(args.out)
    if out.resolve() == OUT.resolve():
        raise SystemExit(f"chain: --out {out} is the shipped model; give a new folder")
    chain_init(args.seed, work / "init" / "hf")
    record = {"seed": args.seed, "minutes": args.minutes or CHAIN_MINUTES, "from": "random initialisation",
              "steps": {}}
    steps = chain_commands(args, work)
    for step, argv, folder in steps:
        folder.mkdir(parents=True, exist_ok=True)
        for shared in ("data", "synth"):  # the rendered clips are the same for every step: cut once, in WORK
            (WORK / shared).mkdir(parents=True, exist_ok=True)
            if not (folder / shared).exists():
                (folder / shared).symlink_to(WORK / shared)
        print(f"[chain] {step}: train_default.py {' '.join(argv)}", flush=True)
        run(argv, dict(os.environ, TRAIN_DEFAULT_WORK=str(folder)))
        record["steps"][step] = json.loads((folder / f"stage-{argv[1]}" / "done.json").read_text())
    record["seconds"] = sum(d["seconds"] for d in record["steps"].values())
    hf = {step: folder / f"stage-{argv[1]}" / "hf" for step, argv, folder in steps}
    common = ["--out", str(out), "--keyframes", str(KEYFRAMES), "--frame-size", str(FRAME_SIZE),
              "--outtype", args.outtype, "--seed", str(args.seed)]
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TRAIN_DEFAULT_WORK=str(work))
    run(["finalize", "--from-dir", str(hf["write"]), *common], env)
    run(["reader", "--from-dir", str(hf["reader"]), *common], env)
    run(["reader", "--as", "judge", "--from-dir", str(hf["judge"]), *common], env)
    shutil.copy2(OUT / "faces.npz", out / "faces.npz")
    shipped = json.loads((OUT / "manifest.json").read_text())
    man = {"recipe": "tools/train_default.py chain", "profile": shipped["profile"], "chain": record,
           "files": {str(p.relative_to(out)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                     for p in sorted(out.rglob("*")) if p.is_file() and p.name != "manifest.json"}}
    (out / "manifest.json").write_text(json.dumps(man, indent=1) + "\n")
    print(f"[chain] {record['seconds'] / 3600:.2f} h of training in {len(steps)} steps -> {out}", flush=True)
    return record


def judge_cases(n: int, seeds: list[int] = HELDOUT_SEEDS) -> list[tuple[list[TaskQuestion], str, str]]:
    """`n` judge cases with a better memory (no ties), spread over the seeds' 9-minute worlds (held out: not the
    4-minute ones the training probe watches)."""
    rng = random.Random(11)
    cases = []
    for i, s in enumerate(seeds):
        c = text_world(s, 9.0)
        for _ in range(64):
            case = judge_case(c, rng)
            if case is not None and case[1] != case[2]:
                cases.append(case)
            if len(cases) >= n * (i + 1) // len(seeds):
                break
    return cases


def measure_judge(judge, cases) -> dict:
    """Phase Two's judge as `adapt` asks it (llama.cpp, the JSON schema, greedy) on each case in both orderings:
    position consistency (both orderings name the same memory; the issue's target), both verdicts right, and
    single verdicts right."""
    from edge_agent.adapt.reward import ask_judge

    verdicts = [(ask_judge(judge, tq, good, bad), ask_judge(judge, tq, bad, good)) for tq, good, bad in cases]
    n = len(verdicts)
    flat = [v for pair in verdicts for v in pair]
    consistent = sum((a, b) in (("A", "B"), ("B", "A")) for a, b in verdicts)
    return {"answered_by": Path(judge.model_path).name, "pairs": n,
            "position_consistent": round(consistent / max(1, n), 3), "position_consistent_ci": wilson(consistent, n),
            "both_right": round(sum(v == ("A", "B") for v in verdicts) / max(1, n), 3),
            "verdict_acc": round(sum(v == w for pair in verdicts for v, w in zip(pair, "AB")) / max(1, 2 * n), 3),
            "hist": {str(v): flat.count(v) for v in ("A", "B", "tie", None)}}


JUDGE_SECTION = {JUDGE_FILE: "judge", READER_FILE: "reader", "model.gguf": "measured"}  # manifest[section]["judge"]


def judge_eval(args) -> dict:
    """`judge`: the folder's judge as `adapt` opens it (judge.gguf, else reader.gguf, else the writer) on held-out
    cases, recorded in the folder's manifest under `judge`, `reader` or `measured` by the file that judged (as
    `judge`, or `judge_same_moment` / `judge_swapped` for cases of one kind alone). With
    `--dev`, on the dev seeds instead, printed only: what candidates are chosen on."""
    seeds = DEV_SEEDS if args.dev else HELDOUT_SEEDS
    with open_default(args.out) as writer, open_answerer(args.out, writer, (JUDGE_FILE, READER_FILE)) as judge:
        res = measure_judge(judge, judge_cases(args.judge_eval_pairs, seeds))
    res["seeds"] = f"{seeds[0]}-{seeds[-1]} (9-minute worlds)"
    print("judge", json.dumps(res), flush=True)
    (WORK / f"judge-{args.out.name}{'-dev' if args.dev else ''}.json").write_text(json.dumps(res))
    man_path = args.out / "manifest.json"
    if man_path.is_file() and not args.dev:
        man = json.loads(man_path.read_text())
        kind = {(0.0, 0.0): "judge", (1.0, 0.0): "judge_same_moment", (0.0, 1.0): "judge_swapped"}.get(
            (JUDGE_SAME_MOMENT[0], JUDGE_SWAPPED[0]), "judge_mixed")  # by the kind of cases (--judge-same-moment ...)
        man.setdefault(JUDGE_SECTION[res["answered_by"]], {})[kind] = res
        man_path.write_text(json.dumps(man, indent=1) + "\n")
    return res


def earlier_segment_counts(text: str) -> list[int]:
    """`--write-windows`: comma-separated counts of earlier segments, each 0-4 ("0" or "0,1,2")."""
    try:
        counts = [int(k) for k in text.split(",")]
    except ValueError:
        counts = []
    if not counts or not all(0 <= k <= 4 for k in counts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected counts 0-4 separated by commas, e.g. 0 or 0,1,2")
    return counts


def share(text: str) -> float:
    """A share, 0-1 (`--room-change-share`, `--weight`)."""
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a share from 0 to 1, e.g. 0.5")
    return v


def cut_settings(args) -> tuple[int, int]:
    """(frame size, keyframes a segment) the clips are cut at: `--frame-size` / `--keyframes` where given, else for
    `eval` the `--out` folder's profile (a folder is measured as the runtime cuts segments for it), else the
    recipe's own (FRAME_SIZE, KEYFRAMES). Raises ConfigError naming the flag or the folder."""
    frame_size, keyframes = FRAME_SIZE, KEYFRAMES
    if args.what == "eval":
        try:
            capture = folder_config(args.out).capture
        except ConfigError as e:
            raise ConfigError(f"--out {args.out}: {e}") from None
        frame_size, keyframes = capture.frame_size, capture.keyframes_per_segment
    try:  # the config's own checks
        capture = CaptureConfig(frame_size=frame_size if args.frame_size is None else args.frame_size,
                                keyframes_per_segment=keyframes if args.keyframes is None else args.keyframes)
    except ConfigError as e:
        raise ConfigError(f"--frame-size / --keyframes: {e}") from None
    return capture.frame_size, capture.keyframes_per_segment


def main() -> None:
    global FRAME_SIZE, KEYFRAMES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["stage", "data", "finalize", "reader", "manifest", "eval", "parity",
                                     "pixels", "judge", "own", "widen", "read-dev", "read-gt", "hf-from-gguf", "soup",
                                     "chain"])
    ap.add_argument("name", nargs="?", choices=STAGES + EXTRA_STAGES, help="the stage (for `stage`)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="planned steps of the stage (cosine schedule)")
    ap.add_argument("--batch", type=int, default=None, help="answer: question groups; vision: chunks; write: rows")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--minutes", type=float, default=None,
                    help=f"wall-clock cap of the stage; chain: of all its stages together (default {CHAIN_MINUTES:g})")
    ap.add_argument("--w-key", type=float, default=4.0, help="loss weight of answer/citation/content tokens")
    ap.add_argument("--w-end", type=float, default=1.0,
                    help="write: loss weight of each memory sentence's closing full stop (end the memory, or go on)")
    ap.add_argument("--probe-every", type=int, default=None)
    ap.add_argument("--shown-from-start", action="store_true",
                    help="read: show 1-8 memories from the first step (a continuation of a model that already read "
                         "8), not the 2 -> 8 curriculum")
    ap.add_argument("--recall-colour", action="store_true",
                    help="recall rows also ask the colour of an object named with where it was put or picked up")
    ap.add_argument("--recall-share", type=float, default=0.0,
                    help="read: share of each batch drawn from recall_row (facts at random: only reading answers them)")
    ap.add_argument("--write-windows", type=earlier_segment_counts, default=[0, 1, 2, 3, 4],
                    help="write: how many earlier segments a writer row shows, drawn evenly from these (comma "
                         "separated; 0 alone trains the window of 1 the default's profile writes with)")
    ap.add_argument("--see-rows", type=int, default=0,
                    help="write/joint: rows per step of a segment's keyframes alone -> the object picked, put or carried "
                         "(train_default.see_row)")
    ap.add_argument("--room-change-share", type=share, default=0.0,
                    help="write/joint: share of writer rows drawn from segments whose keyframes show two rooms (the "
                         "wearer walked from one to the other); 0 draws segments evenly, as they come")
    ap.add_argument("--extra-clips", type=int, default=0,
                    help="data/vision/write/read/joint: this many more rendered clips (seeds 10000..) beside the "
                         "recipe's 200")
    ap.add_argument("--read-replay", type=int, default=6,
                    help="write: read-stage rows replayed per step (0: every step to writing, as the shipped "
                         "writer's last stage, since reader.gguf answers; README \"A writer-only write stage\")")
    ap.add_argument("--write-replay", type=int, default=2,
                    help="read: writer rows replayed per step (0 trains a text-only reader, shipped as reader.gguf)")
    ap.add_argument("--judge-pairs", type=int, default=0,
                    help="read: judge pairs per step (each in both orderings), so the reader can judge for Phase Two")
    ap.add_argument("--judge-same-moment", type=float, default=0.0,
                    help="read, judge: share of judge cases that are two true memories of one moment keeping "
                         "different facts (the kind of pair Phase Two's candidates make)")
    ap.add_argument("--judge-swapped", type=float, default=0.0,
                    help="read, judge: share of judge cases that are a memory against a copy with one fact (face, "
                         "note, place, colour, kind, room) swapped, told apart by a listed answer")
    ap.add_argument("--own-share", type=float, default=0.0,
                    help="read: share of each batch over the writer's own memories of fresh clips (`own`; own_row)")
    ap.add_argument("--hard-share", type=float, default=0.0,
                    help="read: share of read rows whose other memories share the most words with the question "
                         "(as retrieval brings them), not drawn at random")
    ap.add_argument("--rank-questions", type=int, default=0,
                    help="read: multiple-choice questions per step trained to rank their right option first by the "
                         "product's likelihood rule (rank_step), beside the read rows")
    ap.add_argument("--rank-scale", type=float, default=4.0,
                    help="read: the options' mean log-probabilities are multiplied by this before the softmax")
    ap.add_argument("--rank-weight", type=float, default=1.0, help="read: weight of the ranking loss")
    ap.add_argument("--dev-worlds", default="8000-8095", help="read-dev, read-gt: the text worlds, FIRST-LAST")
    ap.add_argument("--own-clips", type=int, default=400, help="own: fresh clips (seeds 30000..) the writer writes")
    ap.add_argument("--heads", type=int, default=6, help="widen: attention heads of the widened model")
    ap.add_argument("--kv-heads", type=int, default=6, help="widen: key/value heads of the widened model")
    ap.add_argument("--to-dir", default=None, help="widen, hf-from-gguf, soup: the new hf folder")
    ap.add_argument("--with-dir", default=None, help="soup: the hf folder averaged with --from-dir's")
    ap.add_argument("--weight", type=share, default=None, help="soup: --with-dir's share of each parameter, 0-1")
    ap.add_argument("--from-gguf", default=str(OUT / READER_FILE), help="hf-from-gguf: the text GGUF to read back")
    ap.add_argument("--top-layers", type=int, default=0,
                    help="read: train only the last N decoder layers, the final norm and the output head (0: all); "
                         "a step then skips the backward of the layers below")
    ap.add_argument("--new-heads-only", type=int, nargs=2, metavar=("HEADS", "KV_HEADS"), default=None,
                    help="read: train only the heads `widen` added to a model that had HEADS / KV_HEADS")
    ap.add_argument("--save-minutes", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; 1 is faster than 2 on a machine whose 2 cores are busy with other work")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--pack", action="store_true",
                    help="read: each step's text rows and ranked questions in one padded forward each (for a GPU: "
                         "unpacked, a step is a forward per row and per question, launch-bound there: 3.3 s a step "
                         "on an H100 against 21 s on 2 CPU threads; on a CPU packing repeats each question's prompt "
                         "per option)")
    ap.add_argument("--outtype", default="q8_0",
                    help="GGUF type of model.gguf and mmproj.gguf (q8_0, as shipped and as a device runs it | f16 | f32)")
    ap.add_argument("--from-dir", default=None, help="finalize: this hf folder instead of the last stage's; "
                    "hf-from-gguf: the folder giving the rest (default models/default/hf); soup: the first folder")
    ap.add_argument("--dev", action="store_true", help="judge: on the dev seeds (8000-8007), not recorded")
    ap.add_argument("--as", dest="as_", choices=["reader", "judge"], default="reader",
                    help="reader: export the text-only stage as reader.gguf (answers) or judge.gguf (judges "
                         "Phase Two's pairs)")
    ap.add_argument("--measured-name", default="cand2", help="manifest: the candidate folder name whose eval files to embed")
    ap.add_argument("--previous-name", default="cand1", help="manifest: the previously shipped candidate, for comparison")
    ap.add_argument("--eval-clips", type=int, default=12)
    ap.add_argument("--choice", default="score", choices=["score", "generate"],
                    help="eval: how multiple choice is answered (qa.choice; the default model ships with score)")
    ap.add_argument("--judge-eval-pairs", type=int, default=120, help="judge: held-out pairs (each in both orderings)")
    ap.add_argument("--eval-segments", type=int, default=12)
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--recipe", default="tools/train_default.py run",
                    help="manifest: the commands that made the model (starting with tools/train_default.py)")
    ap.add_argument("--frame-size", type=int, default=None,
                    help=f"keyframe longest side (capture.frame_size) the model is trained and profiled at (default "
                         f"{FRAME_SIZE}; eval: the --out folder's profile)")
    ap.add_argument("--keyframes", type=int, default=None,
                    help=f"keyframes a segment is cut to (capture.keyframes_per_segment) for training and the profile "
                         f"(default {KEYFRAMES}; eval: the --out folder's profile)")
    ap.add_argument("--out", type=Path, default=OUT, help="model folder (hf/, model.gguf, mmproj.gguf)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)  # every command may save its results there
    try:
        FRAME_SIZE, KEYFRAMES = cut_settings(args)
    except ConfigError as e:
        sys.exit(str(e))
    if args.recall_colour:
        RECALL_KINDS.extend(["colour", "colour"])
    JUDGE_SAME_MOMENT[0] = args.judge_same_moment
    JUDGE_SWAPPED[0] = args.judge_swapped
    if args.what == "data":
        for s in VIDEO_SEEDS + list(range(EXTRA_VIDEO_SEED0, EXTRA_VIDEO_SEED0 + args.extra_clips)) + HELDOUT_SEEDS:
            clip(s)
        print("data ready", flush=True)
    elif args.what == "stage":
        run_stage(args.name, args)
    elif args.what == "finalize":
        finalize(args)
    elif args.what == "reader":
        export_reader(args)
    elif args.what == "manifest":
        manifest(args)
    elif args.what == "parity":
        parity(args)
    elif args.what == "pixels":
        pixels(args)
    elif args.what == "eval":
        evaluate(args)
    elif args.what == "judge":
        judge_eval(args)
    elif args.what == "own":
        write_own(args)
    elif args.what == "widen":
        widen(args)
    elif args.what == "read-gt":
        read_gt(args)
    elif args.what == "read-dev":
        read_dev(args)
    elif args.what == "hf-from-gguf":
        hf_from_gguf(args)
    elif args.what == "soup":
        soup(args)
    elif args.what == "chain":
        chain(args)


if __name__ == "__main__":
    main()
