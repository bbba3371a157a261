"""Opens the configured model: the catalog entry or folder named by `model.name`, loaded with llama.cpp."""

from __future__ import annotations

from edge_agent.config import Config
from edge_agent.vlm.base import Backend


def open_backend(cfg: Config, with_vision: bool = True) -> Backend:
    """Load the configured model with llama.cpp (the vision projector only when frames will be shown)."""
    from edge_agent.models import resolve
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    model = resolve(cfg.model.name, cfg.home)
    return LlamaCppBackend(model.model_path, model.mmproj_path if with_vision else None,
                           n_threads=cfg.model.n_threads, n_ctx=cfg.model.n_ctx, n_gpu_layers=cfg.model.n_gpu_layers,
                           image_cache_size=cfg.model.image_cache_size, seed=cfg.model.seed, name=model.name,
                           model_hash=model.expected_hash or None)
