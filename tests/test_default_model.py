"""The embedded default model (models/default/): files and size, loads in llama.cpp, writes valid memories for
held-out synthetic segments, answers held-out questions from memories better than chance, and transformers and
llama.cpp agree on a real writer prompt. Thresholds are the numbers measured at training time (models/default/
README.md) minus a margin; they guard against a broken export or a prompt drift, not against small noise."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"
HELDOUT_SEED = 9001  # tools/train_default.py trains on seeds 100..179 and evaluates on 9000..9003
MAX_BYTES = 40 * 1024 * 1024

ROOMS = ("kitchen", "office", "living room", "bedroom")


def _recipe():
    """tools/train_default.py as a module: its Encoder is the exact token sequence the model was trained on."""
    spec = importlib.util.spec_from_file_location("train_default", ROOT / "tools" / "train_default.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _room(text: str) -> set[str]:
    return {r for r in ROOMS if r in text.lower()}


def test_files_size_and_identity():
    from edge_agent.export import base_model_hash
    from edge_agent.vlm.gguf_info import check_model_pair

    files = [DEFAULT / "model.gguf", DEFAULT / "mmproj.gguf", DEFAULT / "README.md", DEFAULT / "hf" / "config.json",
             DEFAULT / "hf" / "model.safetensors", DEFAULT / "hf" / "tokenizer.json",
             DEFAULT / "hf" / "preprocessor_config.json"]
    for f in files:
        assert f.is_file(), f
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


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    """A held-out clip cut by the runtime's capture path, with its ground-truth captions and questions."""
    from edge_agent.capture import open_source, segment_stream
    from edge_agent.config import CaptureConfig
    from edge_agent.synth import generate

    paths = generate(seed=HELDOUT_SEED, minutes=2, out_dir=tmp_path_factory.mktemp("heldout"))
    with open_source(str(paths.video)) as src:
        segs = list(segment_stream(src, CaptureConfig()))
    captions = {s["index"]: s["caption"] for s in json.loads(paths.events.read_text())["segments"]}
    return segs, captions, json.loads(paths.questions.read_text())["questions"]


def test_model_loads_and_is_the_shipped_shape(backend):
    assert backend.n_layers >= 24 and backend.hidden_size == 96


@pytest.mark.slow
def test_writes_valid_memories_naming_the_room(backend, heldout):
    """The runtime's MemoryWriter (window of 5, grammar, validation) on 8 held-out segments."""
    from edge_agent.config import WriterConfig
    from edge_agent.memory.writer import MemoryWriter, WindowEntry

    segs, captions, _ = heldout
    writer = MemoryWriter(backend, WriterConfig(max_retries=0), stream_key="heldout")
    window: list[WindowEntry] = []
    valid = room_right = 0
    failures = []
    n = 8
    for seg in segs[:n]:
        r = writer.write(window, seg)
        valid += r.text is not None
        failures += [r.failure] if r.failure else []
        room_right += bool(r.text) and _room(r.text) == _room(captions[seg.index])
        window = (window + [WindowEntry(seg, r.text)])[-4:]
    print(f"default model: {valid}/{n} valid memories, room right in {room_right}/{n}; failures {failures}")
    assert valid >= VALID_MIN, failures  # memories that pass the runtime's format rules without a retry
    assert room_right >= ROOM_MIN, f"room right in {room_right}/{n}"


@pytest.mark.slow
def test_answers_from_memories_better_than_chance(backend, heldout):
    """Held-out questions over ground-truth memories. The shipped model answers in format but at chance level
    (it learned to always answer "B": 2/7 here, 25 % on 28 held-out questions); the accuracy bound only
    catches a model that stopped answering the options at all."""
    from edge_agent.qa.answer import LETTERS, answer_schema, parse_reply
    from edge_agent.types import Sampling

    rec = _recipe()
    segs, captions, questions = heldout
    c = {"seed": HELDOUT_SEED, "questions": questions,
         "segments": [{"index": s.index, "t_start": s.t_start, "t_end": s.t_end, "caption": captions[s.index]}
                      for s in segs]}
    import random

    rng = random.Random(0)
    right = abstained_ok = 0
    unreadable: list[str] = []
    for q in questions:
        for abstain in (False, True):
            msgs, ref = rec.qa_example(c, q, rng, abstain)
            shown = [int(x) for x in re.findall(r"^\[(\d+)\]", msgs[1].parts[0], flags=re.M)]
            if not shown:  # nothing before the question: the runtime abstains without asking the model
                continue
            g = backend.generate(msgs, Sampling(max_tokens=96), json_schema=answer_schema(LETTERS, shown))
            parsed = parse_reply(g.text, q["options"], shown)
            unreadable += [g.text] if parsed["reason"] else []
            got = parsed["choice"]
            if abstain:
                abstained_ok += got == "E"
            else:
                right += got == q["answer"]
    n = len([q for q in questions if any(s.t_end <= q["asked_at"] + 1e-6 for s in segs)])
    print(f"default model: {right}/{n} right with evidence, {abstained_ok}/{n} abstained without; "
          f"unreadable replies: {unreadable}")
    assert n >= 5 and not unreadable  # every reply is a valid letter with citations among the shown ids
    assert right / n >= QA_MIN, f"{right}/{n} right with the evidence shown"


@pytest.mark.slow
def test_transformers_and_llama_cpp_agree_on_a_writer_prompt(backend, heldout):
    """Same tokens (chat template, image markers, temporal pairs) and logits within f16 export error."""
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    from edge_agent.memory.prompts import writer_messages

    rec = _recipe()
    tok, ids, _ = rec.tokenizer_and_ids()
    segs, captions, _ = heldout
    # 3 earlier segments with memories, then the new one; a 3-frame segment exercises an unpaired frame
    segs = list(segs[:4])
    odd = segs[1]
    segs[1] = type(odd)(odd.index, odd.t_start, odd.t_end, odd.keyframes[:3])
    msgs = writer_messages("heldout", [(s, captions[s.index]) for s in segs[:3]], segs[3])
    seq, n_prompt, chunks = rec.Encoder(tok).encode(msgs, None)
    assert backend.prompt_tokens(msgs) == [-1 if t == ids["<|image_pad|>"] else t for t in seq]
    batch = rec.batch_tensors([(seq, n_prompt, chunks)], ids["<|endoftext|>"], ids["<|image_pad|>"])
    batch.pop("labels")
    model = Qwen3VLForConditionalGeneration.from_pretrained(DEFAULT / "hf", dtype=torch.float32).eval()
    with torch.no_grad():
        ref = model(**batch).logits[0, -1].numpy()
    got = backend.logits(msgs)[: ref.shape[0]]
    print(f"default model: max |logit diff| {np.abs(got - ref).max():.2e}")
    assert np.abs(got - ref).max() < PARITY_MAX
    assert int(np.argmax(got)) == int(np.argmax(ref))


# Measured on the shipped model for seed 9001 (see models/default/README.md), minus a margin:
# valid 7/8, room right 6/8 (chance 2/8), QA 2/7 (chance), max |logit diff| 3.7e-4 (f32 GGUF).
VALID_MIN = 6
ROOM_MIN = 4
QA_MIN = 0.1
PARITY_MAX = 2e-3
