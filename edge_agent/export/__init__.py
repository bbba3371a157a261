"""Hugging Face Qwen3-VL -> GGUF (text model + mmproj), quantization, and the tiny test model. Never imported by the runtime.

    export_hf(hf_dir, out_dir, outtype="f16") -> (model.gguf, mmproj.gguf)
    quantize(in_gguf, out_gguf, type="Q4_K_M", imatrix=None) -> out_gguf
    compute_imatrix(hf_dir, out_path, samples) -> out_path  (importance matrix for quantize, via transformers)
    make_tiny(out_dir, seed=0) -> (out_dir/hf, out_dir/model.gguf, out_dir/mmproj.gguf)
    base_model_hash(hf_dir) -> sha256 hex of the checkpoint's weight files
"""

from edge_agent.export.gguf_export import OUTTYPES, export_hf, rich_progress
from edge_agent.export.hf_checkpoint import base_model_hash
from edge_agent.export.imatrix import calibration_texts, compute_imatrix
from edge_agent.export.quantize import QUANT_TYPES, load_imatrix, quantize
from edge_agent.export.tiny import make_tiny

__all__ = ["OUTTYPES", "QUANT_TYPES", "base_model_hash", "calibration_texts", "compute_imatrix", "export_hf",
           "load_imatrix", "make_tiny", "quantize", "rich_progress"]
