"""Opens the configured model: the catalog entry or folder named by `model.name`, loaded with llama.cpp, and its
text-only copies where the folder ships them: the answerer (reader.gguf) and Phase Two's judge (judge.gguf)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

from edge_agent.config import Config
from edge_agent.vlm.base import Backend
from edge_agent.vlm.prompt import image_tokens

if TYPE_CHECKING:
    from edge_agent.models import ResolvedModel

MIN_AUTO_CTX = 2048
PROMPT_ROOM = 1024  # instructions, the question and its options, the answer or memory being generated
MEMORY_LABEL_TOKENS = 32  # each memory shown in a prompt carries its time and id


def context_size(cfg: Config) -> int:
    """`model.n_ctx`, or when it is 0 the smallest context (a multiple of 256, at least 2,048) that holds the
    writer's window and the answerer's prompt under these settings. The KV cache is allocated and touched for the
    whole context, so sizing it to the need is resident memory saved (issue 14: 8,192 -> 2,560 tokens is 16 MB on
    the embedded default; a Qwen3-VL-2B pays 112 KB a token)."""
    if cfg.model.n_ctx:
        return cfg.model.n_ctx
    side = cfg.capture.frame_size  # a square frame bounds any aspect ratio from above
    chunks = math.ceil(cfg.capture.keyframes_per_segment / 2)  # two keyframes share one temporal patch
    per_segment = chunks * (image_tokens(side, side) + 2)  # + vision start / end markers
    per_memory = cfg.writer.max_memory_tokens + MEMORY_LABEL_TOKENS
    writer = cfg.writer.window_segments * (per_segment + per_memory)
    answerer = cfg.qa.top_k * per_memory
    need = max(writer, answerer) + PROMPT_ROOM
    return max(MIN_AUTO_CTX, 256 * math.ceil(need / 256))


def open_backend(cfg: Config, with_vision: bool = True) -> Backend:
    """Load the configured model with llama.cpp (the vision projector only when frames will be shown)."""
    from edge_agent.models import resolve

    model = resolve(cfg.model.name, cfg.home)
    return _load(cfg, model, model.model_path, model.mmproj_path if with_vision else None)


def _open_text_only(cfg: Config, *roles: str, fallback: bool = False) -> Backend | None:
    """The first text-only file the configured model ships for `roles` ("judge" -> judge.gguf, "reader" ->
    reader.gguf), named "<model>-<role>"; else the model itself without vision when `fallback`, else None. Never
    steered: Phase Two steers the writer only."""
    from edge_agent.models import resolve

    model = resolve(cfg.model.name, cfg.home)
    for role in roles:
        path = getattr(model, f"{role}_path")
        if path is not None:
            return _load(cfg, model, path, None, name=f"{model.name}-{role}")
    return _load(cfg, model, model.model_path, None) if fallback else None


def open_reader(cfg: Config) -> Backend | None:
    """The configured model's own text-only answerer (`reader.gguf` beside it, models.READER_FILE), None when it
    ships none."""
    return _open_text_only(cfg, "reader")


def open_judge(cfg: Config) -> Backend | None:
    """What judges Phase Two's pairs in place of the writer: the model's `judge.gguf` (models.JUDGE_FILE), else its
    reader, else None (the writer judges)."""
    return _open_text_only(cfg, "judge", "reader")


def open_answerer(cfg: Config) -> Backend:
    """What answers questions from memories: the model's reader when it ships one, else the model without vision."""
    backend = _open_text_only(cfg, "reader", fallback=True)
    assert backend is not None
    return backend


def _load(cfg: Config, model: ResolvedModel, gguf: Path, mmproj: Path | None, name: str | None = None) -> Backend:
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    return LlamaCppBackend(gguf, mmproj,
                           n_threads=cfg.model.n_threads, n_ctx=context_size(cfg), n_gpu_layers=cfg.model.n_gpu_layers,
                           image_cache_size=cfg.model.image_cache_size, seed=cfg.model.seed, name=name or model.name,
                           model_hash=model.expected_hash or None)
