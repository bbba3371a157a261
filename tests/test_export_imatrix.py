"""compute_imatrix: the statistic llama-imatrix collects (sum of squared matmul inputs per column), from transformers."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

from edge_agent.errors import ConfigError, DataError
from edge_agent.export import calibration_texts, compute_imatrix, load_imatrix

TEXTS = ["I put the red cup on the shelf in the kitchen.", '{"description": "<face_1> opened the fridge."}']


def test_imatrix_values_are_squared_inputs(tiny_model, tmp_path):
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
    from export_support import test_image

    image = np.asarray(test_image(128, 128))
    out = compute_imatrix(tiny_model / "hf", tmp_path / "imatrix.gguf", [TEXTS[0], (TEXTS[1], image)], dataset="unit")
    r = gguf.GGUFReader(out)
    assert r.fields["imatrix.datasets"].contents() == ["unit"] and r.fields["imatrix.chunk_count"].contents() == 2
    names = {t.name for t in r.tensors}
    assert len(names) == 24 * 7 * 2  # 7 matrices per layer, sums + counts each

    # Independent check of one entry: blk.5.attn_q's input is layer 5's input_layernorm output.
    tok = AutoTokenizer.from_pretrained(tiny_model / "hf")
    model = Qwen3VLForConditionalGeneration.from_pretrained(tiny_model / "hf", dtype=torch.float32).eval()
    seen = []
    h = model.model.language_model.layers[5].input_layernorm.register_forward_hook(lambda m, a, o: seen.append(o[0]))
    with torch.no_grad():
        model(input_ids=torch.tensor([tok(TEXTS[0])["input_ids"]]))
    h.remove()
    x = seen[0].numpy()
    t = {t.name: t for t in r.tensors}
    imx = load_imatrix(out)
    n_image_tokens = 16 + 2  # 128x128 px -> 4x4 merged tokens, plus vision start/end
    n_tokens = len(tok(TEXTS[0])["input_ids"]) + len(tok(TEXTS[1])["input_ids"]) + n_image_tokens
    assert int(np.asarray(t["blk.5.attn_q.weight.counts"].data).item()) == n_tokens
    only_first = compute_imatrix(tiny_model / "hf", tmp_path / "first.gguf", [TEXTS[0]])
    np.testing.assert_allclose(load_imatrix(only_first).values["blk.5.attn_q.weight"], (x * x).mean(axis=0), rtol=1e-5)
    assert imx.values["blk.5.ffn_down.weight"].shape == (128,)  # ffn_down's input is the 128-wide MLP activation


@pytest.mark.skipif(not __import__("importlib").util.find_spec("llama_cpp"), reason="needs llama_cpp")
def test_quantize_with_computed_imatrix(tiny_model, tmp_path):
    from edge_agent.export import quantize

    imx = compute_imatrix(tiny_model / "hf", tmp_path / "imatrix.gguf", TEXTS)
    out = quantize(tiny_model / "model.gguf", tmp_path / "q4.gguf", "Q4_K_M", imatrix=imx)
    assert gguf.GGUFReader(out).fields["quantize.imatrix.entries_count"].contents() == 24 * 7


def test_calibration_texts_and_errors(tiny_model, tmp_path):
    (tmp_path / "calib.txt").write_text("first prompt\nstill first\n\n\nsecond prompt\n")
    assert calibration_texts(tmp_path / "calib.txt") == ["first prompt\nstill first", "second prompt"]
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="no calibration samples"):
        calibration_texts(tmp_path / "empty.txt")
    with pytest.raises(ConfigError, match="not found"):
        calibration_texts(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="no calibration samples"):
        compute_imatrix(tiny_model / "hf", tmp_path / "x.gguf", [])
