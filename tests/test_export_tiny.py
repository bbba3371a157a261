"""make_tiny: deterministic per seed, the shape the project relies on, a tokenizer that knows the synthetic world."""

from __future__ import annotations

import json

import pytest

from edge_agent.errors import ConfigError
from edge_agent.export import export_hf, make_tiny
from edge_agent.export.tiny import SPECIAL_TOKENS


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != "READY"}


def test_same_seed_same_bytes(tiny_model, tmp_path):
    calls = []
    hf, model, mmproj = make_tiny(tmp_path / "again", seed=0,
                                  progress=lambda stage, done, total: calls.append((stage, done, total)))
    assert (hf, model, mmproj) == (tmp_path / "again" / "hf", tmp_path / "again" / "model.gguf",
                                   tmp_path / "again" / "mmproj.gguf")
    assert _files(tmp_path / "again") == _files(tiny_model)
    assert ("model.gguf", 267, 267) in calls and ("mmproj.gguf", 58, 58) in calls  # per-tensor progress


def test_other_seed_other_weights_same_tokenizer(tiny_model, tmp_path):
    make_tiny(tmp_path / "s1", seed=1)
    a, b = _files(tiny_model), _files(tmp_path / "s1")
    assert a["hf/tokenizer.json"] == b["hf/tokenizer.json"]
    assert a["hf/model.safetensors"] != b["hf/model.safetensors"]


def test_tokenizer_knows_the_world(tiny_model):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_model / "hf" / "tokenizer.json"))
    n = tok.get_vocab_size(with_added_tokens=True)
    # Qwen's special tokens sit after the learned vocabulary, as in the real tokenizer
    assert [tok.token_to_id(s) for s in SPECIAL_TOKENS] == list(range(n - len(SPECIAL_TOKENS), n))
    for word in [" cup", " shelf", " kitchen", " counter", " picked", " memory", "description", '{"', '"}']:
        assert len(tok.encode(word).ids) == 1, word
    memory = '{"description": "I put the red cup on the shelf in the kitchen."}'
    assert len(tok.encode(memory).ids) <= 16
    assert tok.decode(tok.encode(memory).ids) == memory
    assert tok.encode("<|im_start|>user\n<|image_pad|>").tokens[:1] == ["<|im_start|>"]


def test_config_shape(tiny_model):
    cfg = json.loads((tiny_model / "hf" / "config.json").read_text())
    gen = json.loads((tiny_model / "hf" / "generation_config.json").read_text())
    pre = json.loads((tiny_model / "hf" / "preprocessor_config.json").read_text())
    tc, vc = cfg["text_config"], cfg["vision_config"]
    assert (tc["hidden_size"], tc["num_hidden_layers"], tc["head_dim"]) == (64, 24, 16)
    assert tc["vocab_size"] % 128 == 0
    assert vc["deepstack_visual_indexes"] == [0, 1] and vc["depth"] == 3
    assert gen["eos_token_id"] == tc["eos_token_id"] == cfg["image_token_id"] - 3  # <|im_end|>
    assert (pre["patch_size"], pre["merge_size"], pre["size"]["shortest_edge"]) == (16, 2, 8 * 32 * 32)


def test_bad_seed(tmp_path):
    with pytest.raises(ConfigError, match="seed=-1"):
        make_tiny(tmp_path, seed=-1)


def test_rich_progress_drives_a_bar(tiny_model, tmp_path):
    from edge_agent.export import rich_progress

    with rich_progress("export") as progress:
        export_hf(tiny_model / "hf", tmp_path, "f16", progress=progress)
    assert (tmp_path / "model.gguf").is_file()
