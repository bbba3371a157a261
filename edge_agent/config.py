"""Configuration: dataclasses with the paper's defaults, overridable from home/config.toml and EDGE_AGENT_* variables.

Precedence, lowest first: defaults < `<home>/config.toml` (or `--config FILE`) < environment variables
named `EDGE_AGENT_<SECTION>__<FIELD>` (e.g. `EDGE_AGENT_WRITER__WINDOW_SEGMENTS=3`) < explicit CLI flags.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError

ENV_HOME = "EDGE_AGENT_HOME"
DEFAULT_HOME = Path("~/.edge-agent")


def _check(cond: bool, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r}: {why}")


@dataclass
class CaptureConfig:
    """How the video stream is cut into segments and which frames reach the model."""

    segment_seconds: float = 10.0  # paper: 10 s clips
    keyframes_per_segment: int = 4  # at most this many frames per segment go to the model
    sample_fps: float = 2.0  # frames per second the segmenter examines (others are skipped unseen)
    frame_size: int = 128  # longest side after downscaling, pixels (multiple of 32 for Qwen3-VL patches)
    scene_change_threshold: float = 0.03  # mean absolute difference (0..1) below which a frame is a duplicate
    queue_segments: int = 4  # bounded keep-newest queue between capture thread and writer
    reconnect_attempts: int = 5  # a live source that stops delivering is retried this many times
    reconnect_backoff_seconds: float = 0.5  # first wait; doubles each attempt

    def __post_init__(self) -> None:
        _check(self.segment_seconds > 0, "capture.segment_seconds", self.segment_seconds, "must be > 0")
        _check(self.keyframes_per_segment >= 1, "capture.keyframes_per_segment", self.keyframes_per_segment, "must be >= 1")
        _check(self.sample_fps > 0, "capture.sample_fps", self.sample_fps, "must be > 0")
        _check(self.frame_size >= 32 and self.frame_size % 32 == 0, "capture.frame_size", self.frame_size,
               "must be a multiple of 32, at least 32")
        _check(0 <= self.scene_change_threshold < 1, "capture.scene_change_threshold", self.scene_change_threshold,
               "must be in [0, 1)")
        _check(self.queue_segments >= 1, "capture.queue_segments", self.queue_segments, "must be >= 1")
        _check(self.reconnect_attempts >= 0, "capture.reconnect_attempts", self.reconnect_attempts, "must be >= 0")
        _check(self.reconnect_backoff_seconds >= 0, "capture.reconnect_backoff_seconds",
               self.reconnect_backoff_seconds, "must be >= 0")


@dataclass
class ModelConfig:
    """Which model writes and answers, and how llama.cpp runs it."""

    name: str = "default"  # a catalog name (see `edge-agent models list`) or a folder with model.gguf + mmproj.gguf
    n_threads: int = 0  # 0 = all cores
    n_ctx: int = 8192
    n_gpu_layers: int = 0  # -1 = offload everything (llama.cpp built with CUDA, e.g. on Jetson)
    image_cache_size: int = 64  # encoded frames kept so each frame goes through the vision tower once
    seed: int = 0

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "must not be empty")
        _check(self.n_threads >= 0, "model.n_threads", self.n_threads, "must be >= 0")
        _check(self.n_ctx >= 512, "model.n_ctx", self.n_ctx, "must be >= 512")
        _check(self.n_gpu_layers >= -1, "model.n_gpu_layers", self.n_gpu_layers, "must be >= -1")
        _check(self.image_cache_size >= 0, "model.image_cache_size", self.image_cache_size, "must be >= 0")


@dataclass
class WriterConfig:
    """The memory-writing policy of the paper."""

    window_segments: int = 5  # paper: the last k=5 segments (50 s) plus the memories written for them
    max_memory_tokens: int = 150  # paper: memory token cap
    max_retries: int = 2  # re-asks after a memory fails validation, then the segment is recorded unwritten
    candidate_share: float = 0.1  # share of segments that also get sampled alternative memories (Phase Two)
    candidates_per_segment: int = 2
    keep_frames_hours: float = 24.0  # keyframes kept for Phase Two training, then deleted

    def __post_init__(self) -> None:
        _check(self.window_segments >= 1, "writer.window_segments", self.window_segments, "must be >= 1")
        _check(8 <= self.max_memory_tokens <= 1024, "writer.max_memory_tokens", self.max_memory_tokens,
               "must be in [8, 1024]")
        _check(self.max_retries >= 0, "writer.max_retries", self.max_retries, "must be >= 0")
        _check(0.0 <= self.candidate_share <= 1.0, "writer.candidate_share", self.candidate_share, "must be in [0, 1]")
        _check(self.candidates_per_segment >= 1, "writer.candidates_per_segment", self.candidates_per_segment,
               "must be >= 1")
        _check(self.keep_frames_hours >= 0, "writer.keep_frames_hours", self.keep_frames_hours, "must be >= 0")


@dataclass
class QAConfig:
    """Retrieval and answering from memory."""

    top_k: int = 8  # memories shown to the answerer
    rrf_k: int = 60  # reciprocal-rank-fusion constant for FTS5 + embedding ranks
    use_embeddings: bool = True  # MiniLM through onnxruntime beside FTS5

    def __post_init__(self) -> None:
        _check(self.top_k >= 1, "qa.top_k", self.top_k, "must be >= 1")
        _check(self.rrf_k >= 1, "qa.rrf_k", self.rrf_k, "must be >= 1")


@dataclass
class AdaptConfig:
    """Phase Two: DPO on the steering vector (paper defaults)."""

    layer: int = 22
    beta: float = 0.1
    learning_rate: float = 1e-3
    steps: int = 10
    scale_after_training: float = 1.5
    holdout_share: float = 0.25
    min_pairs: int = 4
    seed: int = 0
    # How candidate pairs are judged: "judge_and_embedding" (the local model in both orderings, agreeing with
    # MiniLM relevance to the wearer's questions), "judge", or "embedding" (no model calls).
    reward_rule: str = "judge_and_embedding"

    def __post_init__(self) -> None:
        _check(self.layer >= 0, "adapt.layer", self.layer, "must be >= 0")
        _check(self.beta > 0, "adapt.beta", self.beta, "must be > 0")
        _check(self.learning_rate > 0, "adapt.learning_rate", self.learning_rate, "must be > 0")
        _check(self.steps >= 1, "adapt.steps", self.steps, "must be >= 1")
        _check(self.scale_after_training > 0, "adapt.scale_after_training", self.scale_after_training, "must be > 0")
        _check(0 < self.holdout_share < 1, "adapt.holdout_share", self.holdout_share, "must be in (0, 1)")
        _check(self.min_pairs >= 2, "adapt.min_pairs", self.min_pairs, "must be >= 2")
        _check(self.reward_rule in ("judge_and_embedding", "judge", "embedding"), "adapt.reward_rule",
               self.reward_rule, "must be judge_and_embedding, judge or embedding")


@dataclass
class Config:
    home: Path = field(default_factory=lambda: DEFAULT_HOME.expanduser())
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    @property
    def db_path(self) -> Path:
        return self.home / "memory.db"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def adapters_dir(self) -> Path:
        return self.home / "adapters"

    @property
    def frames_dir(self) -> Path:
        return self.home / "frames"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


SECTIONS = {"capture": CaptureConfig, "model": ModelConfig, "writer": WriterConfig, "qa": QAConfig,
            "adapt": AdaptConfig}


def _coerce(section: str, name: str, ftype: Any, raw: Any) -> Any:
    """Turn a TOML or environment value into the field's type, naming the field when it does not fit."""
    kind = ftype if isinstance(ftype, type) else {"int": int, "float": float, "bool": bool, "str": str}.get(str(ftype))
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            s = str(raw).strip().lower()
            if s in ("1", "true", "yes", "on"):
                return True
            if s in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            return float(raw)
        return str(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{section}.{name}={raw!r}: expected {getattr(kind, '__name__', kind)}") from None


def load_config(home: Path | str | None = None, config_file: Path | str | None = None,
                environ: dict[str, str] | None = None) -> Config:
    """Build the configuration for a data folder: defaults, then TOML, then environment."""
    env = os.environ if environ is None else environ
    home_path = Path(home or env.get(ENV_HOME) or DEFAULT_HOME).expanduser()
    values: dict[str, dict[str, Any]] = {s: {} for s in SECTIONS}

    path = Path(config_file) if config_file else home_path / "config.toml"
    if config_file and not path.is_file():
        raise ConfigError(f"config file {str(path)!r}: not found")
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {str(path)!r}: {e}") from None
        for section, table in data.items():
            if section not in SECTIONS or not isinstance(table, dict):
                raise ConfigError(f"config file {str(path)!r}: unknown section [{section}]")
            values[section].update(table)

    prefix = "EDGE_AGENT_"
    for key, raw in env.items():
        if not key.startswith(prefix) or "__" not in key:
            continue
        section, _, name = key[len(prefix):].lower().partition("__")
        if section not in SECTIONS:
            raise ConfigError(f"{key}={raw!r}: unknown section {section!r}")
        values[section][name] = raw

    built = {}
    for section, cls in SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, raw in values[section].items():
            if name not in fields:
                raise ConfigError(f"{section}.{name}: unknown setting (known: {', '.join(fields)})")
            kwargs[name] = _coerce(section, name, fields[name].type, raw)
        built[section] = cls(**kwargs)
    return Config(home=home_path, **built)


def replace(cfg: Config, section: str, **changes: Any) -> Config:
    """A copy of `cfg` with fields of one section changed (checked again by __post_init__)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
