"""Importance matrix for quantization, computed with transformers on calibration prompts (text, optionally images).

llama-cpp-python does not ship `llama-imatrix`, so the project computes the same statistic itself: for every
2-D text weight `blk.N.*` (input width n), the sum over calibration tokens of the squared input activation of
each column, plus the token count. llama.cpp's quantizer divides one by the other and weights each column's
rounding error by it, so columns that carry large activations are rounded more carefully. The file uses
llama-imatrix's GGUF layout (`<tensor>.in_sum2` [1 x n], `<tensor>.counts` [1], `imatrix.*` metadata), so
`quantize(..., imatrix=FILE)` and stock `llama-quantize --imatrix FILE` both read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_agent.errors import ConfigError, DataError
from edge_agent.export.gguf_export import Progress
from edge_agent.export.hf_checkpoint import load_config

# Our checkpoint module names -> GGUF names, for the Linear layers inside a text decoder layer.
_LINEARS = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def compute_imatrix(hf_dir: str | Path, out_path: str | Path, samples: Sequence[str | tuple[str, Any]], *,
                    dataset: str = "calibration", progress: Progress | None = None) -> Path:
    """Run `samples` through the checkpoint and write an imatrix GGUF to out_path; returns out_path.

    samples: plain texts, or (text, image) pairs where image is an RGB uint8 array or PIL image; an image is
    placed before its text as <|vision_start|><|image_pad|>...<|vision_end|>, as the writer prompts do.
    dataset: the name recorded in imatrix.datasets (and, after quantizing, in quantize.imatrix.dataset).
    """
    import gguf
    import torch
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = load_config(hf_dir)
    if not samples:
        raise DataError("compute_imatrix: no calibration samples")
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = Qwen3VLForConditionalGeneration.from_pretrained(hf_dir, dtype=torch.float32).eval()
    processor = None

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook_for(name: str):
        def hook(module, args):
            x = args[0].detach().to(torch.float32).reshape(-1, args[0].shape[-1])  # (tokens, n_in)
            sums[name] = sums.get(name, 0) + (x * x).sum(dim=0)
            counts[name] = counts.get(name, 0) + x.shape[0]
        return hook

    handles = []
    for i, layer in enumerate(model.model.language_model.layers):
        for sub, short in _LINEARS.items():
            handles.append(layer.get_submodule(sub).register_forward_pre_hook(hook_for(f"blk.{i}.{short}.weight")))
    try:
        for k, sample in enumerate(samples):
            text, image = (sample, None) if isinstance(sample, str) else sample
            ids = tok(text)["input_ids"]
            kwargs: dict[str, Any] = {}
            if image is not None:
                if processor is None:
                    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

                    processor = Qwen2VLImageProcessorPil.from_pretrained(hf_dir)
                pix = processor(images=[image], return_tensors="pt")
                merge = int(cfg["vision_config"].get("spatial_merge_size", 2))
                n = int(pix["image_grid_thw"].prod()) // (merge * merge)
                ids = [cfg["vision_start_token_id"]] + [cfg["image_token_id"]] * n + [cfg["vision_end_token_id"]] + ids
                kwargs = dict(pixel_values=pix["pixel_values"], image_grid_thw=pix["image_grid_thw"],
                              mm_token_type_ids=torch.tensor([[int(t == cfg["image_token_id"]) for t in ids]]))
            if not ids:
                raise DataError(f"compute_imatrix: sample {k} is empty")
            with torch.no_grad():
                model(input_ids=torch.tensor([ids]), **kwargs)
            if progress:
                progress("imatrix", k + 1, len(samples))
    finally:
        for h in handles:
            h.remove()

    out_path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(out_path, "imatrix")  # llama.cpp reads imatrix files by tensor names, not architecture
    w.add_type("imatrix")
    w.add_array("imatrix.datasets", [dataset])
    w.add_uint32("imatrix.chunk_count", len(samples))
    w.add_uint32("imatrix.chunk_size", max(1, max(counts.values()) // len(samples)))
    for name in sorted(sums):
        w.add_tensor(f"{name}.in_sum2", sums[name].numpy().astype(np.float32).reshape(1, -1))
        w.add_tensor(f"{name}.counts", np.array([[counts[name]]], dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path


def calibration_texts(path: str | Path) -> list[str]:
    """Calibration prompts from a text file: blocks separated by blank lines (one sample per block)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: calibration file not found")
    blocks = [b.strip() for b in p.read_text(encoding="utf-8").split("\n\n")]
    texts = [b for b in blocks if b]
    if not texts:
        raise DataError(f"{p}: no calibration samples (blocks separated by blank lines)")
    return texts
