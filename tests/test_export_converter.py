"""Our exporter against llama.cpp's own convert_hf_to_gguf.py: same tensors (bit for bit), same KVs.

Needs a llama.cpp source tree (e.g. the one vendored in the llama-cpp-python sdist):
    EDGE_AGENT_LLAMA_CPP_DIR=/path/to/llama.cpp pytest tests/test_export_converter.py
The converter cannot name our home-made tokenizer's pre-tokenizer (it hashes known tokenizers) and tries
sentencepiece first, so a small wrapper tells it "qwen2" and byte-level BPE, which is what our tokenizer is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest

LLAMA_CPP = os.environ.get("EDGE_AGENT_LLAMA_CPP_DIR")
pytestmark = pytest.mark.skipif(not LLAMA_CPP or not Path(LLAMA_CPP, "convert_hf_to_gguf.py").is_file(),
                                reason="set EDGE_AGENT_LLAMA_CPP_DIR to a llama.cpp source tree")

WRAPPER = """
import runpy, sys
root = sys.argv.pop(1)
sys.path[:0] = [root, root + "/gguf-py"]
import conversion.base, conversion.qwen
conversion.base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "qwen2"
conversion.qwen.Qwen2Model.set_vocab = lambda self: self._set_vocab_gpt2()
sys.argv[0] = "convert_hf_to_gguf.py"
runpy.run_path(root + "/convert_hf_to_gguf.py", run_name="__main__")
"""

# Keys only one side writes, on purpose: ours names the checkpoint and sets BOS explicitly (Qwen names none).
OURS_ONLY = {"edge_agent.base_model_hash", "edge_agent.exporter", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.add_bos_token"}
EITHER = {"general.name", "general.size_label"}


def _read(path):
    r = gguf.GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    return kv, {t.name: (t.tensor_type, np.asarray(t.data).tobytes()) for t in r.tensors}


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_same_as_llama_cpp_converter(tiny_model, tmp_path, outtype):
    from edge_agent.export import export_hf

    ours = export_hf(tiny_model / "hf", tmp_path / "ours", outtype)
    wrapper = tmp_path / "convert.py"
    wrapper.write_text(WRAPPER)
    theirs = []
    for extra, name in [([], "model.gguf"), (["--mmproj"], "mmproj.gguf")]:
        out = tmp_path / "theirs" / name
        out.parent.mkdir(exist_ok=True)
        subprocess.run([sys.executable, str(wrapper), LLAMA_CPP, str(tiny_model / "hf"), "--outtype", outtype,
                        "--outfile", str(out), *extra], check=True, capture_output=True)
        theirs.append(out)
    for a, b in zip(ours, theirs):
        (kv_a, t_a), (kv_b, t_b) = _read(a), _read(b)
        assert t_a == t_b, a.name
        diff = {k for k in set(kv_a) | set(kv_b) if kv_a.get(k) != kv_b.get(k)}
        assert diff <= OURS_ONLY | EITHER, (a.name, diff)
