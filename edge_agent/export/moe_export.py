"""Hugging Face Qwen3-VL MoE (Qwen3VLMoeForConditionalGeneration, e.g. Qwen3-VL-30B-A3B, the paper's base model)
-> DIR/model.gguf (arch qwen3vlmoe) + DIR/mmproj.gguf, with the dense exporter's rules for everything shared.

What differs from the dense model is only the feed-forward block of each text layer:

- the router `mlp.gate.weight` (n_expert, hidden) -> `blk.N.ffn_gate_inp.weight`, always F32 (as llama.cpp's
  converter keeps it: routing decisions are sensitive to rounding);
- the fused experts `mlp.experts.gate_up_proj` -> `blk.N.ffn_gate_exps.weight` and `blk.N.ffn_up_exps.weight`,
  each (n_expert, n_ff_exp, hidden) in numpy order; transformers 5 saves gate_up_proj as (n_expert, 2 n_ff_exp,
  hidden) with the gate rows first, the published checkpoints as (n_expert, hidden, 2 n_ff_exp): both are read;
- `mlp.experts.down_proj` -> `blk.N.ffn_down_exps.weight` (n_expert, hidden, n_ff_exp); published (n_expert,
  n_ff_exp, hidden) is transposed;
- KVs expert_count, expert_used_count, expert_feed_forward_length.

The vision tower is the dense one's (same tensors, same mmproj). All text layers must be sparse (Qwen3-VL MoE has
no `mlp_only_layers`). `make_tiny_moe` builds a seeded tiny MoE for the parity test (tests/test_train_export_moe.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ConfigError, ModelError
from edge_agent.export import gguf_export as dense
from edge_agent.export.hf_checkpoint import MOE_ARCH, TensorRef, base_model_hash, read_safetensors_index, weight_files

MOE_MODEL_TYPE = "qwen3_vl_moe"


def load_moe_config(hf_dir: Path) -> dict[str, Any]:
    path = hf_dir / "config.json"
    if not path.is_file():
        raise ConfigError(f"{path}: missing (not a Hugging Face checkpoint folder)")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    arch = (cfg.get("architectures") or [None])[0]
    if arch != MOE_ARCH and cfg.get("model_type") != MOE_MODEL_TYPE:
        raise ModelError(f"{path}: architecture {arch!r} is not {MOE_ARCH}")
    for part in ("text_config", "vision_config"):
        if not isinstance(cfg.get(part), dict):
            raise ConfigError(f"{path}: {part} missing")
    return cfg


def is_moe_checkpoint(hf_dir: str | Path) -> bool:
    path = Path(hf_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return (cfg.get("architectures") or [None])[0] == MOE_ARCH or cfg.get("model_type") == MOE_MODEL_TYPE


def _moe_hparams(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    hp = dense._text_hparams(cfg, cfg_path)
    tc = cfg["text_config"]
    n_expert = tc.get("num_experts", tc.get("num_local_experts"))
    used, n_ff_exp = tc.get("num_experts_per_tok"), tc.get("moe_intermediate_size")
    if not n_expert or not used or not n_ff_exp:
        raise ConfigError(f"{cfg_path}: text_config needs num_experts, num_experts_per_tok and moe_intermediate_size")
    if tc.get("mlp_only_layers"):
        raise ModelError(f"{cfg_path}: mlp_only_layers={tc['mlp_only_layers']}: dense layers inside a Qwen3-VL MoE "
                         "are not supported by llama.cpp's qwen3vlmoe")
    if int(tc.get("decoder_sparse_step", 1)) != 1:
        raise ModelError(f"{cfg_path}: decoder_sparse_step={tc['decoder_sparse_step']}: every layer must be sparse")
    return {**hp, "n_expert": int(n_expert), "n_expert_used": int(used), "n_ff_exp": int(n_ff_exp)}


def _gate_up(ref: TensorRef, hp: dict[str, Any], hf_dir: Path) -> tuple[Any, Any]:
    e, h, f = hp["n_expert"], hp["hidden"], hp["n_ff_exp"]
    if ref.shape == (e, 2 * f, h):  # transformers 5: rows [gate; up]
        def load() -> np.ndarray:
            return ref.load()
    elif ref.shape == (e, h, 2 * f):  # published checkpoints: columns [gate | up]
        def load() -> np.ndarray:
            return np.ascontiguousarray(ref.load().transpose(0, 2, 1))
    else:
        raise ModelError(f"{hf_dir}: {ref.name} has shape {ref.shape}; expected ({e}, {2 * f}, {h}) or ({e}, {h}, {2 * f})")
    return (lambda: np.ascontiguousarray(load()[:, :f, :])), (lambda: np.ascontiguousarray(load()[:, f:, :]))


def _down(ref: TensorRef, hp: dict[str, Any], hf_dir: Path):
    e, h, f = hp["n_expert"], hp["hidden"], hp["n_ff_exp"]
    if ref.shape == (e, h, f):  # transformers 5 (also taken when hidden == n_ff_exp, where both read alike)
        return ref.load
    if ref.shape == (e, f, h):  # published checkpoints
        return lambda: np.ascontiguousarray(ref.load().transpose(0, 2, 1))
    raise ModelError(f"{hf_dir}: {ref.name} has shape {ref.shape}; expected ({e}, {h}, {f}) or ({e}, {f}, {h})")


def _plan_moe_text(refs: dict[str, TensorRef], hp: dict[str, Any], wanted, hf_dir: Path) -> list:
    g = dense._gguf()
    F32 = g.GGMLQuantizationType.F32
    tmap = g.get_tensor_name_map(g.MODEL_ARCH.QWEN3VLMOE, hp["n_layers"])
    e, h, f = hp["n_expert"], hp["hidden"], hp["n_ff_exp"]
    planned = []

    def add(name: str, load, shape, qtype=None):
        qtype = dense._storage_type(name, tuple(shape), wanted) if qtype is None else qtype
        planned.append(dense._Planned(name, load, tuple(shape), qtype))

    for hf_name, ref in refs.items():
        split = dense.split_name(hf_name)
        if split is None or split[0] == "vision":
            continue
        if split[0] == "unknown":
            raise ModelError(f"{hf_dir}: unexpected tensor {hf_name} (not text, vision or lm_head)")
        canon = split[1]  # model.layers.N.…
        parts = canon.split(".")
        if canon.endswith("mlp.experts.gate_up_proj"):
            bid = int(parts[2])
            gate, up = _gate_up(ref, hp, hf_dir)
            add(f"blk.{bid}.ffn_gate_exps.weight", gate, (e, f, h))
            add(f"blk.{bid}.ffn_up_exps.weight", up, (e, f, h))
        elif canon.endswith("mlp.experts.down_proj"):
            add(f"blk.{int(parts[2])}.ffn_down_exps.weight", _down(ref, hp, hf_dir), (e, h, f))
        elif ".mlp.experts." in canon:
            raise ModelError(f"{hf_dir}: per-expert tensor {hf_name}; expected fused experts.gate_up_proj/down_proj")
        elif canon.endswith("mlp.gate.weight"):
            add(f"blk.{int(parts[2])}.ffn_gate_inp.weight", ref.load, ref.shape, F32)
        else:
            name = tmap.get_name(canon, try_suffixes=(".weight", ".bias"))
            if name is None:
                raise ModelError(f"{hf_dir}: cannot map tensor {hf_name} to a qwen3vlmoe GGUF tensor")
            add(name, ref.load, ref.shape)
    names = {p.name for p in planned}
    if "token_embd.weight" not in names:
        raise ModelError(f"{hf_dir}: embed_tokens weight missing")
    if "output.weight" not in names and not hp["tied"]:
        raise ModelError(f"{hf_dir}: lm_head.weight missing and tie_word_embeddings is false")
    for bid in range(hp["n_layers"]):
        for part in ("ffn_gate_inp", "ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"):
            if f"blk.{bid}.{part}.weight" not in names:
                raise ModelError(f"{hf_dir}: layer {bid} has no {part} (expert weights missing)")
    return planned


def export_hf_moe(hf_dir: str | Path, out_dir: str | Path, outtype: str = "f16", *,
                  mmproj_outtype: str | None = None, name: str | None = None,
                  progress: dense.Progress | None = None) -> tuple[Path, Path]:
    """Export a Qwen3-VL MoE checkpoint folder to OUT_DIR/model.gguf (qwen3vlmoe) + OUT_DIR/mmproj.gguf."""
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    ftype, wanted = dense._outtype(outtype)
    v_ftype, v_wanted = dense._outtype(mmproj_outtype or outtype)
    cfg = load_moe_config(hf_dir)
    hp = _moe_hparams(cfg, hf_dir / "config.json")
    vp = dense._vision_hparams(cfg, hf_dir)
    refs = read_safetensors_index(weight_files(hf_dir))
    text_planned = _plan_moe_text(refs, hp, wanted, hf_dir)
    vision_planned = dense._plan_vision(refs, vp, v_wanted, hf_dir)
    digest = base_model_hash(hf_dir, progress)
    name = name or (hf_dir.resolve().name if hf_dir.resolve().name != "hf" else hf_dir.resolve().parent.name)
    from edge_agent import __version__

    g = dense._gguf()

    def common(w) -> None:
        w.add_name(name)
        w.add_string(dense.KEY_BASE_MODEL_HASH, digest)
        w.add_string(dense.KEY_EXPORTER, f"edge-agent {__version__}")

    def text_kvs(w) -> None:
        w.add_type(g.GGUFType.MODEL)
        common(w)
        dense._add_text_kvs(w, cfg, hp, ftype, hf_dir)
        w.add_expert_count(hp["n_expert"])
        w.add_expert_used_count(hp["n_expert_used"])
        w.add_expert_feed_forward_length(hp["n_ff_exp"])

    def vision_kvs(w) -> None:
        common(w)
        dense._add_vision_kvs(w, vp, v_ftype)

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, mmproj_path = out_dir / dense.MODEL_FILE, out_dir / dense.MMPROJ_FILE
    dense._write(model_path, g.MODEL_ARCH_NAMES[g.MODEL_ARCH.QWEN3VLMOE], text_kvs, text_planned, progress)
    dense._write(mmproj_path, "clip", vision_kvs, vision_planned, progress)
    return model_path, mmproj_path


# --- the tiny MoE test model -----------------------------------------------------------------------------------

def tiny_moe_config(vocab_size: int, ids: dict[str, int], *, layers: int = 4, experts: int = 4, used: int = 2,
                    moe_intermediate: int = 48):
    """The tiny dense config (edge_agent.export.tiny) with a sparse MoE feed-forward in every layer."""
    from transformers import Qwen3VLMoeConfig

    from edge_agent.export.tiny import tiny_config

    d = tiny_config(vocab_size, ids, layers=layers).to_dict()
    tc, vc = d["text_config"], d["vision_config"]
    for part in (tc, vc):
        for key in ("model_type", "architectures", "dtype", "transformers_version"):
            part.pop(key, None)
    tc.update(num_experts=experts, num_experts_per_tok=used, moe_intermediate_size=moe_intermediate,
              decoder_sparse_step=1, mlp_only_layers=[])
    return Qwen3VLMoeConfig(text_config=tc, vision_config=vc, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)


def make_tiny_moe(out_dir: str | Path, seed: int = 0, *, outtype: str = "f32") -> tuple[Path, Path, Path]:
    """A seeded tiny Qwen3-VL MoE into OUT/hf, exported to OUT/model.gguf + OUT/mmproj.gguf."""
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3VLMoeForConditionalGeneration

    from edge_agent.export.tiny import CHAT_TEMPLATE, SPECIAL_TOKENS, VOCAB_MULTIPLE, build_tokenizer, \
        preprocessor_config

    out = Path(out_dir)
    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(hf)
    ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
    vocab_size = -(-tok.get_vocab_size(with_added_tokens=True) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLMoeForConditionalGeneration(tiny_moe_config(vocab_size, ids)).to(torch.float32).eval()
        # transformers leaves the router and experts at their empty/zero init until weights are loaded: give them
        # seeded values so routing is not a tie and every expert computes something different.
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                layer.mlp.gate.weight.normal_(0, 0.5)
                layer.mlp.experts.gate_up_proj.normal_(0, 0.05)
                layer.mlp.experts.down_proj.normal_(0, 0.05)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(hf)
    (hf / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2) + "\n")
    model_path, mmproj_path = export_hf_moe(hf, out, outtype, name=f"edge-agent-tiny-qwen3vlmoe-s{seed}")
    return hf, model_path, mmproj_path
