"""Our exporter against llama.cpp's own convert_hf_to_gguf.py: same tensors (bit for bit), same KVs.

Needs llama.cpp's converter: EDGE_AGENT_LLAMA_CPP_DIR=/path/to/llama.cpp, or else the one vendored in the
llama-cpp-python sdist of the installed version, which the `llama_cpp_dir` fixture fetches with
`pip download` (pip's cache, else the index) and unpacks once under .pytest_cache. It never skips: a CI run
without the converter fails and says how to provide it.
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

CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def _unpack_converter(sdist: Path, root: Path) -> None:
    import tarfile

    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    with tarfile.open(sdist) as tar:
        for m in tar.getmembers():
            parts = m.name.split("/", 3)  # llama_cpp_python-X/vendor/llama.cpp/<rest>
            if len(parts) == 4 and parts[1:3] == ["vendor", "llama.cpp"] and \
                    any(parts[3] == p or parts[3].startswith(p) for p in CONVERTER_PARTS) and (m.isfile() or m.isdir()):
                m.name = parts[3]
                tar.extract(m, tmp, filter="data")
    os.replace(tmp, root)


@pytest.fixture(scope="session")
def llama_cpp_dir(request, tmp_path_factory) -> str:
    env = os.environ.get("EDGE_AGENT_LLAMA_CPP_DIR")
    if env:
        assert Path(env, "convert_hf_to_gguf.py").is_file(), f"EDGE_AGENT_LLAMA_CPP_DIR={env}: no convert_hf_to_gguf.py"
        return env
    import llama_cpp

    cache = getattr(request.config, "cache", None)
    base = Path(cache.mkdir("edge_agent_llama_cpp")) if cache is not None else tmp_path_factory.mktemp("llama_cpp")
    root = base / f"llama.cpp-{llama_cpp.__version__}"
    if not (root / "convert_hf_to_gguf.py").is_file():
        dl = tmp_path_factory.mktemp("sdist")
        proc = subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={llama_cpp.__version__}",
                               "--no-deps", "--no-binary", "llama-cpp-python", "-d", str(dl)],
                              capture_output=True, timeout=1800)
        sdists = list(dl.glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            pytest.fail("llama.cpp's converter is needed: set EDGE_AGENT_LLAMA_CPP_DIR to a llama.cpp tree, or let "
                        f"`pip download llama-cpp-python=={llama_cpp.__version__} --no-binary llama-cpp-python` "
                        f"reach pip's cache or the index ({proc.stderr.decode()[-300:]})")
        _unpack_converter(sdists[0], root)
    return str(root)

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
def test_same_as_llama_cpp_converter(tiny_model, tmp_path, outtype, llama_cpp_dir):
    LLAMA_CPP = llama_cpp_dir
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
