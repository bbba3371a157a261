"""tools/reading_probe.py: its copy rows repeat themselves, its lookup rows hold their answer in exactly the cited
memory line (both prompt formats), and its scorer splits answer from citation where the JSON does."""

from __future__ import annotations

import importlib.util
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HF = ROOT / "models" / "default" / "hf"


@pytest.fixture(scope="module")
def probe():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        spec = importlib.util.spec_from_file_location("reading_probe", ROOT / "tools" / "reading_probe.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.pop(0)
    return mod


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
        p, r = probe.lookup_row(tokenizer, penc, rng, 4, fmt)
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
    tokenizer, _ = tok
    reply = '{"answer": "on the bed in the bedroom", "citations": [368]}'
    r = tokenizer.encode(reply).ids
    k = probe.T.answer_token_count(tokenizer, tokenizer.decode(r))
    assert tokenizer.decode(r[:k]).endswith("bedroom")
    assert tokenizer.decode(r[k:]).startswith('", "citations": [')


@pytest.mark.parametrize("argv, named", [(["--from", "/no/such/folder"], "--from /no/such/folder"),
                                         (["--top", "1"], "--top 1")])
def test_bad_arguments_get_one_line_naming_them(argv, named):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "reading_probe.py"), "lookup", *argv],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and named in proc.stderr
    assert "Traceback" not in proc.stderr
