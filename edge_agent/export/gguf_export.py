"""Hugging Face Qwen3-VL (dense) -> llama.cpp GGUF: DIR/model.gguf (arch qwen3vl) + DIR/mmproj.gguf (qwen3vl_merger).

Semantics follow llama.cpp's own converter (convert_hf_to_gguf.py, classes Qwen3VLTextModel / Qwen3VLVisionModel),
re-implemented on the `gguf` package so the project needs neither torch nor llama.cpp's scripts to export:

- text: tensors `model.language_model.*` -> `blk.N.*` via gguf's qwen3vl name map; tokenizer as byte-level BPE
  ("gpt2") with pre-tokenizer "qwen2"; M-RoPE sections padded to 4; `qwen3vl.n_deepstack_layers`.
- vision: the Conv3D patch embedding is split along time into two Conv2D kernels (`v.patch_embd.weight` and
  `.weight.1`), merger fc1/fc2 become `mm.0`/`mm.2`, deepstack mergers `v.deepstack.<vision layer>.*`.
- types: 1-D tensors, norms and biases stay F32; the patch embedding is F16 only for f16 output, else F32;
  the position embedding stays F32; other 2-D weights take the requested type (q8_0 falls back to F16 for
  rows not divisible by the 32-wide Q8_0 block, as the converter does).

Tensors are streamed: every tensor's size is known from the safetensors header, so the GGUF header and tensor
index are written first and each tensor is then loaded, converted and written on its own.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edge_agent.errors import ConfigError, ModelError
from edge_agent.export.hf_checkpoint import (
    TensorRef,
    base_model_hash,
    load_chat_template,
    load_config,
    load_json,
    load_vocab,
    read_safetensors_index,
    weight_files,
)

# progress(stage, done, total): stage "hash" counts bytes of weights hashed; "model.gguf" / "mmproj.gguf" count tensors.
Progress = Callable[[str, int, int], None]

OUTTYPES = ("f32", "f16", "q8_0")
KEY_BASE_MODEL_HASH = "edge_agent.base_model_hash"
KEY_EXPORTER = "edge_agent.exporter"
MODEL_FILE, MMPROJ_FILE = "model.gguf", "mmproj.gguf"


def _gguf():
    import gguf  # runtime dependency, but keep `import edge_agent.export` cheap

    return gguf


def _outtype(outtype: str):
    g = _gguf()
    table = {
        "f32": (g.LlamaFileType.ALL_F32, g.GGMLQuantizationType.F32),
        "f16": (g.LlamaFileType.MOSTLY_F16, g.GGMLQuantizationType.F16),
        "q8_0": (g.LlamaFileType.MOSTLY_Q8_0, g.GGMLQuantizationType.Q8_0),
    }
    key = str(outtype).lower()
    if key not in table:
        raise ConfigError(f"outtype={outtype!r}: expected one of {', '.join(OUTTYPES)}")
    return table[key]


@dataclass
class _Planned:
    """One output tensor: its GGUF name, how to get its float32 data (HF/numpy layout), shape and storage type."""

    name: str
    load: Callable[[], np.ndarray]
    shape: tuple[int, ...]
    qtype: Any  # gguf.GGMLQuantizationType


def _storage_type(name: str, shape: tuple[int, ...], wanted, *, force_f32: bool = False):
    """The converter's per-tensor type rule (see module docstring)."""
    g = _gguf()
    F32, F16, Q8_0 = g.GGMLQuantizationType.F32, g.GGMLQuantizationType.F16, g.GGMLQuantizationType.Q8_0
    if force_f32 or len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return F32
    if wanted == Q8_0 and shape[-1] % g.GGML_QUANT_SIZES[Q8_0][0] != 0:
        return F16  # converter: QuantError -> "falling back to F16"
    return wanted


def _nbytes(shape: tuple[int, ...], qtype) -> int:
    g = _gguf()
    block, type_size = g.GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * type_size if shape else type_size


def _encode(data: np.ndarray, qtype) -> np.ndarray:
    """float32 -> bytes as GGUF stores them (F32/F16 arrays, or uint8 blocks from gguf's quantizers)."""
    g = _gguf()
    if qtype == g.GGMLQuantizationType.F32:
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == g.GGMLQuantizationType.F16:
        return np.ascontiguousarray(data, dtype=np.float16)
    return g.quants.quantize(np.ascontiguousarray(data, dtype=np.float32), qtype)


# --- text model ------------------------------------------------------------------------------------------------

def split_name(hf_name: str) -> tuple[str, str] | None:
    """('text'|'vision', canonical name) for a checkpoint tensor; None for tensors the GGUF files do not carry.

    transformers >= 4.57 saves `model.language_model.*` / `model.visual.*`; older saves use `model.*` / `visual.*`.
    """
    if hf_name.startswith("mtp."):
        return None
    if hf_name.startswith("model.visual."):
        return "vision", hf_name[len("model."):]
    if hf_name.startswith("visual."):
        return "vision", hf_name
    if hf_name.startswith("model.language_model."):
        return "text", "model." + hf_name[len("model.language_model."):]
    if hf_name.startswith(("model.", "lm_head.")):
        return "text", hf_name
    return "unknown", hf_name


def _text_hparams(cfg: dict[str, Any], cfg_path: Path) -> dict[str, Any]:
    tc = cfg["text_config"]

    def need(key: str):
        if key not in tc or tc[key] is None:
            raise ConfigError(f"{cfg_path}: text_config.{key} missing")
        return tc[key]

    hidden, n_head = int(need("hidden_size")), int(need("num_attention_heads"))
    head_dim = int(tc.get("head_dim") or hidden // n_head)
    rope = dict(tc.get("rope_parameters") or tc.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "mrope"):
        raise ConfigError(f"{cfg_path}: text_config rope_type={rope_type!r} is not supported (only default M-RoPE)")
    theta = rope.get("rope_theta", tc.get("rope_theta"))
    if theta is None:
        raise ConfigError(f"{cfg_path}: text_config rope_theta missing")
    sections = list(rope.get("mrope_section") or [])
    if len(sections) not in (3, 4) or sum(sections) != head_dim // 2:
        raise ConfigError(f"{cfg_path}: mrope_section={sections!r} must have 3 entries summing to head_dim/2={head_dim // 2}")
    if rope.get("mrope_interleaved") is False:
        raise ConfigError(f"{cfg_path}: mrope_interleaved=False is not Qwen3-VL's M-RoPE (llama.cpp uses interleaved)")
    return dict(
        n_layers=int(need("num_hidden_layers")), hidden=hidden, n_ff=int(need("intermediate_size")), n_head=n_head,
        n_head_kv=int(tc.get("num_key_value_heads") or n_head), head_dim=head_dim, n_ctx=int(need("max_position_embeddings")),
        rms_eps=float(tc.get("rms_norm_eps", 1e-6)), theta=float(theta), sections=(sections + [0, 0, 0, 0])[:4],
        vocab_size=int(need("vocab_size")),
        tied=bool(cfg.get("tie_word_embeddings", tc.get("tie_word_embeddings", False))),
    )


def _plan_text(refs: dict[str, TensorRef], hp: dict[str, Any], wanted, hf_dir: Path) -> list[_Planned]:
    g = _gguf()
    tmap = g.get_tensor_name_map(g.MODEL_ARCH.QWEN3VL, hp["n_layers"])
    planned = []
    for hf_name, ref in refs.items():
        split = split_name(hf_name)
        if split is None or split[0] == "vision":
            continue
        if split[0] == "unknown":
            raise ModelError(f"{hf_dir}: unexpected tensor {hf_name} (not text, vision or lm_head)")
        name = tmap.get_name(split[1], try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ModelError(f"{hf_dir}: cannot map tensor {hf_name} to a qwen3vl GGUF tensor")
        planned.append(_Planned(name, ref.load, ref.shape, _storage_type(name, ref.shape, wanted)))
    names = {p.name for p in planned}
    if "token_embd.weight" not in names:
        raise ModelError(f"{hf_dir}: embed_tokens weight missing")
    if "output.weight" not in names and not hp["tied"]:
        raise ModelError(f"{hf_dir}: lm_head.weight missing and tie_word_embeddings is false")
    return planned


def _add_text_kvs(w, cfg: dict[str, Any], hp: dict[str, Any], ftype, hf_dir: Path) -> None:
    g = _gguf()
    w.add_block_count(hp["n_layers"])
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["hidden"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_key_length(hp["head_dim"])
    w.add_value_length(hp["head_dim"])
    w.add_rope_freq_base(hp["theta"])
    w.add_rope_dimension_sections(hp["sections"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    # Deepstack: the vision tower's extra features are added to the first N text layers' outputs.
    w.add_num_deepstack_layers(len(cfg["vision_config"].get("deepstack_visual_indexes") or []))
    w.add_file_type(ftype)

    # Tokenizer: byte-level BPE with Qwen2's pre-tokenizer; merges, special ids and chat template from the folder.
    vocab = load_vocab(hf_dir, hp["vocab_size"], _looks_special)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.types)
    sv = g.SpecialVocab(hf_dir, load_merges=True, n_vocab=hp["vocab_size"])
    if not sv.merges:
        raise ModelError(f"{hf_dir / 'tokenizer.json'}: no BPE merges")
    # Qwen names no BOS token; llama.cpp would then default to id 11. Point it at <|endoftext|> (as Qwen's own
    # GGUFs do) and say explicitly that none is added.
    tc_bos = cfg["text_config"].get("bos_token_id")
    if "bos" not in sv.special_token_ids:
        bos = tc_bos if isinstance(tc_bos, int) else vocab.special_ids.get("<|endoftext|>")
        if bos is not None:
            sv.special_token_ids["bos"] = bos
    sv.add_special_token.setdefault("bos", False)
    sv.chat_template = load_chat_template(hf_dir)
    sv.add_to_gguf(w, quiet=True)


def _looks_special(text: str) -> bool:
    return text.startswith("<|") and text.endswith("|>")


# --- vision tower (mmproj) -------------------------------------------------------------------------------------

def _vision_hparams(cfg: dict[str, Any], hf_dir: Path) -> dict[str, Any]:
    vc, cfg_path = cfg["vision_config"], hf_dir / "config.json"

    def need(key: str):
        if vc.get(key) is None:
            raise ConfigError(f"{cfg_path}: vision_config.{key} missing")
        return vc[key]

    if int(vc.get("temporal_patch_size", 2)) != 2:
        raise ConfigError(f"{cfg_path}: vision_config.temporal_patch_size={vc['temporal_patch_size']}: only 2 is supported")
    act = str(vc.get("hidden_act", "gelu_pytorch_tanh"))
    if not act.startswith("gelu"):
        raise ConfigError(f"{cfg_path}: vision_config.hidden_act={act!r}: only GELU is supported")
    depth, patch = int(need("depth")), int(need("patch_size"))
    deepstack = [int(i) for i in vc.get("deepstack_visual_indexes") or []]
    if any(not 0 <= i < depth for i in deepstack):
        raise ConfigError(f"{cfg_path}: deepstack_visual_indexes={deepstack} outside 0..{depth - 1}")
    text_hidden = int(cfg["text_config"]["hidden_size"])
    if int(vc.get("out_hidden_size", text_hidden)) != text_hidden:
        raise ConfigError(f"{cfg_path}: vision_config.out_hidden_size={vc['out_hidden_size']} != text hidden_size {text_hidden}")
    # Learned position embeddings cover a square grid of num_position_embeddings patches; llama.cpp wants the
    # image side that grid corresponds to.
    n_pos = int(vc.get("num_position_embeddings", 2304))
    pre = {**load_json(hf_dir / "preprocessor_config.json", required=False)}
    proc = load_json(hf_dir / "processor_config.json", required=False)
    pre.update(proc.get("image_processor") or {})
    if "image_mean" not in pre or "image_std" not in pre:
        raise ConfigError(f"{hf_dir / 'preprocessor_config.json'}: missing or without image_mean/image_std")
    return dict(
        depth=depth, hidden=int(need("hidden_size")), n_ff=int(need("intermediate_size")), n_head=int(need("num_heads")),
        patch=patch, image_size=int(math.isqrt(n_pos) * patch), merge=int(vc.get("spatial_merge_size", 2)),
        deepstack=deepstack, text_hidden=text_hidden, mean=[float(x) for x in pre["image_mean"]],
        std=[float(x) for x in pre["image_std"]],
    )


def _plan_vision(refs: dict[str, TensorRef], vp: dict[str, Any], wanted, hf_dir: Path) -> list[_Planned]:
    g = _gguf()
    T, names = g.MODEL_TENSOR, g.TENSOR_NAMES
    F32, F16 = g.GGMLQuantizationType.F32, g.GGMLQuantizationType.F16
    vmap = g.get_tensor_name_map(g.MODEL_ARCH.MMPROJ, vp["depth"])
    patch_type = F16 if wanted == F16 else F32
    planned: list[_Planned] = []

    def add(name: str, load, shape, qtype=None):
        qtype = _storage_type(name, tuple(shape), wanted) if qtype is None else qtype  # F32 is 0: test for None
        planned.append(_Planned(name, load, tuple(shape), qtype))

    for hf_name, ref in refs.items():
        split = split_name(hf_name)
        if split is None or split[0] != "vision":
            continue
        name = split[1]  # "visual.…"
        if name == "visual.patch_embed.proj.weight":
            # Conv3D kernel (out, in, t=2, kh, kw) -> two Conv2D kernels, one per frame of a temporal patch.
            shape2d = ref.shape[:2] + ref.shape[3:]
            base = names[T.V_ENC_EMBD_PATCH] + ".weight"
            add(base, lambda r=ref: r.load()[:, :, 0], shape2d, patch_type)
            add(base + ".1", lambda r=ref: r.load()[:, :, 1], shape2d, patch_type)
        elif name == "visual.patch_embed.proj.bias":
            add(names[T.V_ENC_EMBD_PATCH] + ".bias", ref.load, ref.shape, F32)
        elif name.startswith("visual.deepstack_merger_list."):
            # visual.deepstack_merger_list.<k>.<part>.<weight|bias>; GGUF indexes by the vision layer it taps.
            _, _, k, part, suffix = name.split(".")
            kind = {"norm": T.V_DS_NORM, "linear_fc1": T.V_DS_FC1, "linear_fc2": T.V_DS_FC2}.get(part)
            if kind is None or int(k) >= len(vp["deepstack"]):
                raise ModelError(f"{hf_dir}: unexpected deepstack tensor {hf_name}")
            add(names[kind].format(bid=vp["deepstack"][int(k)]) + "." + suffix, ref.load, ref.shape)
        elif name.startswith("visual.merger."):
            part, suffix = name.split(".")[2:4]
            if part == "norm":
                gname = names[T.V_POST_NORM] + "." + suffix
            elif part in ("linear_fc1", "linear_fc2"):
                gname = names[T.V_MMPROJ].format(bid=0 if part == "linear_fc1" else 2) + "." + suffix
            else:
                raise ModelError(f"{hf_dir}: unexpected merger tensor {hf_name}")
            add(gname, ref.load, ref.shape)
        else:
            gname = vmap.get_name(name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise ModelError(f"{hf_dir}: cannot map vision tensor {hf_name} to an mmproj GGUF tensor")
            force = gname == names[T.V_ENC_EMBD_POS] + ".weight"  # position embedding always F32
            add(gname, ref.load, ref.shape, F32 if force else None)
    if not planned:
        raise ModelError(f"{hf_dir}: no vision tower weights (model.visual.*)")
    return planned


def _add_vision_kvs(w, vp: dict[str, Any], ftype) -> None:
    g = _gguf()
    w.add_type(g.GGUFType.MMPROJ)
    w.add_file_type(ftype)
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(g.VisionProjectorType.QWEN3VL)
    w.add_vision_projection_dim(vp["text_hidden"])
    w.add_vision_image_size(vp["image_size"])
    w.add_vision_patch_size(vp["patch"])
    w.add_vision_embedding_length(vp["hidden"])
    w.add_vision_feed_forward_length(vp["n_ff"])
    w.add_vision_block_count(vp["depth"])
    w.add_vision_head_count(vp["n_head"])
    w.add_vision_image_mean(vp["mean"])
    w.add_vision_image_std(vp["std"])
    w.add_vision_use_gelu(True)
    w.add_vision_spatial_merge_size(vp["merge"])
    # transformers' Qwen3-VL vision blocks use LayerNorm(eps=1e-6); llama.cpp's converter writes the text
    # rms_norm_eps here, which is 1e-6 for every published Qwen3-VL.
    w.add_vision_attention_layernorm_eps(1e-6)
    w.add_vision_is_deepstack_layers([i in vp["deepstack"] for i in range(vp["depth"])])


# --- writing ---------------------------------------------------------------------------------------------------

def _write(path: Path, arch: str, add_kvs: Callable[[Any], None], planned: list[_Planned],
           progress: Progress | None) -> None:
    """Write one GGUF file: KVs and tensor index first, then each tensor streamed. Atomic (temp file + rename)."""
    g = _gguf()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    w = g.GGUFWriter(tmp, arch)
    try:
        add_kvs(w)
        w.add_quantization_version(g.GGML_QUANT_VERSION)
        for p in planned:
            if p.qtype in (g.GGMLQuantizationType.F32, g.GGMLQuantizationType.F16):
                dtype = np.float32 if p.qtype == g.GGMLQuantizationType.F32 else np.float16
                w.add_tensor_info(p.name, p.shape, np.dtype(dtype), _nbytes(p.shape, p.qtype))
            else:  # block-quantized: gguf takes the byte shape of the uint8 blocks and the element type
                byte_shape = g.quant_shape_to_byte_shape(p.shape, p.qtype)
                w.add_tensor_info(p.name, byte_shape, np.dtype(np.uint8), math.prod(byte_shape), raw_dtype=p.qtype)
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for i, p in enumerate(planned):
            data = p.load()
            if tuple(data.shape) != p.shape:
                raise ModelError(f"{path.name}: tensor {p.name} has shape {data.shape}, expected {p.shape}")
            w.write_tensor_data(_encode(data, p.qtype))
            if progress:
                progress(path.name, i + 1, len(planned))
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise


def export_hf(hf_dir: str | Path, out_dir: str | Path, outtype: str = "f16", *, mmproj_outtype: str | None = None,
              name: str | None = None, progress: Progress | None = None) -> tuple[Path, Path]:
    """Export a dense Qwen3-VL checkpoint folder to OUT_DIR/model.gguf + OUT_DIR/mmproj.gguf.

    outtype: "f32" | "f16" | "q8_0" for the text model; mmproj_outtype (default: the same) for the vision tower.
    name: general.name in both files (default: the folder's name). Returns (model_path, mmproj_path).
    Raises ConfigError (bad outtype, missing/invalid config) or ModelError (unsupported architecture, weights).
    """
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    ftype, wanted = _outtype(outtype)
    v_ftype, v_wanted = _outtype(mmproj_outtype or outtype)
    cfg = load_config(hf_dir)
    hp = _text_hparams(cfg, hf_dir / "config.json")
    vp = _vision_hparams(cfg, hf_dir)
    refs = read_safetensors_index(weight_files(hf_dir))
    text_planned = _plan_text(refs, hp, wanted, hf_dir)
    vision_planned = _plan_vision(refs, vp, v_wanted, hf_dir)
    digest = base_model_hash(hf_dir, progress)
    name = name or (hf_dir.resolve().name if hf_dir.resolve().name != "hf" else hf_dir.resolve().parent.name)
    from edge_agent import __version__

    def common(w) -> None:
        w.add_name(name)
        w.add_string(KEY_BASE_MODEL_HASH, digest)
        w.add_string(KEY_EXPORTER, f"edge-agent {__version__}")

    def text_kvs(w) -> None:
        w.add_type(_gguf().GGUFType.MODEL)
        common(w)
        _add_text_kvs(w, cfg, hp, ftype, hf_dir)

    def vision_kvs(w) -> None:
        common(w)
        _add_vision_kvs(w, vp, v_ftype)

    out_dir.mkdir(parents=True, exist_ok=True)
    model_path, mmproj_path = out_dir / MODEL_FILE, out_dir / MMPROJ_FILE
    _write(model_path, _gguf().MODEL_ARCH_NAMES[_gguf().MODEL_ARCH.QWEN3VL], text_kvs, text_planned, progress)
    _write(mmproj_path, "clip", vision_kvs, vision_planned, progress)
    return model_path, mmproj_path


@contextlib.contextmanager
def rich_progress(description: str = "exporting") -> Iterator[Progress]:
    """A Progress callback drawing one rich bar per stage (for the CLI: `with rich_progress() as p: export_hf(..., progress=p)`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

    bars: dict[str, Any] = {}
    with RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      transient=False) as rp:
        def update(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = rp.add_task(f"{description} {stage}", total=total)
            rp.update(bars[stage], completed=done, total=total)

        yield update
