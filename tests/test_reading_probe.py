"""tools/reading_probe.py: its copy rows repeat themselves, its lookup rows hold their answer in exactly the cited
memory line (both prompt formats), and its scorer splits answer from citation where the JSON does."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]
HF = ROOT / "models" / "default" / "hf"


@pytest.fixture(scope="module")
def probe():
    return load_tool("reading_probe")


@pytest.fixture(scope="module")
def tok(probe):
    return probe.T.tokenizer_from(HF)


def test_copy_rows_repeat_a_plain_sequence_after_the_head_token(probe):
    torch = pytest.importorskip("torch")
    x = probe.copy_batch(torch.Generator().manual_seed(0), 8, 16, 825, 826)
    assert x.shape == (8, 33)
    assert (x[:, 0] == 826).all()
    assert torch.equal(x[:, 1:17], x[:, 17:])
    assert int(x[:, 1:].max()) < 825  # plain tokens only: no special token inside
    assert len({tuple(r) for r in x[:, 1:17].tolist()}) == 8  # rows differ


@pytest.mark.parametrize("fmt", ["short", "product"])
def test_lookup_rows_hold_the_answer_in_the_cited_line_only(probe, tok, fmt):
    tokenizer, penc = tok
    rng = random.Random(5)
    shown = removed = 0
    for _ in range(40):
        p, r = probe.T.lookup_row(tokenizer, penc, rng, 4, fmt)
        prompt, reply = tokenizer.decode(p, skip_special_tokens=False), json.loads(tokenizer.decode(r))
        lines = dict(re.findall(r"^\[(\d+)\] \S+ (.*)$", prompt, re.M))
        assert 2 <= len(lines) + (reply["citations"] == []) <= 4
        assert ("You answer the wearer's questions" in prompt) == (fmt == "product")
        assert prompt.rstrip().splitlines()[-1].startswith("Question:" if fmt == "short" else "<|im_start|>assistant")
        if reply["citations"]:
            (cited,) = reply["citations"]
            assert reply["answer"] in lines[str(cited)]
            shown += 1
        else:
            assert reply["answer"] == "not in memory"
            removed += 1
    assert shown > 20 and removed > 2


def test_the_scorer_splits_the_reply_at_the_answer_value(probe, tok):
    """A model that predicts the answer but not the citation scores (True, False), and the other way round."""
    torch = pytest.importorskip("torch")
    tokenizer, _ = tok
    prompt = tokenizer.encode("Question: Where did I leave the cup?\n").ids
    reply = tokenizer.encode('{"answer": "on the bed in the bedroom", "citations": [368]}').ids
    k = next(i for i in range(len(reply)) if tokenizer.decode(reply[:i + 1]).endswith("bedroom")) + 1

    class Oracle(torch.nn.Module):  # arg-max = the reply's next token, wrong from position `wrong_from` on
        def __init__(self, wrong_from, wrong_below):
            super().__init__()
            self.wrong_from, self.wrong_below = wrong_from, wrong_below

        def forward(self, input_ids):
            ids = input_ids[0].tolist()
            logits = torch.zeros(1, len(ids), 900)
            for i in range(len(ids) - 1):
                j = i + 1 - len(prompt)  # reply token predicted at position i
                right = ids[i + 1]
                bad = j >= 0 and (self.wrong_from <= j or j < self.wrong_below)
                logits[0, i, (right + 1) % 825 if bad else right] = 1.0
            return type("Out", (), {"logits": logits})

    assert probe.T.reply_exact(Oracle(len(reply), 0), tokenizer, prompt, reply, "cpu") == (True, True)
    assert probe.T.reply_exact(Oracle(k, 0), tokenizer, prompt, reply, "cpu") == (True, False)
    assert probe.T.reply_exact(Oracle(len(reply), 1), tokenizer, prompt, reply, "cpu") == (False, True)


@pytest.mark.parametrize("argv, named", [(["--from", "/no/such/folder"], "--from /no/such/folder"),
                                         (["--top", "1"], "--top 1")])
def test_bad_arguments_get_one_line_naming_them(argv, named):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "reading_probe.py"), "lookup", *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and named in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lookup_stage_step_learns_from_the_reply_tokens_only(probe, tok):
    """train_default's lookup stage: the loss is over the reply tokens alone, and a step lowers it."""
    torch = pytest.importorskip("torch")
    tokenizer, penc = tok
    T = probe.T
    rows = [T.lookup_row(tokenizer, penc, random.Random(i), 3, "short") for i in range(6)]
    x, w = T.padded(rows, 825, "cpu")
    for i, (p, r) in enumerate(rows):
        assert w[i].tolist() == [0.0] * len(p) + [1.0] * len(r) + [0.0] * (x.shape[1] - len(p) - len(r))
        assert x[i, :len(p) + len(r)].tolist() == p + r

    class TinyLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = torch.nn.Embedding(1000, 32), torch.nn.Linear(32, 1000)

        def forward(self, input_ids):
            return type("Out", (), {"logits": self.out(torch.tanh(self.emb(input_ids)))})

    torch.manual_seed(0)
    model = TinyLM()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        losses.append(T.ids_step(model, *T.padded(rows, 825, "cpu")))
        opt.step()
    assert losses[-1] < 0.6 * losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    # the padding after a short row is no target: another pad id leaves the loss as it was
    model.zero_grad()
    base = T.ids_step(model, *T.padded(rows, 825, "cpu"))
    model.zero_grad()
    assert T.ids_step(model, *T.padded(rows, 824, "cpu")) == pytest.approx(base, rel=1e-6)
