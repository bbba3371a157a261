"""The embedded default model (models/default/): the shipped files are the ones the manifest names, it loads in
llama.cpp, writes valid memories for held-out synthetic segments, answers held-out questions from memories far
from a constant letter, cites what it answers from, gives open questions a text answer, and transformers and
llama.cpp agree on a real writer prompt. Thresholds are the numbers measured at training time (models/default/
README.md, manifest.json) minus a margin; the accuracy floors are one-sided and above chance."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import load_tool
from edge_agent.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"
REPLAY_START = 1796461200  # 2026-12-05 09:00 UTC: the CLI loop replays its clip from a fixed clock time
HELDOUT_SEED = 9001  # tools/train_default.py never trains on seeds 9000..9999
MAX_BYTES = 60 * 1024 * 1024

ROOMS = ("kitchen", "office", "living room", "bedroom")


def _recipe():
    """tools/train_default.py as a module: its question groups are the exact rows the model was trained on."""
    return load_tool("train_default")


def _room(text: str) -> set[str]:
    return {r for r in ROOMS if r in text.lower()}


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_shipped_files_match_the_manifest():
    from edge_agent.export import base_model_hash
    from edge_agent.vlm.gguf_info import check_model_pair

    manifest = json.loads((DEFAULT / "manifest.json").read_text())
    listed = manifest["files"]
    on_disk = {str(p.relative_to(DEFAULT)) for p in DEFAULT.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert on_disk == set(listed), f"unlisted {on_disk - set(listed)}, missing {set(listed) - on_disk}"
    for name, meta in listed.items():
        p = DEFAULT / name
        if not name.endswith(".md"):  # README and HISTORY may gain notes; weights and configs never change silently
            assert p.stat().st_size == meta["bytes"], name
            assert _sha256(p) == meta["sha256"], name
    for key in ("seed", "generator", "recipe", "stages", "measured"):
        assert key in manifest, key
    total = sum(f.stat().st_size for f in DEFAULT.rglob("*") if f.is_file())
    assert total <= MAX_BYTES, f"models/default is {total / 2**20:.1f} MB"
    text, proj = check_model_pair(DEFAULT / "model.gguf", DEFAULT / "mmproj.gguf")
    assert text["base_model_hash"] == proj["base_model_hash"] == base_model_hash(DEFAULT / "hf")
    cfg = json.loads((DEFAULT / "hf" / "config.json").read_text())
    assert cfg["text_config"]["num_hidden_layers"] >= 24  # Phase Two's layer 22 exists


@pytest.fixture(scope="module")
def backend():
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    be = LlamaCppBackend(DEFAULT / "model.gguf", DEFAULT / "mmproj.gguf", n_threads=1, n_ctx=4096,
                         image_cache_size=32, seed=0)
    yield be
    be.close()


def _profile_capture():
    """The capture the shipped profile asks for (its frame size and keyframe count), as `edge-agent run` cuts for it."""
    from edge_agent.config import CaptureConfig

    profile = json.loads((DEFAULT / "manifest.json").read_text())["profile"]
    return CaptureConfig(frame_size=profile["frame_size"], keyframes_per_segment=profile["keyframes_per_segment"])


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """A held-out clip cut by the runtime's capture path, with its ground-truth captions and questions."""
    from edge_agent.capture import open_source, segment_stream
    from edge_agent.synth import generate

    paths = generate(seed=HELDOUT_SEED, minutes=2, out_dir=tmp_path_factory.mktemp("heldout"))
    with open_source(str(paths.video)) as src:
        segs = list(segment_stream(src, _profile_capture()))
    captions = {s["index"]: s["caption"] for s in json.loads(paths.events.read_text())["segments"]}
    return segs, captions, json.loads(paths.questions.read_text())["questions"]


def test_manifest_rebuild_keeps_the_previous_models_record_and_the_hand_kept_ones(tmp_path, monkeypatch):
    """`train_default.py manifest` after a retrain: the old weights' record moves under "previous" (recipe and
    measurements with it), records kept by hand (runs tried and not shipped) are carried, and the files are
    hashed anew. Rebuilt again on the same weights, the chain stays one link long."""
    import argparse

    td = _recipe()
    monkeypatch.setattr(td, "WORK", tmp_path / "work")
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "eval-new.json").write_text(json.dumps({"mc_acc_gt_memories": 0.5}))
    out = tmp_path / "model"
    (out / "hf").mkdir(parents=True)
    (out / "hf" / "model.safetensors").write_bytes(b"new weights")
    old = {"recipe": "the old recipe", "measured": {"mc": 0.4}, "stages": {}, "profile": {},
           "files": {"hf/model.safetensors": {"sha256": "0" * 64, "bytes": 11}},
           "tried_not_shipped": {"a run": {"acc": 0.3}}, "previous": {"recipe": "older"}}
    (out / "manifest.json").write_text(json.dumps(old))
    args = argparse.Namespace(out=out, measured_name="new", previous_name="old", seed=0, recipe="the new recipe",
                              extra_clips=0)
    for _ in range(2):
        td.manifest(args)
        man = json.loads((out / "manifest.json").read_text())
        assert man["recipe"] == "the new recipe"
        assert man["measured"]["writer_and_mc_gt_memories"] == {"mc_acc_gt_memories": 0.5}
        assert man["previous"]["recipe"] == "the old recipe" and man["previous"]["weights_sha256"] == "0" * 64
        assert man["previous"]["measured"] == {"mc": 0.4} and man["previous"]["previous"] == {"recipe": "older"}
        assert man["tried_not_shipped"] == {"a run": {"acc": 0.3}}
        assert man["files"]["hf/model.safetensors"]["sha256"] == _sha256(out / "hf" / "model.safetensors")


def test_recall_rows_can_only_be_answered_by_copying_the_cited_memory():
    """The read stage's recall rows (--recall-share): each asked-about key occurs in exactly one memory, the
    answer is that memory's own words and the citation its id; with that memory removed the answer is "not in
    memory"; the same seed gives the same rows."""
    rec = _recipe()
    asked = set()
    for i in range(200):
        n = 2 + i % 7
        msgs, rep, kind = rec.recall_row(random.Random(i), n)
        assert kind == "open"
        prompt = msgs[1].parts[0]
        lines = re.findall(r"^\[(\d+)\] \S+ (.*)$", prompt, re.M)
        assert len(lines) == n
        question = re.search(r"Question: (.*)", prompt).group(1)
        m = re.fullmatch(r"Where did I leave the (.+)\?|Who did I meet in the (.+)\?|"
                         r"What did the note at the door in the (.+) say\?", question)
        assert m, question
        i_kind = next(j for j, g in enumerate(m.groups()) if g)
        key = m.groups()[i_kind]
        asked.add(i_kind)
        holds = (rf"I put the {key} ", rf"I met <face_\d> in the {key}\.", rf"note at the door in the {key} ")[i_kind]
        holding = [(int(k), t) for k, t in lines if re.search(holds, t)]
        assert len(holding) == 1, (question, lines)
        reply = json.loads(rep)
        assert reply["citations"] == [holding[0][0]]
        assert reply["answer"] in holding[0][1]
        gone, rep_gone, _ = rec.recall_row(random.Random(i), n, remove=True)
        assert json.loads(rep_gone) == {"answer": "not in memory", "citations": []}
        assert holding[0][1] not in gone[1].parts[0]
        assert rec.recall_row(random.Random(i), n) == (msgs, rep, kind)
    assert asked == {0, 1, 2}


def test_hard_read_rows_show_the_memories_retrieval_would_bring():
    """`--hard-share`: the other memories of a read row are those sharing the most content words with the
    question, not a random draw; the evidence still comes first, and a row with the evidence removed shows none
    of it. Without `hard` the draw is as before (the shipped recipe's rows are unchanged)."""
    rec = _recipe()
    tw = rec.text_world(20001, 4.0)
    checked = 0
    for q in tw["questions"]:
        holds, told = rec.evidence(tw, q)
        if not told or not q["options"]:
            continue
        asked = rec.content(q["question"])
        earlier = [s for s in tw["segments"] if s["t_end"] <= q["asked_at"] + 1e-6]
        mems, ids = rec.show(tw, q, random.Random(3), holds, remove=False, n_shown=4, hard=True)
        assert [m["id"] for m in mems[: len(holds)]] == [ids[s["index"]] for s in holds]
        shown = {m["id"] for m in mems}
        overlap = {ids[s["index"]]: len(rec.content(s["caption"]) & asked) for s in earlier if s not in holds}
        left = [v for i, v in overlap.items() if i not in shown]
        if left and mems[len(holds):]:
            assert min(overlap[m["id"]] for m in mems[len(holds):]) >= max(left)
            checked += 1
        gone, _ = rec.show(tw, q, random.Random(3), holds, remove=True, n_shown=4, hard=True)
        assert not {m["id"] for m in gone} & {ids[s["index"]] for s in holds}
        assert rec.show(tw, q, random.Random(3), holds, remove=False, n_shown=4) == \
            rec.show(tw, q, random.Random(3), holds, remove=False, n_shown=4, hard=False)
    assert checked >= 10


def test_judge_rows_show_the_same_two_memories_in_both_orderings_with_the_verdict_following_the_better():
    """The read stage's judge rows (--judge-pairs): the better memory is A in the first row and B in the second,
    the questions are the same, so no constant verdict lowers the loss; the held-out cases never tie."""
    rec = _recipe()
    world = rec.text_world(20001, 4.0)
    rng = random.Random(3)
    pairs = [p for p in (rec.judge_pair(world, rng) for _ in range(40)) if len(p) == 2]
    assert len(pairs) >= 10
    for (m1, r1, k1), (m2, r2, k2) in pairs:
        assert (json.loads(r1), json.loads(r2), k1, k2) == ({"better": "A"}, {"better": "B"}, "judge", "judge")
        t1, t2 = m1[1].parts[0], m2[1].parts[0]
        qs1, mem1 = t1.split("\n\nMemory A: ")
        qs2, mem2 = t2.split("\n\nMemory A: ")
        a1, b1 = mem1.split("\nMemory B: ")
        a2, b2 = mem2.split("\nMemory B: ")
        assert qs1 == qs2 and a1 == b2.split("\n\n")[0] and a2 == b1.split("\n\n")[0] and a1 != a2
    cases = rec.judge_cases(24)
    assert len(cases) == 24 and all(good != bad for _, good, bad in cases)


def test_same_moment_judge_cases_are_two_true_memories_told_apart_by_a_listed_answer():
    """`--judge-same-moment`: both memories are true captions of one moment (the world's own and one filled with
    other facts first, as the writer's candidates differ), and a listed question's answer is in the better one only."""
    rec = _recipe()
    world = rec.text_world(20002, 6.0)
    variants = rec.moment_variants(world)
    captions = {s["caption"]: s["index"] for s in world["segments"]}
    rng = random.Random(5)
    cases = [c for c in (rec.same_moment_case(world, rng) for _ in range(40)) if c]
    assert len(cases) >= 10
    for listed, good, bad in cases:
        index = captions.get(good, captions.get(bad))
        assert {good, bad} <= {world["segments"][index]["caption"], *variants[index]} and good != bad
        told = [q.text.split(" Answer: ")[1] for q in listed if " Answer: " in q.text]
        assert any(rec.content(a) <= rec.content(good) and not rec.content(a) <= rec.content(bad) for a in told)


def test_writer_targets_say_each_sentence_once():
    """The world captions an activity cut into two events in one segment twice ("I was watching tv in the living
    room." x2): a memory the runtime refuses. The write stage's targets and context memories say it once."""
    rec = _recipe()
    twice = "I was watching tv in the living room. I was watching tv in the living room."
    assert rec.each_sentence_once(twice) == "I was watching tv in the living room."
    kept = "I put the red cup on the desk in the office. I walked into the kitchen."
    assert rec.each_sentence_once(kept) == kept
    frame = np.zeros((96, 128, 3), np.uint8)
    segments = [{"index": i, "t_start": 10.0 * i, "t_end": 10.0 * i + 10, "caption": twice, "frame_idx": [5 * i],
                 "frame_t": [10.0 * i], "frames": [frame]} for i in range(2)]
    msgs, target, _ = rec.writer_example({"seed": 1, "segments": segments}, 1, 1, random.Random(0))
    assert json.loads(target)["description"] == "I was watching tv in the living room."
    assert twice not in str(msgs)  # the earlier segment's memory, when shown, says it once too


@pytest.mark.parametrize("window, earlier", [(1, 0), (3, 2)])
def test_eval_writes_with_the_windows_earlier_segments_as_the_runtime_does(window, earlier):
    """`eval` and `own` write a clip as the runtime does under the folder's profile: the new segment and the
    window - 1 segments before it (the embedded default's window is 1: the new segment alone)."""
    from edge_agent.config import WriterConfig
    from edge_agent.vlm.fake import ScriptedBackend

    rec = _recipe()
    frame = np.zeros((96, 128, 3), np.uint8)
    segments = [{"index": i, "t_start": 10.0 * i, "t_end": 10.0 * i + 10, "caption": "", "frame_idx": [5 * i],
                 "frame_t": [10.0 * i], "frames": [frame]} for i in range(4)]
    backend = ScriptedBackend(lambda call: json.dumps({"description": "I was in the kitchen."}))
    written = list(rec.written(backend, {"seed": 1, "segments": segments}, WriterConfig(window_segments=window)))
    assert [r.text for _, r in written] == ["I was in the kitchen."] * 4
    assert [c.prompt.count("Earlier segment") for c in backend.calls] == [min(i, earlier) for i in range(4)]
    assert rec.folder_config(DEFAULT).writer.window_segments == 1  # the shipped profile


def test_w_end_weights_the_full_stops_where_a_memory_ends_or_goes_on():
    """`--w-end`: in a memory, the token of each sentence's closing full stop (". I" goes on, '."}' ends) gets the
    weight; nothing else changes, and without it the weights are the shipped recipe's."""
    rec = _recipe()
    tok, _ = rec.tokenizer_from(DEFAULT / "hf")
    text = json.dumps({"description": "I was typing on the laptop at the desk in the office. "
                                      "I picked up the orange bottle from the cabinet in the office."})
    plain = rec.reply_weights(tok, "write", text, 8.0)
    ended = rec.reply_weights(tok, "write", text, 8.0, w_end=16.0)
    pieces = [tok.decode([i]) for i in tok.encode(text, add_special_tokens=False).ids] + ["<|im_end|>"]
    changed = [p for p, a, b in zip(pieces, plain, ended) if a != b]
    assert changed == [".", '."}'] and all(b == 16.0 for a, b in zip(plain, ended) if a != b)
    answer = json.dumps({"answer": "on the desk. I think", "citations": [3]})
    assert rec.reply_weights(tok, "open", answer, 4.0, w_end=16.0) == rec.reply_weights(tok, "open", answer, 4.0)


def test_the_writer_eval_reads_whole_words_so_a_bookshelf_is_no_book():
    """The table's kind and colour compare the words a memory names with the caption's. A substring test had
    counted the book in every "bookshelf" (kind 59.3 % on the writer shipped until 2026-12-05, whole words 71.2 %)."""
    rec = _recipe()
    said = rec.fields("I moved the orange bottle from the bookshelf to the desk in the office.")
    assert said == {"room": {"office"}, "colour": {"orange"}, "object": {"bottle"}}
    note = rec.fields('I read a note at the door in the living room that said "WIFI BLUE40".')
    assert note == {"room": {"living room"}, "colour": set(), "object": set()}
    assert rec.fields("I picked up the blue book from the bedroom.")["object"] == {"book"}


def test_own_rows_answer_where_the_writers_memory_holds_it_and_abstain_where_it_does_not():
    """The read stage's rows over the writer's own memories (`--own-share`): a question whose evidence memory
    holds the answer is answered from it and cites it; the same question over a memory that lost the fact, or
    with its evidence removed, is "not in memory"; counting and event order are left to ground-truth rows."""
    rec = _recipe()
    world = rec.text_world(20003, 4.0)
    qs = [q for q in world["questions"] if q["category"] in ("attribute", "object_location", "activity_at_time")]
    assert qs
    checked = 0
    for q in qs:
        holds, told = rec.evidence(world, q)
        if not told:
            continue
        right = {**world, "segments": [{**s, "memory": s["caption"]} for s in world["segments"]]}
        lost = {**world, "segments": [{**s, "memory": "I looked around the room." if s in holds else s["caption"]}
                                      for s in world["segments"]]}
        msgs, rep, _ = rec.own_row(right, q, random.Random(0), 4, remove=False)
        shown = dict(re.findall(r"^\[(\d+)\] \S+ (.*)$", msgs[1].parts[0], re.M))
        reply = json.loads(rep)
        assert reply["answer"] == q["open_answer"] and reply["citations"]
        assert all(shown[str(i)] in [s["caption"] for s in holds] for i in reply["citations"])
        _, rep_lost, _ = rec.own_row(lost, q, random.Random(0), 4, remove=False)
        _, rep_gone, _ = rec.own_row(right, q, random.Random(0), 4, remove=True)
        assert json.loads(rep_lost) == json.loads(rep_gone) == {"answer": "not in memory", "citations": []}
        checked += 1
    assert checked >= 2
    counting = next(q for q in world["questions"] if q["category"] in ("counting", "event_order"))
    assert rec.own_row({**world, "segments": [{**s, "memory": s["caption"]} for s in world["segments"]]},
                       counting, random.Random(0), 4, remove=False) is None


def test_own_writes_the_writers_memories_of_fresh_clips_as_own_rows_read_them(tmp_path, tiny_model, monkeypatch):
    """`train_default.py own`: the model folder's writer writes each segment of fresh clips (seeds 30000..) in
    the runtime's way; the file holds each segment's true caption beside its memory and the clip's questions, and
    a rerun keeps what is there."""
    import argparse

    rec = _recipe()
    monkeypatch.setattr(rec, "WORK", tmp_path)
    world = rec.text_world(20004, 2.0)
    frame = np.full((96, 128, 3), 90, np.uint8)
    fake = {"segments": [{**s, "frame_idx": [0, 5], "frame_t": [s["t_start"], s["t_start"] + 5], "frames": [frame] * 2}
                         for s in world["segments"][:3]], "questions": world["questions"]}
    monkeypatch.setattr(rec, "clip", lambda seed: {**fake, "seed": seed})
    rec.write_own(argparse.Namespace(out=tiny_model, own_clips=2))
    files = sorted((tmp_path / "own").glob("s*.json"))
    assert [f.name for f in files] == [f"s{rec.OWN_SEED0}.json", f"s{rec.OWN_SEED0 + 1}.json"]
    got = json.loads(files[0].read_text())
    assert [s["caption"] for s in got["segments"]] == [s["caption"] for s in world["segments"][:3]]
    assert all(s["memory"] is None or isinstance(s["memory"], str) for s in got["segments"])
    assert got["questions"] == world["questions"]
    assert {c["seed"] for c in rec.own_clips()} == {rec.OWN_SEED0, rec.OWN_SEED0 + 1}
    files[0].write_text(json.dumps({**got, "kept": True}))
    rec.write_own(argparse.Namespace(out=tiny_model, own_clips=2))
    assert json.loads(files[0].read_text())["kept"]


def test_rank_step_scores_options_by_the_products_rule_and_lifts_the_right_one(tiny_model):
    """`stage read --rank-questions`: option_scores gives each option the mean log-probability the product's
    likelihood answerer ranks it by (answer_token_logprobs, one option at a time), and rank_step updates on one
    question lower its ranking loss, put the right option first and move the weights."""
    import torch

    rec = _recipe()
    tok, penc = rec.tokenizer_from(tiny_model / "hf")
    ids = rec.special_ids(tok)
    model = rec.load_model(tiny_model / "hf", "cpu")
    world, rng = rec.text_world(20003, 2.0), random.Random(0)
    case = next(r for r in (rec.rank_case(world, q, rng, 4) for q in world["questions"]) if r)
    msgs, options, right = case
    assert len(options) == 4 and 0 <= right < 4
    with torch.no_grad():
        scores = rec.option_scores(model.eval(), tok, penc, msgs, options, ids, "cpu").tolist()
    one_by_one = [float(np.mean(rec.answer_token_logprobs(model, tok, penc, msgs, o, "cpu"))) for o in options]
    assert np.allclose(scores, one_by_one, atol=1e-5)

    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        losses.append(rec.rank_step(model, tok, penc, [case], ids, "cpu", scale=4.0, weight=1.0))
        opt.step()
    with torch.no_grad():
        after = rec.option_scores(model.eval(), tok, penc, msgs, options, ids, "cpu").tolist()
    assert losses[-1] < 0.5 * losses[0]
    assert max(range(4), key=after.__getitem__) == right
    assert sum(not torch.equal(a, b) for a, b in zip(before, model.parameters())) > len(before) // 2


def test_packed_steps_give_the_unpacked_loss_and_gradient(tiny_model):
    """`--pack` (one padded forward per step, for a GPU) changes how rows are batched, not what is learnt: the read
    rows' loss and the ranked questions' loss, and their gradients, equal the unpacked steps'."""
    import torch

    rec = _recipe()
    tok, penc = rec.tokenizer_from(tiny_model / "hf")
    ids = rec.special_ids(tok)
    model = rec.load_model(tiny_model / "hf", "cpu")
    world, rng = rec.text_world(20005, 2.0), random.Random(1)
    cases = [r for r in (rec.rank_case(world, q, rng, 4) for q in world["questions"]) if r][:3]
    rows = [r for r in (rec.read_row(world, q, rng, 3, remove=False) for q in world["questions"]) if r][:4]
    assert len(cases) == 3 and len(rows) == 4

    def run(packed: bool):
        model.zero_grad()
        lm, _ = rec.lm_step(model, tok, penc, rows, ids, "cpu", w_key=4.0, packed=packed)
        rank = rec.rank_step(model, tok, penc, cases, ids, "cpu", scale=4.0, weight=1.0, packed=packed)
        return lm, rank, torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    lm0, rank0, g0 = run(False)
    lm1, rank1, g1 = run(True)
    assert lm0 > 0 and rank0 > 0
    assert abs(lm1 - lm0) < 1e-4 * lm0 and abs(rank1 - rank0) < 1e-4 * rank0
    assert g0.norm() > 0 and (g1 - g0).norm() < 1e-3 * g0.norm()


def test_top_layers_trains_only_the_last_layers_and_the_head_and_lowers_the_loss(tiny_model):
    """`--top-layers N`: the last N decoder layers, the final norm and lm_head move, every weight below (embeddings,
    lower layers, the vision tower) stays bit for bit, and the loss on the rows trained falls."""
    import torch

    rec = _recipe()
    tok, penc = rec.tokenizer_from(tiny_model / "hf")
    ids = rec.special_ids(tok)
    model = rec.load_model(tiny_model / "hf", "cpu")
    n_layers = len(model.model.language_model.layers)
    assert n_layers >= 2
    params = rec.top_layer_params(model, 1)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    world, rng = rec.text_world(20005, 2.0), random.Random(1)
    rows = [r for r in (rec.read_row(world, q, rng, 3, remove=False) for q in world["questions"]) if r][:4]
    opt = torch.optim.AdamW(params, lr=3e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss, _ = rec.lm_step(model, tok, penc, rows, ids, "cpu", w_key=4.0)
        losses.append(loss)
        opt.step()
    assert losses[-1] < 0.95 * losses[0], losses
    top = f"language_model.layers.{n_layers - 1}."
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert moved and all(top in k or "language_model.norm." in k or k.startswith("lm_head.") for k in moved), moved
    assert any(k.startswith("lm_head.") for k in moved) and any(top in k for k in moved)


def test_read_dev_grades_every_told_multiple_choice_question_by_the_runtimes_rule(tmp_path, tiny_model, monkeypatch):
    """`train_default.py read-dev`: each multiple-choice question of the dev worlds whose memories tell the answer,
    graded right when the likeliest option (or E) is the answer, saved with each grade for paired comparisons."""
    import argparse

    rec = _recipe()
    monkeypatch.setattr(rec, "WORK", tmp_path)
    monkeypatch.setattr(rec, "tokenizer", lambda: rec.tokenizer_from(tiny_model / "hf"))
    res = rec.read_dev(argparse.Namespace(from_dir=str(tiny_model / "hf"), dev_worlds="8000-8001", threads=1,
                                          device="cpu"))
    told = sum(rec.rank_case(rec.text_world(s, 4.0), q, random.Random(0), 8) is not None
               for s in (8000, 8001) for q in rec.text_world(s, 4.0)["questions"])
    saved = json.loads(next(tmp_path.glob("read-dev-*.json")).read_text())
    assert res["n"] == told == len(saved["graded"]) > 10
    assert res["right"] == sum(g["right"] for g in saved["graded"])
    assert all(g["right"] == (g["pred"] == rec.text_world(g["seed"], 4.0)["questions"][g["question"]]["answer"])
               for g in saved["graded"])


def test_read_gt_answers_ground_truth_memories_retrieved_as_ask_retrieves_them(tmp_path, monkeypatch):
    """`train_default.py read-gt`: every told multiple-choice question of a world, over its ground-truth memories in
    a store, retrieved and answered under the shipped profile (qa.moment_k, latest_k, colour_k, order_by_time,
    match_options, quoted_text, where_answered, who_named; the shipped reader through llama.cpp): graded by the
    world's answer, far above chance (25 %) on dev worlds."""
    import argparse

    rec = _recipe()
    monkeypatch.setattr(rec, "WORK", tmp_path)
    monkeypatch.setenv("EDGE_AGENT_MODEL__N_THREADS", "1")
    monkeypatch.delenv("EDGE_AGENT_MODEL__NAME", raising=False)
    res = rec.read_gt(argparse.Namespace(out=rec.OUT, dev_worlds="8000-8001", choice="score"))
    assert "EDGE_AGENT_MODEL__NAME" not in os.environ  # the folder is named to the config, not to the process
    told = sum(bool(q["options"]) and rec.evidence(rec.text_world(s, 4.0), q)[1]
               for s in (8000, 8001) for q in rec.text_world(s, 4.0)["questions"])
    saved = json.loads(next(tmp_path.glob("read-gt-8000-8001-*.json")).read_text())
    assert res["n"] == told == len(saved["graded"]) > 10
    assert res["qa"] == {"choice": "score", "top_k": 8, "moment_k": 3, "latest_k": 1, "colour_k": 3,
                         "order_by_time": True, "match_options": True, "quoted_text": True,
                         "where_answered": True, "who_named": True}  # the profile
    assert all(g["right"] == (g["pred"] == rec.text_world(g["seed"], 4.0)["questions"][g["question"]]["answer"])
               for g in saved["graded"])
    assert res["acc"] == round(sum(g["right"] for g in saved["graded"]) / res["n"], 3) >= 0.5


def test_widen_adds_attention_heads_and_keeps_the_function_through_llama_cpp(tmp_path, tiny_model):
    """`train_default.py widen`: more query and key/value heads, the same logits in transformers, and the
    exporter writes the wider attention so llama.cpp gives the narrow model's logits too; `--new-heads-only`
    trains the added heads and leaves the rest as it was."""
    import argparse

    import torch

    from edge_agent.export import export_hf
    from edge_agent.types import Message
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    rec = _recipe()
    src = tiny_model / "hf"
    cfg = json.loads((src / "config.json").read_text())["text_config"]
    heads, kv = 2 * cfg["num_attention_heads"], 2 * cfg["num_key_value_heads"]
    rec.widen(argparse.Namespace(from_dir=src, to_dir=tmp_path / "wide", heads=heads, kv_heads=kv, seed=0))
    wide_cfg = json.loads((tmp_path / "wide" / "config.json").read_text())["text_config"]
    assert (wide_cfg["num_attention_heads"], wide_cfg["num_key_value_heads"]) == (heads, kv)
    narrow, wide = rec.load_model(src, "cpu").eval(), rec.load_model(tmp_path / "wide", "cpu").eval()
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())
    x = torch.randint(0, cfg["vocab_size"] - 16, (1, 40))
    with torch.no_grad():
        assert torch.allclose(narrow(input_ids=x).logits, wide(input_ids=x).logits, atol=1e-5)
    msgs = [Message("user", ["Where did I leave the red cup?"])]
    logits = []
    for d in (src, tmp_path / "wide"):
        model_path, _ = export_hf(d, tmp_path / f"gguf-{d.name}", "f32")
        with LlamaCppBackend(model_path, None, n_threads=1, n_ctx=512) as be:
            logits.append(be.logits(msgs))
    assert np.abs(logits[0] - logits[1]).max() < 1e-3 * max(1.0, np.abs(logits[0]).max())
    with pytest.raises(SystemExit, match="kv heads"):
        rec.widen(argparse.Namespace(from_dir=src, to_dir=tmp_path / "bad", heads=heads + 1, kv_heads=kv, seed=0))

    # `--new-heads-only`: a step moves the new heads' weights and nothing of the model it grew from
    wide.train()
    before = {k: v.clone() for k, v in wide.state_dict().items()}
    params = rec.new_head_params(wide, cfg["num_attention_heads"], cfg["num_key_value_heads"])
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(2):  # the first step moves o_proj's new columns (zero, so q/k/v get no gradient yet), the next the rest
        opt.zero_grad()
        wide(input_ids=x, labels=x).loss.backward()
        opt.step()
    hd, after = cfg["head_dim"], wide.state_dict()
    q = next(k for k in after if k.endswith("layers.0.self_attn.q_proj.weight"))
    o = q.replace("q_proj", "o_proj")
    old = cfg["num_attention_heads"] * hd
    assert torch.equal(after[q][:old], before[q][:old]) and not torch.equal(after[q][old:], before[q][old:])
    assert torch.equal(after[o][:, :old], before[o][:, :old]) and not torch.equal(after[o][:, old:], before[o][:, old:])
    untouched = [k for k in after if not k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))]
    assert untouched and all(torch.equal(after[k], before[k]) for k in untouched)


def test_hf_from_gguf_reads_a_shipped_text_gguf_back_into_a_folder_training_can_continue(tmp_path, tiny_model,
                                                                                         monkeypatch):
    """`train_default.py hf-from-gguf`: the language model's tensors come back from the GGUF to within its storage
    step (not from the template folder, whose text weights are scrambled here), the vision tower from the template,
    and transformers on the result gives llama.cpp's logits on the GGUF."""
    import argparse

    import torch
    from safetensors.torch import load_file, save_file

    from edge_agent.export import export_hf

    rec = _recipe()
    monkeypatch.setattr(rec, "tokenizer", lambda: rec.tokenizer_from(tiny_model / "hf"))
    original = load_file(tiny_model / "hf" / "model.safetensors")
    template = tmp_path / "template"
    shutil.copytree(tiny_model / "hf", template)
    gen = torch.Generator().manual_seed(0)
    scrambled = {k: (torch.randn(v.shape, generator=gen) if k.startswith("model.language_model.") else v)
                 for k, v in original.items()}
    save_file(scrambled, str(template / "model.safetensors"), metadata={"format": "pt"})
    text = [k for k in original if k.startswith(("model.language_model.", "lm_head."))]

    # value step of each storage type: Q8_0 rounds each value to its 32-block's max / 127; F16 keeps 11 bits
    for outtype, step in (("q8_0", 1 / 127), ("f16", 2.0 ** -10)):
        model_path, _ = export_hf(tiny_model / "hf", tmp_path / outtype, outtype)
        res = rec.hf_from_gguf(argparse.Namespace(from_gguf=str(model_path), to_dir=str(tmp_path / f"back-{outtype}"),
                                                  from_dir=str(template)))
        back = load_file(tmp_path / f"back-{outtype}" / "model.safetensors")
        assert res["tensors_from_gguf"] == len(text) > 10
        for k in text:
            assert (back[k] - original[k]).abs().max() <= original[k].abs().max() * step + 1e-7, (outtype, k)
        assert all(torch.equal(back[k], original[k]) for k in original if k.startswith("model.visual."))
        assert res["token_sequences_equal"] and res["max_abs_logit_diff"] < 0.01 * max(1.0, res["logit_scale"])


def test_swapped_judge_cases_differ_in_the_one_fact_a_listed_answer_names():
    """`--judge-swapped`: the better memory is a true caption, the worse the same sentence with one fact swapped
    (a face, a note's text, a place, colour, kind or room), and exactly one listed question carries an answer,
    which the better memory holds and the worse does not."""
    rec = _recipe()
    world = rec.text_world(20003, 6.0)
    captions = {s["caption"] for s in world["segments"]}
    rng = random.Random(3)
    cases = [c for c in (rec.swapped_case(world, rng) for _ in range(60)) if c]
    assert len(cases) >= 20
    swapped = set()
    for listed, good, bad in cases:
        assert good in captions and bad not in captions
        g, b = good.split(), bad.split()
        if len(g) == len(b):
            swapped |= {x for x, y in zip(g, b) if x != y}
        told = [q.text.split(" Answer: ")[1] for q in listed if " Answer: " in q.text]
        assert len(told) == 1 and rec.content(told[0]) <= rec.content(good)
        assert not rec.content(told[0]) <= rec.content(bad)
        assert not any("shirt" in q.text for q in listed if " Answer: " in q.text)
    assert any(w.startswith("<face_") for w in swapped) and swapped & {"red", "blue", "green", "yellow", "purple",
                                                                      "orange"}, swapped
    assert rec.swap_fact("I put the red cup on the coffee table in the kitchen.", "on the coffee table",
                         random.Random(0)).count("coffee table") == 0  # a two-word place is swapped whole


@pytest.mark.slow
@pytest.mark.parametrize("kind,same_moment", [("judge", 0.0), ("judge_same_moment", 1.0)])
def test_the_shipped_judge_is_position_consistent_as_the_manifest_says(monkeypatch, kind, same_moment):
    """Phase Two's judge on the shipped model as `adapt` asks it (judge.gguf, llama.cpp, JSON schema, greedy), on
    the held-out cases in both orderings (the standard mix; pairs of two true memories of one moment): the
    manifest's measured consistency is reproduced, above a floor, and it is far from the writer's (0 %: "B" or
    "tie" whatever it is shown)."""
    from edge_agent.models import JUDGE_FILE
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    rec = _recipe()
    monkeypatch.setattr(rec, "JUDGE_SAME_MOMENT", [same_moment])
    recorded = json.loads((DEFAULT / "manifest.json").read_text())["judge"][kind]
    with LlamaCppBackend(DEFAULT / JUDGE_FILE, None, n_threads=1, n_ctx=4096) as judge:
        got = rec.measure_judge(judge, rec.judge_cases(recorded["pairs"]))
    assert abs(got["position_consistent"] - recorded["position_consistent"]) <= 0.05, (got, recorded)
    assert got["position_consistent"] >= {"judge": JUDGE_CONSISTENCY_MIN, "judge_same_moment": JUDGE_SAME_MOMENT_MIN}[kind]
    assert got["hist"]["A"] > 0 and got["hist"]["B"] > 0


def test_model_loads_and_is_the_shipped_shape(backend):
    assert backend.n_layers >= 24 and backend.hidden_size == 96


def test_see_rows_name_the_object_the_frames_hold_and_weight_only_its_words():
    """The joint stage's see rows (--see-rows): the reply is the colour and kind the segment's frame labels give
    ("nothing" when no frame holds one), and only those two words carry the content weight."""
    import numpy as np

    rec = _recipe()
    frame = np.zeros((96, 128, 3), dtype=np.uint8)
    held = {"kind": rec.KINDS.index("bottle"), "colour": rec.COLOUR_NAMES.index("orange")}
    empty = {"kind": 0, "colour": 0}

    def segment(i, labels):
        return {"index": i, "t_start": 10.0 * i, "t_end": 10.0 * i + 10, "caption": "", "frames": [frame] * 4,
                "frame_idx": [0, 1, 2, 3], "frame_t": [10.0 * i + k for k in range(4)], "labels": labels}

    c = {"seed": 1, "segments": [segment(0, [empty] * 4), segment(1, [empty, empty, held, held])]}
    replies = set()
    for i in range(40):
        msgs, reply, kind = rec.see_row(c, random.Random(i))
        assert kind == "see" and len(msgs[1].parts) == 5  # 4 keyframes, then the question
        replies.add(reply)
    assert replies == {"the orange bottle", "nothing"}
    tok, penc = rec.tokenizer_from(DEFAULT / "hf")
    weights = rec.reply_weights(tok, "see", "the orange bottle", 8.0)
    pieces = tok.encode("the orange bottle", add_special_tokens=False).ids
    assert [tok.decode([p]).strip() for p, w in zip(pieces, weights) if w > 1] == ["orange", "bottle"]


def test_room_change_segments_are_the_ones_whose_keyframes_show_two_rooms():
    """`--room-change-share` draws writer rows from the segments where the wearer walked from one room to another,
    told by the rooms of their keyframes' labels; a share outside 0-1 is refused in one line, naming the value."""
    import argparse

    rec = _recipe()
    kitchen, office = ({"room": rec.ROOM_NAMES.index(r)} for r in ("kitchen", "office"))

    def clip(*rooms_per_segment):
        return {"segments": [{"labels": [kitchen if r == "k" else office for r in rooms]}
                             for rooms in rooms_per_segment]}

    clips = [clip("kkkk", "kkoo", "oooo"), clip("oook"), clip("kkkk")]
    assert rec.room_change_segments(clips) == [(0, 1), (1, 0)]
    assert rec.share("0.5") == 0.5 and rec.share("0") == 0.0
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(argparse.ArgumentTypeError, match=f"{bad!r}: expected a share from 0 to 1"):
            rec.share(bad)


def test_soup_averages_two_fine_tunes_parameter_by_parameter(tmp_path, tiny_model):
    """`train_default.py soup`: every tensor is (1 - w) * the first folder's + w * the second's, the rest of the
    folder is the first's; folders of different architectures, or a folder without weights, are refused in one line
    naming them."""
    import argparse

    import torch
    from safetensors.torch import load_file, save_file

    rec = _recipe()
    first = load_file(tiny_model / "hf" / "model.safetensors")
    other = tmp_path / "other"
    shutil.copytree(tiny_model / "hf", other)
    gen = torch.Generator().manual_seed(0)
    second = {k: v + torch.randn(v.shape, generator=gen) for k, v in first.items()}
    save_file(second, str(other / "model.safetensors"), metadata={"format": "pt"})

    def soup(with_dir, weight):
        return rec.soup(argparse.Namespace(from_dir=tiny_model / "hf", with_dir=with_dir, weight=weight,
                                           to_dir=tmp_path / "soup"))

    assert soup(other, 0.25)["tensors"] == len(first) > 10
    mixed = load_file(tmp_path / "soup" / "model.safetensors")
    for k in first:
        assert torch.allclose(mixed[k], 0.75 * first[k] + 0.25 * second[k], atol=1e-6), k
        assert not torch.equal(mixed[k], first[k]) and not torch.equal(mixed[k], second[k])
    assert (tmp_path / "soup" / "config.json").read_text() == (tiny_model / "hf" / "config.json").read_text()
    soup(other, 0.0)
    assert all(torch.equal(t, first[k]) for k, t in load_file(tmp_path / "soup" / "model.safetensors").items())

    k = next(iter(second))
    second[k] = second[k][:1]
    save_file(second, str(other / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(SystemExit, match="are not the same architecture"):
        soup(other, 0.5)
    with pytest.raises(SystemExit, match="has no model.safetensors"):
        soup(tmp_path / "missing", 0.5)


def test_chain_runs_every_step_from_the_one_before_inside_its_budget_and_writes_a_model_folder(tmp_path,
                                                                                                monkeypatch):
    """`train_default.py chain`: the first step starts from a seeded random model of the shipped shape, every later
    one from the step before's trained folder; the steps' minutes add up to the budget; each step runs in its own
    work folder sharing the rendered clips; then the writer, reader and judge are exported into `--out` with the
    shipped profile and the chain's record; the shipped folder is refused as `--out`."""
    import argparse

    import torch
    from safetensors.torch import load_file

    rec = _recipe()
    monkeypatch.setattr(rec, "WORK", tmp_path / "work")
    args = argparse.Namespace(seed=3, minutes=60.0, threads=2, device="cpu", extra_clips=3000, save_minutes=4.0,
                              outtype="q8_0", out=tmp_path / "model")
    calls = []

    def fake_run(argv, env):
        calls.append((argv, env["TRAIN_DEFAULT_WORK"]))
        if argv[0] == "stage":
            done = Path(env["TRAIN_DEFAULT_WORK"]) / f"stage-{argv[1]}" / "done.json"
            done.parent.mkdir(parents=True)
            done.write_text(json.dumps({"stage": argv[1], "seconds": 600}))
        else:
            (args.out / f"{argv[0]}-{len(calls)}.gguf").write_bytes(b"x")

    record = rec.chain(args, run=fake_run)
    work = tmp_path / "work" / "chain"
    steps = [c for c in calls if c[0][0] == "stage"]
    assert [(a[1], Path(w).name) for a, w in steps] == [("vision", "vision"), ("write", "write"), ("lookup", "lookup"),
                                                        ("read", "reader"), ("read", "judge")]
    froms = [a[a.index("--from-dir") + 1] for a, _ in steps]
    assert froms == [str(work / "init" / "hf"), str(work / "vision" / "stage-vision" / "hf"),
                     str(work / "write" / "stage-write" / "hf"), str(work / "lookup" / "stage-lookup" / "hf"),
                     str(work / "reader" / "stage-read" / "hf")]
    assert sum(float(a[a.index("--minutes") + 1]) for a, _ in steps) == pytest.approx(60.0)
    assert all(a[a.index("--extra-clips") + 1] == "3000" and a[a.index("--seed") + 1] == "3" for a, _ in steps)
    assert all((Path(w) / "data").resolve() == (tmp_path / "work" / "data").resolve() for _, w in steps)
    assert [c[0][:3] for c in calls[5:]] == [["finalize", "--from-dir", froms[2]],
                                            ["reader", "--from-dir", str(work / "reader" / "stage-read" / "hf")],
                                            ["reader", "--as", "judge"]]
    assert record["seconds"] == 3000 and list(record["steps"]) == ["vision", "write", "lookup", "reader", "judge"]
    man = json.loads((args.out / "manifest.json").read_text())
    assert man["profile"] == json.loads((DEFAULT / "manifest.json").read_text())["profile"]
    assert man["chain"]["seconds"] == 3000 and "faces.npz" in man["files"]

    init = load_file(work / "init" / "hf" / "model.safetensors")
    shipped = load_file(DEFAULT / "hf" / "model.safetensors")
    assert init.keys() == shipped.keys() and all(init[k].shape == shipped[k].shape for k in init)
    k = "model.language_model.embed_tokens.weight"
    assert not torch.allclose(init[k], shipped[k]) and 0.01 < init[k].std() < 0.03  # a fresh N(0, 0.02) start

    args.out = DEFAULT
    with pytest.raises(SystemExit, match="is the shipped model"):
        rec.chain(args, run=fake_run)


def test_clips_are_cut_at_the_recipes_keyframe_count_and_cached_apart(tmp_path, monkeypatch):
    """`--keyframes K` (train_default.KEYFRAMES): the runtime's capture path keeps up to K keyframes a segment, and
    each count has its own cache file, so the 4-keyframe data is never read as 8 or overwritten."""
    rec = _recipe()
    monkeypatch.setattr(rec, "WORK", tmp_path)
    counts = {}
    for k in (4, 8):
        monkeypatch.setattr(rec, "KEYFRAMES", k)
        c = rec.clip(9001, minutes=0.5)
        counts[k] = [len(s["frames"]) for s in c["segments"]]
        assert max(counts[k]) == k and len(c["segments"]) == 3
        assert all(len(s["labels"]) == len(s["frames"]) == len(s["frame_t"]) for s in c["segments"])
    assert sum(counts[8]) > sum(counts[4])
    assert sorted(f.name for f in (tmp_path / "data").iterdir()) == [
        f"v2-s9001-0.5-f{rec.FRAME_SIZE}-k8-synth{rec.FORMAT_VERSION}.pkl",
        f"v2-s9001-0.5-f{rec.FRAME_SIZE}-synth{rec.FORMAT_VERSION}.pkl"]


def test_eval_cuts_a_folders_clips_as_its_profile_does_unless_told():
    """`train_default.py eval --out D` measures D's writer on segments cut as the runtime cuts them for D (the
    shipped profile: 8 keyframes), not at the recipe's 4; a flag still wins, and a bad one is a one-line error."""
    import argparse

    rec = _recipe()

    def cut(**kw):
        return rec.cut_settings(argparse.Namespace(**{"what": "eval", "out": DEFAULT, "frame_size": None,
                                                       "keyframes": None, **kw}))

    profile = _profile_capture()
    assert cut() == (profile.frame_size, profile.keyframes_per_segment) == (128, 8)
    assert cut(keyframes=4) == (128, 4)
    assert cut(what="stage") == (rec.FRAME_SIZE, rec.KEYFRAMES) == (128, 4)  # the recipe's own data
    with pytest.raises(ConfigError, match="keyframes_per_segment=0"):
        cut(keyframes=0)


@pytest.fixture(scope="module")
def heldout_clips(tmp_path_factory):
    """Three held-out clips in the recipe's own form (train_default.clip: keyframes cut by the runtime's capture path
    at the profile's frame size and keyframe count, with their true captions), rendered here rather than read from
    its /tmp cache."""
    from edge_agent.capture import open_source, segment_stream
    from edge_agent.synth import generate

    cut = _profile_capture()
    clips = []
    for seed in (9001, 9002, 9003):
        paths = generate(seed=seed, minutes=2, out_dir=tmp_path_factory.mktemp(f"clip{seed}"))
        captions = {s["index"]: s["caption"] for s in json.loads(paths.events.read_text())["segments"]}
        with open_source(str(paths.video)) as src:
            segs = [s for s in segment_stream(src, cut)
                    if s.index in captions and s.keyframes]
        clips.append({"seed": seed, "segments": [
            {"index": s.index, "t_start": s.t_start, "t_end": s.t_end, "caption": captions[s.index],
             "frames": [f.image for f in s.keyframes], "frame_idx": [f.index for f in s.keyframes],
             "frame_t": [f.t for f in s.keyframes]} for s in segs]})
    return clips


@pytest.fixture(scope="module")
def pixel_probe(heldout_clips):
    rec = _recipe()
    tok, penc = rec.tokenizer_from(DEFAULT / "hf")
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|image_pad|>", "<|im_end|>")}
    model = rec.load_model(DEFAULT / "hf", "cpu")
    return rec, tok, penc, ids, model


def test_the_writer_takes_the_room_from_the_pixels(pixel_probe, heldout_clips):
    """tools/train_default.py pixels: with another segment's keyframes in place of its own, the writer's room word
    gets much less likely (shipped model, 12 clips: loss 0.08 -> 1.67, arg-max 97 -> 59 %)."""
    rec, tok, penc, ids, model = pixel_probe
    room = rec.probe_pixels(model, tok, penc, ids, "cpu", heldout_clips, n=36)["room"]
    assert room["own"]["n"] >= 20
    assert room["own"]["acc"] >= 0.85
    assert room["swapped"]["loss"] > room["own"]["loss"] + 1.0


@pytest.mark.parametrize("word", ["colour", "kind"])
def test_the_writer_takes_the_object_and_its_colour_from_the_pixels(pixel_probe, heldout_clips, word):
    """The same probe for the held object's colour and kind words (shipped model, 12 clips: colour loss 0.77 -> 2.52
    when the frames are swapped, arg-max 75 -> 20 %; kind 0.56 -> 2.31, 78 -> 24 %). The model before guessed them
    from a prior: 1.85 vs 1.83, unchanged by the swap (models/default/HISTORY.md, "What the writer sees")."""
    rec, tok, penc, ids, model = pixel_probe
    got = rec.probe_pixels(model, tok, penc, ids, "cpu", heldout_clips, n=36)[word]
    assert got["own"]["n"] >= 8
    assert got["own"]["acc"] >= 0.5
    assert got["swapped"]["loss"] > got["own"]["loss"] + 1.0


def test_greedy_writer_probe_decodes_memories_that_name_the_room(pixel_probe, heldout_clips):
    """The write stages' greedy probe decodes as the device does: on the shipped model the memories name the room
    (README table: 91.0 % through llama.cpp) and use at least one object word; colour and kind are reported."""
    rec, tok, penc, ids, model = pixel_probe
    p = rec.probe_write_greedy(model, tok, penc, ids, "cpu", heldout_clips, n=12)
    assert p["n"] == 12
    assert p["room_acc"] >= 0.75
    assert p["distinct_objects"] >= 1 and 0 <= p["colour_acc"] <= 1 and 0 <= p["object_acc"] <= 1


@pytest.mark.slow
def test_writes_valid_memories_naming_the_room(backend, heldout):
    """The runtime's MemoryWriter (the shipped profile's window, grammar, validation) on 8 held-out segments."""
    import dataclasses

    from edge_agent.memory.writer import MemoryWriter, WindowEntry

    segs, captions, _ = heldout
    cfg = dataclasses.replace(_recipe().folder_config(DEFAULT).writer, max_retries=0)
    writer = MemoryWriter(backend, cfg, stream_key="heldout")
    window: list[WindowEntry] = []
    valid = room_right = 0
    failures = []
    n = 8
    for seg in segs[:n]:
        r = writer.write(window, seg)
        valid += r.text is not None
        failures += [r.failure] if r.failure else []
        room_right += bool(r.text) and _room(r.text) == _room(captions[seg.index])
        window = (window + [WindowEntry(seg, r.text)])[-4:]  # the writer keeps the profile's window of these
    assert valid >= VALID_MIN, failures  # memories that pass the runtime's format rules without a retry
    assert room_right >= ROOM_MIN, f"room right in {room_right}/{n}"


@pytest.fixture(scope="module")
def answered(backend):
    """Held-out world questions over ground-truth memories (8 shown, as `ask` retrieves), answered the way the
    default's profile says (`qa.choice = "score"`): [(kind, wanted answer, parsed reply, shown ids)]."""
    from edge_agent.qa.answer import answer_schema, build_messages, parse_reply, scored_reply
    from edge_agent.types import Sampling

    rec = _recipe()
    rng = random.Random(0)
    out = []
    for seed in (9004, 9005):
        c = rec.text_world(seed, 4.0)
        for q in c["questions"]:
            holds, told = rec.evidence(c, q)
            mems, _ = rec.show(c, q, rng, holds, remove=False, n_shown=8)
            if not mems or not told:
                continue
            shown = [m["id"] for m in mems]
            out.append(("mc", q["answer"], scored_reply(backend, q["question"], q["options"], mems, q["asked_at"],
                                                        shown), shown))
            gen = backend.generate(build_messages(q["question"], [], mems, q["asked_at"]), Sampling(max_tokens=64),
                                   json_schema=answer_schema("", shown))
            out.append(("open", q["open_answer"], parse_reply(gen.text, [], shown), shown))
    return out


@pytest.mark.slow
def test_answers_from_memories_far_from_a_constant_letter(answered):
    mc = [(want, p) for kind, want, p, _ in answered if kind == "mc" and want != "E"]
    assert len(mc) >= 15 and not [p for _, p in mc if p["reason"]]  # every reply is a valid letter
    right = sum(p["choice"] == want for want, p in mc)
    letters = {p["choice"] for _, p in mc}
    assert right / len(mc) >= MC_MIN, f"{right}/{len(mc)} right with the evidence shown"
    assert len(letters - {"E"}) >= 2, f"letters used: {letters}"  # not a constant answer


@pytest.mark.slow
def test_answers_cite_the_memories_they_rest_on(answered):
    ans = [p for kind, want, p, _ in answered if kind == "mc" and p["choice"] not in (None, "E")]
    assert ans
    cited = sum(bool(p["cited"]) for p in ans)
    assert cited / len(ans) >= CITED_MIN, f"{cited}/{len(ans)} answers cite a shown memory"


@pytest.mark.slow
def test_open_questions_get_text_answers(answered):
    opened = [(want, p) for kind, want, p, _ in answered if kind == "open" and want != "not in memory"]
    assert opened
    text = [p for _, p in opened if not p["abstained"] and p["text"] and not re.fullmatch(r"[A-E]", p["text"])]
    assert len(text) / len(opened) >= OPEN_TEXT_MIN, [p["text"] for _, p in opened][:10]


@pytest.fixture(scope="module")
def end_to_end(tmp_path_factory):
    """`edge-agent eval --bench synthetic` on a held-out seed: its own memories, retrieval, answers."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from default_heldout import one_seed
    finally:
        sys.path.pop(0)
    return one_seed(HELDOUT_SEED, E2E_MINUTES, tmp_path_factory.mktemp("e2e") / "home")


@pytest.mark.slow
def test_end_to_end_on_a_heldout_seed_answers_cites_and_varies(end_to_end):
    r = end_to_end
    assert r["n"] >= 20
    assert r["correct"] / r["n"] >= E2E_MIN, r
    letters = {k for k, v in r["hist"].items() if v and k not in ("E", "open")}
    assert len(letters) >= 2, r["hist"]  # not a constant letter
    assert r["cited_when_answered"] / max(1, r["n_answered_rows"]) >= CITED_MIN, r
    assert r["repeated_sentence_memories"] == 0, r


@pytest.mark.slow
def test_end_to_end_far_above_chance(end_to_end):
    """The issue's bar: end to end >= 50 % on a held-out seed (9001, never trained or tuned on). Met since the writer
    shipped 2026-12-05 (15 of 27, with the reader before and the reader shipped after it); one seed's 27 questions
    are noisy: over 48 held-out seeds (9000-9047) it is 43.7 % [41.0, 46.4], below the issue's 60 %, so this
    seed passes by luck, not by a capability (models/default/README.md). Since the face registry (format-2 clips)
    it is 52.9 % [50.1, 55.6] over those 48 seeds: above the bar on average, still below the issue's 60 %."""
    assert end_to_end["correct"] / end_to_end["n"] >= 0.5, end_to_end


@pytest.mark.slow
def test_transformers_and_llama_cpp_agree_on_a_writer_prompt(backend, heldout):
    """Same tokens (chat template, image markers, temporal pairs) and logits within export error."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from edge_agent.memory.prompts import writer_messages

    rec = _recipe()
    tok, penc = rec.tokenizer_from(DEFAULT / "hf")
    ids = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|image_pad|>")}
    segs, captions, _ = heldout
    # 3 earlier segments with memories, then the new one; a 3-frame segment exercises an unpaired frame
    segs = list(segs[:4])
    odd = segs[1]
    segs[1] = type(odd)(odd.index, odd.t_start, odd.t_end, odd.keyframes[:3])
    msgs = writer_messages("heldout", [(s, captions[s.index]) for s in segs[:3]], segs[3])
    e = penc.encode(msgs, None)
    assert backend.prompt_tokens(msgs) == [-1 if t == ids["<|image_pad|>"] else t for t in e.ids]
    batch = rec.batch_tensors([(e, [], "write")], ids["<|endoftext|>"], ids["<|image_pad|>"], "cpu")
    model = Qwen3VLForConditionalGeneration.from_pretrained(DEFAULT / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                    pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]).logits[0, -1].numpy()
    got = backend.logits(msgs)[: ref.shape[0]]
    assert np.abs(got - ref).max() < PARITY_MAX
    assert int(np.argmax(got)) == int(np.argmax(ref))


# Measured on the shipped model (models/default/README.md, manifest.json "measured"), minus a margin:
# held-out clips 9000-9011: valid memories 142/144, room 93.1 %; MC over ground-truth memories (reader.gguf) 62.1 %
# [53.6, 69.9] (132 questions, chance 25 %, letters spread, E 1), citations 100 %, open questions with text 90.3 %;
# end to end 43.7 % [41.0, 46.4] over 1,296 questions of 48 clips (seed 9001: 17/27; 52.9 % with the face registry on
# format-2 clips, seed 9001: 17/27), parity 0.148 at logit scale
# 19.1 (q8_0 GGUFs against the f32 checkpoint; the writers shipped before 0.087-0.101; 7.2e-4 for an f32 export, which
# the export tests hold to their own tolerance). One or two seeds are too few to assert above chance (seed 9002: 10/27):
# the floors guard against a broken export, scorer or prompt drift; the bar is
# test_end_to_end_far_above_chance.
VALID_MIN = 7
ROOM_MIN = 6
MC_MIN = 0.15
CITED_MIN = 0.90
OPEN_TEXT_MIN = 0.6
E2E_MINUTES = 9.0
E2E_MIN = 0.12
JUDGE_CONSISTENCY_MIN = 0.7  # the shipped judge.gguf: measured at training time (manifest) minus a margin
JUDGE_SAME_MOMENT_MIN = 0.85  # ... on pairs of one moment, the kind the writer's sampled candidates make
PARITY_MAX = 0.25  # q8_0 rounding (0.087-0.148 measured on the writers shipped); a broken export is off by whole logits


@pytest.mark.slow
def test_ask_feedback_adapt_from_the_cli_keeps_pairs_and_registers_an_adapter(tmp_path):
    """The wearer's loop on the shipped model, through the CLI only: `run` a held-out clip, `ask` its questions,
    `feedback` by the ground truth (`--wrong --answer` when wrong), `adapt`: the shipped judge (judge.gguf) judges
    the writer's own candidates, pairs are kept and an adapter is trained and registered."""
    from conftest import run_cli

    from edge_agent.config import ModelConfig, WriterConfig

    w = WriterConfig()
    env = {"EDGE_AGENT_WRITER__MAX_RETRIES": str(w.max_retries),
           "EDGE_AGENT_WRITER__MAX_MEMORY_TOKENS": str(w.max_memory_tokens),
           "EDGE_AGENT_WRITER__CANDIDATE_SHARE": "1.0", "EDGE_AGENT_MODEL__N_CTX": str(ModelConfig().n_ctx)}
    home, clip = tmp_path / "home", tmp_path / "clip"

    def cli(*args):
        p = run_cli(home, *args, model=DEFAULT, env=env, timeout=1800)
        assert p.returncode == 0, p.stderr.decode()[-2000:]
        return p.stdout.decode()

    # Windows that share frames go to one side of the split, and the rule keeps only the pairs where the judge
    # and embedding relevance agree: on 3 minutes (two window groups, segments 0-9 and 14-17) those could all lie
    # in one group, held out, and nothing trained. Candidates on every segment of 5 minutes give three groups
    # (0-9, 14-23, 28-29).
    cli("synth", "--seed", "9003", "--minutes", "5", "--out", str(clip))
    # A fixed start time: the answerer's prompt states clock times, so a clip stamped from its file's mtime (new
    # each run) would put other digits before the same memories each run, and an answer near a tie could flip.
    cli("run", str(clip / "video.mp4"), "--start", str(REPLAY_START))
    origin = min(m["t_start"] for m in json.loads(cli("memories", "--json")))
    questions = json.loads((clip / "questions.json").read_text())["questions"]
    for q in questions[:10]:
        args = ["ask", q["question"], "--until", f"{origin + q['asked_at']:.3f}", "--json"]
        for i, o in enumerate(q["options"]):
            args += ["-o", f"{'ABCD'[i]}. {o}"]
        res = json.loads(cli(*args))
        right = res["choice"] == q["answer"]
        cli("feedback", str(res["answer_id"]), *(["--correct"] if right else ["--wrong", "--answer", q["open_answer"]]))
    report = json.loads(cli("adapt", "--json"))
    assert report["reward"]["kept"] > 0 and report["new_pairs"] > 0, report
    assert report["judged_by"] == "default-judge"  # judge.gguf, trained on the judge prompt, not the writer
    rw = report["reward"]
    # It judged (both orderings) at least the probe's comparisons. Whether rule "auto" then kept its verdicts is
    # measured, not asserted: consistent on about 65 % of these candidates, its first 8 comparisons fall below half
    # about one run in ten (Binomial(8, 0.65)), and runs differ (an answer near the abstention threshold changes the
    # feedback). What the judge is worth is asserted by test_the_shipped_judge_is_position_consistent_as_the_manifest_says.
    assert rw["judge_consistent"] + rw["judge_disagreed"] + rw["judge_ties"] >= 8, rw
    assert report["adapter_id"], report  # trained and registered (the gate decides whether it becomes active)
    listed = json.loads(cli("adapter", "list", "--json"))
    assert report["adapter_id"] in [r["id"] for r in listed]


def test_write_windows_names_the_earlier_segments_a_writer_row_shows():
    """`stage write --write-windows 0` trains only the window the default's profile writes with (the new segment
    alone); a count the writer prompt cannot show is refused in one line, naming the value."""
    import argparse

    rec = _recipe()
    assert rec.earlier_segment_counts("0") == [0] and rec.earlier_segment_counts("0,2,4") == [0, 2, 4]
    for bad in ("5", "0,x", "", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="expected counts 0-4"):
            rec.earlier_segment_counts(bad)
