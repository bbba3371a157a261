"""Phase One configuration: one TOML file, one dataclass per section, every field with help text and a checked range.

    [model]    which checkpoint to train (a Hugging Face Qwen3-VL folder, or "tiny" for the generated test model)
    [data]     where the training windows come from (videos, synthetic clips) and how they are cut
    [gspo]     the TRL GRPOTrainer settings in GSPO mode (the paper's values by default)
    [rewards]  weights and constants of the paper's rewards
    [judge]    who grades descriptions: the synthetic world's event log, or an OpenAI-compatible endpoint
    [export]   checkpoint -> GGUF + mmproj -> quantized model folder for the device

Relative paths in the file are taken relative to the file's own folder, so a config can be run from anywhere.
A field that does not exist or a value out of range raises ConfigError naming `section.field` and the value.
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError


def _check(cond: bool, name: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r}: {why}")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelSection:
    """The policy that is trained."""

    base: str = _help('Hugging Face Qwen3-VL checkpoint folder to start from, or "tiny" for the seeded test model '
                      "that `edge-agent models make-tiny` builds (made into OUTPUT/base/).", "tiny")
    tiny_seed: int = _help("Seed of the tiny model when base = \"tiny\".", 0)
    dtype: str = _help('Weights dtype while training: "float32", "bfloat16" or "float16".', "float32")
    attn_implementation: str = _help('transformers attention kernel: "eager", "sdpa" or "flash_attention_2".', "sdpa")
    gradient_checkpointing: bool = _help("Recompute activations in the backward pass (saves memory on GPU).", False)

    def __post_init__(self) -> None:
        _check(bool(str(self.base).strip()), "model.base", self.base, "must name a checkpoint folder or \"tiny\"")
        _check(self.tiny_seed >= 0, "model.tiny_seed", self.tiny_seed, "must be >= 0")
        _check(self.dtype in ("float32", "bfloat16", "float16"), "model.dtype", self.dtype,
               "must be float32, bfloat16 or float16")
        _check(self.attn_implementation in ("eager", "sdpa", "flash_attention_2"), "model.attn_implementation",
               self.attn_implementation, "must be eager, sdpa or flash_attention_2")


@dataclass
class DataSection:
    """Training windows: the last k segments of a stream, as the writer sees them at run time."""

    videos: list[str] = _help("Video files or folders of videos (any format OpenCV reads); each is cut into "
                              "10 s segments by the runtime's capture path.", factory=list)
    synth_seeds: list[int] = _help("Synthetic-world clips to generate and use (one clip per seed); their event "
                                   "logs make the ground-truth judge possible.", factory=lambda: [0])
    synth_minutes: float = _help("Length of each synthetic clip, minutes.", 2.0)
    window_segments: int = _help("k: segments per window including the new one (paper: 5).", 5)
    segment_seconds: float = _help("Segment length, seconds (paper: 10).", 10.0)
    keyframes_per_segment: int = _help("At most this many keyframes of a segment reach the model.", 4)
    frame_size: int = _help("Longest frame side after downscaling, pixels (multiple of 32).", 128)
    prior_memories: str = _help('Memories shown for the earlier segments of a window: "captions" (the synthetic '
                                'event log\'s captions, a perfect reference writer), "model" (written by the '
                                'reference model in [data] reference_model with llama.cpp) or "none".', "captions")
    reference_model: str = _help('Model folder (model.gguf + mmproj.gguf) of the reference writer for '
                                 'prior_memories = "model".', "")
    max_windows: int = _help("Use at most this many windows (0: all), taken evenly over the clips.", 0)
    dataset_dir: str = _help("Where the windows dataset is saved (datasets.save_to_disk); empty: OUTPUT/windows. "
                             "An existing dataset built from the same settings is reused.", "")

    def __post_init__(self) -> None:
        _check(isinstance(self.videos, list), "data.videos", self.videos, "must be a list of paths")
        _check(isinstance(self.synth_seeds, list) and all(isinstance(s, int) and s >= 0 for s in self.synth_seeds),
               "data.synth_seeds", self.synth_seeds, "must be a list of non-negative integers")
        _check(bool(self.videos) or bool(self.synth_seeds), "data.synth_seeds", self.synth_seeds,
               "no data: give data.videos or data.synth_seeds")
        _check(0.25 <= self.synth_minutes <= 60, "data.synth_minutes", self.synth_minutes, "must be in [0.25, 60]")
        _check(1 <= self.window_segments <= 32, "data.window_segments", self.window_segments, "must be in [1, 32]")
        _check(self.segment_seconds > 0, "data.segment_seconds", self.segment_seconds, "must be > 0")
        _check(1 <= self.keyframes_per_segment <= 16, "data.keyframes_per_segment", self.keyframes_per_segment,
               "must be in [1, 16]")
        _check(self.frame_size >= 32 and self.frame_size % 32 == 0, "data.frame_size", self.frame_size,
               "must be a multiple of 32, at least 32")
        _check(self.prior_memories in ("captions", "model", "none"), "data.prior_memories", self.prior_memories,
               "must be captions, model or none")
        _check(self.prior_memories != "model" or bool(self.reference_model), "data.reference_model",
               self.reference_model, 'must name a model folder when prior_memories = "model"')
        _check(self.max_windows >= 0, "data.max_windows", self.max_windows, "must be >= 0")


@dataclass
class GSPOSection:
    """TRL GRPOTrainer in GSPO mode (importance_sampling_level = "sequence"); defaults are the paper's."""

    learning_rate: float = _help("AdamW learning rate (paper: 1e-6).", 1e-6)
    num_generations: int = _help("Rollouts per window (paper: 8); the rewards are compared within this group.", 8)
    epsilon: float = _help("Lower clipping range of the sequence-level importance ratio (paper: 3e-4).", 3e-4)
    epsilon_high: float = _help("Upper clipping range (paper: 4e-4).", 4e-4)
    beta: float = _help("KL coefficient against the reference model (paper: 0, no reference model).", 0.0)
    loss_type: str = _help('TRL loss aggregation: "grpo", "dr_grpo", "dapo" or "bnpo".', "grpo")
    max_steps: int = _help("Optimizer steps.", 100)
    per_device_train_batch_size: int = _help("Completions per device per micro-batch.", 8)
    gradient_accumulation_steps: int = _help("Micro-batches per optimizer step.", 1)
    max_completion_length: int = _help("Token budget of one rollout (the memory plus its JSON wrapper).", 166)
    temperature: float = _help("Rollout sampling temperature (paper's candidates: 0.6).", 0.6)
    top_p: float = _help("Rollout nucleus sampling.", 0.95)
    top_k: int = _help("Rollout top-k (0: off).", 20)
    seed: int = _help("Seed of the trainer (data order, sampling).", 0)
    logging_steps: int = _help("Log every this many steps.", 1)
    save_steps: int = _help("Save a checkpoint every this many steps.", 50)
    save_total_limit: int = _help("Keep at most this many checkpoints (0: all).", 3)
    resume: str = _help('"auto": continue from the newest checkpoint in OUTPUT/checkpoints if any; "never"; or a '
                        "checkpoint folder.", "auto")
    use_vllm: bool = _help("Generate rollouts with vLLM (TRL's use_vllm); needs a GPU and vllm installed.", False)
    vllm_mode: str = _help('TRL vllm_mode: "colocate" (same GPUs) or "server" (trl vllm-serve elsewhere).',
                           "colocate")
    use_cpu: bool = _help("Train on the CPU even where a GPU exists (tests, this machine).", False)
    bf16: bool = _help("Mixed precision bf16 (GPU).", False)
    report_to: list[str] = _help('Where TRL logs go besides the summary ("tensorboard", "wandb", ...).',
                                 factory=list)

    def __post_init__(self) -> None:
        _check(0 < self.learning_rate <= 1.0, "gspo.learning_rate", self.learning_rate, "must be in (0, 1]")
        _check(2 <= self.num_generations <= 256, "gspo.num_generations", self.num_generations,
               "must be in [2, 256] (a group needs at least two rollouts)")
        _check(0 < self.epsilon < 1, "gspo.epsilon", self.epsilon, "must be in (0, 1)")
        _check(0 < self.epsilon_high < 1, "gspo.epsilon_high", self.epsilon_high, "must be in (0, 1)")
        _check(self.beta >= 0, "gspo.beta", self.beta, "must be >= 0")
        _check(self.loss_type in ("grpo", "dr_grpo", "dapo", "bnpo"), "gspo.loss_type", self.loss_type,
               "must be grpo, dr_grpo, dapo or bnpo")
        _check(self.max_steps >= 1, "gspo.max_steps", self.max_steps, "must be >= 1")
        _check(self.per_device_train_batch_size >= 1, "gspo.per_device_train_batch_size",
               self.per_device_train_batch_size, "must be >= 1")
        _check(self.gradient_accumulation_steps >= 1, "gspo.gradient_accumulation_steps",
               self.gradient_accumulation_steps, "must be >= 1")
        _check(4 <= self.max_completion_length <= 4096, "gspo.max_completion_length", self.max_completion_length,
               "must be in [4, 4096]")
        _check(0 < self.temperature <= 2, "gspo.temperature", self.temperature, "must be in (0, 2]")
        _check(0 < self.top_p <= 1, "gspo.top_p", self.top_p, "must be in (0, 1]")
        _check(self.top_k >= 0, "gspo.top_k", self.top_k, "must be >= 0")
        _check(self.seed >= 0, "gspo.seed", self.seed, "must be >= 0")
        _check(self.logging_steps >= 1, "gspo.logging_steps", self.logging_steps, "must be >= 1")
        _check(self.save_steps >= 1, "gspo.save_steps", self.save_steps, "must be >= 1")
        _check(self.save_total_limit >= 0, "gspo.save_total_limit", self.save_total_limit, "must be >= 0")
        _check(bool(self.resume), "gspo.resume", self.resume, 'must be "auto", "never" or a checkpoint folder')
        _check(self.vllm_mode in ("colocate", "server"), "gspo.vllm_mode", self.vllm_mode,
               "must be colocate or server")
        _check(not (self.use_vllm and self.use_cpu), "gspo.use_vllm", self.use_vllm, "vLLM needs a GPU (use_cpu is on)")
        _check(isinstance(self.report_to, list), "gspo.report_to", self.report_to, "must be a list")


@dataclass
class RewardsSection:
    """The paper's Phase One rewards and the weights that combine them (TRL reward_weights)."""

    format_weight: float = _help("Weight of the format reward.", 1.0)
    correctness_weight: float = _help("Weight of the correctness reward.", 1.0)
    rules_weight: float = _help("Weight of the redundancy / format-rules reward.", 1.0)
    length_weight: float = _help("Weight of the soft length penalty.", 1.0)
    richness_weight: float = _help("Weight of the richness reward (its x0.1 scale is richness_scale).", 1.0)
    parse_failure: float = _help('Format reward of a reply that is not JSON {"description": ...} (paper: -1.5).', -1.5)
    format_violation: float = _help("Format reward of valid JSON breaking a content rule (<face_N>, sentences, "
                                    "token cap).", -0.5)
    correct: float = _help("Correctness reward of a description the judge finds correct (paper: +0.5).", 0.5)
    wrong: float = _help("Correctness reward of a description the judge finds wrong (paper: -0.5).", -0.5)
    rule_penalty: float = _help("Reward per broken rule (repeats a prior memory; describes subtitles or boxes).",
                                -0.5)
    length_limit: int = _help("L: no length penalty up to L tokens, then linear to -1 at 2L.", 75)
    richness_scale: float = _help("Richness after min-max normalisation is multiplied by this (paper: 0.1).", 0.1)
    max_memory_tokens: int = _help("Memory token cap checked by the format reward (runtime: writer.max_memory_tokens).",
                                   150)

    def __post_init__(self) -> None:
        for name in ("format_weight", "correctness_weight", "rules_weight", "length_weight", "richness_weight"):
            v = getattr(self, name)
            _check(0 <= v <= 100, f"rewards.{name}", v, "must be in [0, 100]")
        _check(-10 <= self.parse_failure <= 0, "rewards.parse_failure", self.parse_failure, "must be in [-10, 0]")
        _check(-10 <= self.format_violation <= 0, "rewards.format_violation", self.format_violation,
               "must be in [-10, 0]")
        _check(0 <= self.correct <= 10, "rewards.correct", self.correct, "must be in [0, 10]")
        _check(-10 <= self.wrong <= 0, "rewards.wrong", self.wrong, "must be in [-10, 0]")
        _check(-10 <= self.rule_penalty <= 0, "rewards.rule_penalty", self.rule_penalty, "must be in [-10, 0]")
        _check(1 <= self.length_limit <= 4096, "rewards.length_limit", self.length_limit, "must be in [1, 4096]")
        _check(0 <= self.richness_scale <= 10, "rewards.richness_scale", self.richness_scale, "must be in [0, 10]")
        _check(8 <= self.max_memory_tokens <= 1024, "rewards.max_memory_tokens", self.max_memory_tokens,
               "must be in [8, 1024]")


@dataclass
class JudgeSection:
    """Who grades the descriptions (correctness, rules, richness ranking)."""

    kind: str = _help('"ground_truth" (the synthetic world\'s event log; no network) or "openai" (any '
                      "OpenAI-compatible chat endpoint: GPT-4o, Gemini, a llama.cpp or vLLM server).", "ground_truth")
    base_url: str = _help("Endpoint base URL for kind = openai, e.g. https://api.openai.com/v1.", "")
    model: str = _help("Model name sent to the endpoint.", "gpt-4o")
    api_key_env: str = _help("Environment variable holding the API key (empty: no key, e.g. a local server).",
                             "OPENAI_API_KEY")
    cache_dir: str = _help("On-disk cache of judge replies; empty: OUTPUT/judge_cache.", "")
    max_retries: int = _help("Retries of a failed request (backoff doubles from 1 s).", 4)
    requests_per_minute: float = _help("Rate limit (0: none).", 60.0)
    timeout_seconds: float = _help("Per-request timeout.", 60.0)

    def __post_init__(self) -> None:
        _check(self.kind in ("ground_truth", "openai"), "judge.kind", self.kind, "must be ground_truth or openai")
        _check(self.kind != "openai" or self.base_url.startswith(("http://", "https://")), "judge.base_url",
               self.base_url, "must be an http(s) URL when judge.kind = openai")
        _check(0 <= self.max_retries <= 20, "judge.max_retries", self.max_retries, "must be in [0, 20]")
        _check(self.requests_per_minute >= 0, "judge.requests_per_minute", self.requests_per_minute, "must be >= 0")
        _check(self.timeout_seconds > 0, "judge.timeout_seconds", self.timeout_seconds, "must be > 0")


@dataclass
class ExportSection:
    """What the trained checkpoint becomes: a model folder usable as `[model] name = <folder>`."""

    enabled: bool = _help("Export after training.", True)
    outtype: str = _help('GGUF type before quantizing: "f32", "f16" or "q8_0" (the mmproj keeps it).', "f16")
    quant_type: str = _help('llama.cpp quantization of the text model: "Q4_K_M", "Q5_K_M", "Q8_0" or "none".',
                            "Q4_K_M")
    imatrix: bool = _help("Compute an importance matrix from the calibration set for quantizing.", True)
    calibration: str = _help("Calibration prompts (blocks separated by blank lines); frames come from the "
                             "synthetic world. Empty: the repository's calibration/writer_prompts.txt.", "")
    calibration_frames: int = _help("Synthetic frames paired with calibration prompts (0: text only).", 8)

    def __post_init__(self) -> None:
        _check(self.outtype in ("f32", "f16", "q8_0"), "export.outtype", self.outtype, "must be f32, f16 or q8_0")
        _check(self.quant_type in ("Q4_K_M", "Q5_K_M", "Q8_0", "none"), "export.quant_type", self.quant_type,
               "must be Q4_K_M, Q5_K_M, Q8_0 or none")
        _check(0 <= self.calibration_frames <= 1024, "export.calibration_frames", self.calibration_frames,
               "must be in [0, 1024]")


@dataclass
class PhaseOneConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    gspo: GSPOSection = field(default_factory=GSPOSection)
    rewards: RewardsSection = field(default_factory=RewardsSection)
    judge: JudgeSection = field(default_factory=JudgeSection)
    export: ExportSection = field(default_factory=ExportSection)
    source: Path | None = None  # the TOML file it came from (relative paths are resolved against its folder)

    def path(self, value: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(value).expanduser()
        if not p.is_absolute() and self.source is not None:
            p = self.source.parent / p
        return p

    def as_dict(self) -> dict[str, Any]:
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "gspo": GSPOSection,
                             "rewards": RewardsSection, "judge": JudgeSection, "export": ExportSection}


def _coerce(name: str, ftype: Any, raw: Any) -> Any:
    """TOML value -> field type; ints are accepted for floats, nothing else is converted silently."""
    origin = typing.get_origin(ftype)
    if origin is list:
        (item,) = typing.get_args(ftype)
        if not isinstance(raw, list):
            raise ConfigError(f"{name}={raw!r}: expected a list")
        return [_coerce(f"{name}[{i}]", item, v) for i, v in enumerate(raw)]
    if ftype is bool:
        if not isinstance(raw, bool):
            raise ConfigError(f"{name}={raw!r}: expected true or false")
        return raw
    if ftype is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ConfigError(f"{name}={raw!r}: expected an integer")
        return raw
    if ftype is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ConfigError(f"{name}={raw!r}: expected a number")
        return float(raw)
    if ftype is str:
        if not isinstance(raw, str):
            raise ConfigError(f"{name}={raw!r}: expected a string")
        return raw
    return raw


def from_dict(data: dict[str, Any], source: Path | None = None) -> PhaseOneConfig:
    """Build and check a config from a parsed TOML table (unknown sections and fields are errors)."""
    built = {}
    where = f" in {source}" if source else ""
    for section, table in data.items():
        if section not in SECTIONS:
            raise ConfigError(f"[{section}]{where}: unknown section (known: {', '.join(SECTIONS)})")
        if not isinstance(table, dict):
            raise ConfigError(f"{section}={table!r}{where}: expected a table [{section}]")
    for section, cls in SECTIONS.items():
        table = data.get(section, {})
        hints = typing.get_type_hints(cls)
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {}
        for name, raw in table.items():
            if name not in fields:
                raise ConfigError(f"{section}.{name}={raw!r}{where}: unknown field (known: {', '.join(sorted(fields))})")
            kwargs[name] = _coerce(f"{section}.{name}", hints[name], raw)
        built[section] = cls(**kwargs)
    return PhaseOneConfig(**built, source=source)


def load(path: str | Path) -> PhaseOneConfig:
    """Read and check a Phase One TOML file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r}: not found")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r}: {e}") from None
    return from_dict(data, source=p.resolve())


def help_text() -> str:
    """Every field with its default and help, section by section (for docs and `--help`)."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {default!r}: {f.metadata['help']}")
    return "\n".join(lines)
