"""Configuration: one dataclass tree with the paper's defaults and help on every field, loaded from TOML and env.

Precedence, lowest first: defaults < the configured model's profile (catalog `profile` table or a local model's
manifest.json, see PROFILE_KEYS) < `<home>/config.toml` (or `--config FILE`) < environment variables
named `EDGE_AGENT_<SECTION>__<FIELD>` (nested sections join with `__`: `EDGE_AGENT_ADAPT__REWARD__RULE=judge`)
< explicit CLI flags. `edge-agent config show` prints every effective value with its source and help.

Every field is declared with `setting(default, help, check, why)`; `Section.__post_init__` runs the checks
and refuses non-finite numbers, so a bad value fails at load time with its name and value, never mid-run.
"""

from __future__ import annotations

import dataclasses
import math
import os
try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (JetPack 6's): the same parser, from PyPI
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from edge_agent.errors import ConfigError

ENV_HOME = "EDGE_AGENT_HOME"
ENV_PREFIX = "EDGE_AGENT_"
DEFAULT_HOME = Path("~/.edge-agent")


def setting(default: Any, help: str, check: Callable[[Any], bool] | None = None, why: str = "") -> Any:
    """A config field: its default, the help text shown by `config show`, and an optional check."""
    return field(default=default, metadata={"help": help, "check": check, "why": why})


def at_least(lo: float) -> Callable[[Any], bool]:
    return lambda v: v >= lo


def between(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: lo <= v <= hi


def one_of(*choices: str) -> Callable[[Any], bool]:
    return lambda v: v in choices


class Section:
    """Base of every config section: checks each field against its `setting` when built."""

    section = ""  # dotted name in TOML and messages, e.g. "adapt.reward"

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{self.section}.{f.name}={value!r}: must be a finite number")
            check = f.metadata.get("check")
            if check is not None and not check(value):
                raise ConfigError(f"{self.section}.{f.name}={value!r}: {f.metadata.get('why') or 'out of range'}")


@dataclass
class CaptureConfig(Section):
    """How the video stream is cut into segments and which frames reach the model."""

    section = "capture"
    segment_seconds: float = setting(10.0, "Segment (clip) length in seconds; paper: 10 s.",
                                     lambda v: 0 < v <= 3600, "must be in (0, 3600]")
    keyframes_per_segment: int = setting(4, "At most this many frames per segment go to the model.",
                                         between(1, 64), "must be in [1, 64]")
    sample_fps: float = setting(2.0, "Frames per second the segmenter examines (others are skipped unseen).",
                                lambda v: 0 < v <= 1000, "must be in (0, 1000]")
    frame_size: int = setting(128, "Longest side after downscaling, pixels (a multiple of 32: Qwen3-VL patches).",
                              lambda v: 32 <= v <= 2048 and v % 32 == 0, "must be a multiple of 32 in [32, 2048]")
    scene_change_threshold: float = setting(
        0.03, "Mean absolute difference (0..1) below which a frame counts as a duplicate of the last kept one.",
        lambda v: 0 <= v < 1, "must be in [0, 1)")
    queue_segments: int = setting(4, "Bounded keep-newest queue between the capture thread and the writer.",
                                  between(1, 1024), "must be in [1, 1024]")
    reconnect_attempts: int = setting(5, "A live source that stops delivering is retried this many times.",
                                      between(0, 1000), "must be in [0, 1000]")
    reconnect_backoff_seconds: float = setting(0.5, "First wait before reconnecting; doubles each attempt.",
                                               between(0, 600), "must be in [0, 600]")


@dataclass
class ModelConfig(Section):
    """Which model writes and answers, and how llama.cpp runs it."""

    section = "model"
    name: str = setting("default", "A catalog name (`edge-agent models list`) or a folder with model.gguf + "
                        "mmproj.gguf (and hf/ for Phase Two).", bool, "must not be empty")
    n_threads: int = setting(0, "llama.cpp threads; 0 = all usable cores but one (llama.cpp spin-waits).",
                             between(0, 512), "must be in [0, 512]")
    n_ctx: int = setting(0, "llama.cpp context size in tokens; 0 = sized from these settings: the writer's window "
                         "(frames + memories) or the answerer's top_k memories, whichever is larger, plus 1,024 for "
                         "instructions and the question (the KV cache is resident: a larger context costs RAM).",
                         lambda v: v == 0 or 512 <= v <= 262144, "must be 0 (auto) or in [512, 262144]")
    n_gpu_layers: int = setting(0, "Layers offloaded to the GPU; -1 = all (llama.cpp built with CUDA, e.g. Jetson).",
                                at_least(-1), "must be >= -1")
    image_cache_size: int = setting(64, "Encoded frames kept so each frame goes through the vision tower once.",
                                    between(0, 100000), "must be in [0, 100000]")
    seed: int = setting(0, "Seed of llama.cpp's sampler (candidates, retries).", at_least(0), "must be >= 0")


@dataclass
class WriterConfig(Section):
    """The memory-writing policy of the paper."""

    section = "writer"
    window_segments: int = setting(5, "Segments in the writer's window, the new one included; paper: k=5 (50 s).",
                                   between(1, 64), "must be in [1, 64]")
    max_memory_tokens: int = setting(150, "Memory token cap (paper: 150), counted with the model's tokenizer.",
                                     between(8, 1024), "must be in [8, 1024]")
    max_retries: int = setting(2, "Re-asks after a memory fails validation; then the segment is recorded unwritten.",
                               between(0, 10), "must be in [0, 10]")
    candidate_share: float = setting(0.1, "Share of segments that also get sampled alternative memories (Phase Two).",
                                     between(0, 1), "must be in [0, 1]")
    candidates_per_segment: int = setting(2, "Sampled alternatives per chosen segment.", between(1, 16),
                                          "must be in [1, 16]")
    keep_frames_hours: float = setting(24.0, "Keyframes are kept this long for Phase Two, then deleted; 0 = never kept.",
                                       between(0, 24 * 365), "must be in [0, 8760]")


@dataclass
class QAConfig(Section):
    """Retrieval and answering from memory."""

    section = "qa"
    top_k: int = setting(8, "Memories shown to the answerer.", between(1, 256), "must be in [1, 256]")
    moment_k: int = setting(0, 'A question that names a time ("what was I doing at 3 pm?") is shown only this many '
                            "memories, the nearest that time; 0: those nearest it fill half of top_k, the text ranks "
                            "the rest.", between(0, 256), "must be in [0, 256]")
    latest_k: int = setting(0, 'A question that asks where something was left ("where did I leave my keys?") or whom '
                            'the wearer met in a place ("who did I meet in the kitchen?") is shown only this many '
                            "memories, the latest that name it (a person and the place; as retrieved otherwise when "
                            "none does); 0: retrieved as any question.", between(0, 256), "must be in [0, 256]")
    colour_k: int = setting(0, 'A question that asks what colour a thing was ("what colour was the cup I put on the '
                            'shelf?") is shown only this many memories, the latest that name the thing (as retrieved '
                            "otherwise when none does); 0: retrieved as any question.", between(0, 256),
                            "must be in [0, 256]")
    order_by_time: bool = setting(False, 'A multiple-choice question asking which of its options the wearer did first or '
                                  'last ("which of these did I do first?") is answered by the times of the memories '
                                  "most like each option (MiniLM, else FTS5), not by the model; off: retrieved and "
                                  "answered as any question.")
    match_options: bool = setting(False, "Multiple choice about a moment (qa.moment_k) or a thing's colour "
                                  "(qa.colour_k) is answered by the option most like a sentence of the memories that "
                                  "route found (MiniLM: the moment's nearest memory, the thing's colour_k latest), not "
                                  "by the model; without MiniLM, or off, the model answers.")
    quoted_text: bool = setting(False, 'Multiple choice asking for the words something said ("what did the note at '
                                'the fridge say?") is answered by the one option a shown memory quotes (its words '
                                'whole and in order), "not in memory" when none does, and by the model when several '
                                "do; an open one keeps the model's answer only when a shown memory quotes it, else "
                                '"not in memory". Off: answered as any question.')
    where_answered: bool = setting(False, 'A question asking where something was left, shown the latest memories '
                                   "that name it (qa.latest_k), is answered, never \"not in memory\": those "
                                   'memories are the evidence. Multiple choice (choice "score") takes the likeliest '
                                   "option; an open question the model's answer or, where the model would abstain, "
                                   "the sentence of the latest of them naming the thing. Off: the model may abstain.")
    count_by_memories: bool = setting(False, 'A question asking how often the wearer did something ("how many '
                                      'times did I pick up the red cup?") is answered by counting the memories with '
                                      "a sentence telling that event: multiple choice by the option that is that "
                                      'number, when one is; an open question by the number ("3 times"), when one '
                                      "memory or more tells it. Otherwise, or off, the model answers over the "
                                      "memories retrieved.")
    doing_at_moment: bool = setting(False, 'An open question asking what the wearer was doing at a time ("what was I '
                                    'doing at 7:07 into the recording?") is answered with the memory of that moment '
                                    "(the one retrieval finds nearest the time named), not by the model. Off: the "
                                    "model answers over the memories around that time.")
    colour_by_memory: bool = setting(False, 'An open question asking what colour a thing was ("what colour was the '
                                     'cup I put on the shelf?"), shown the latest memories naming it (qa.colour_k), is '
                                     "answered with the word before the thing in the sentence of those memories most "
                                     'like the question ("I put the red cup on the shelf" -> "red"; MiniLM), not by '
                                     "the model; by the model without MiniLM or when no sentence gives a word there. "
                                     "Off: the model answers.")
    where_from_memory: bool = setting(False, 'A question asking where something was left ("where did I leave the '
                                      'keys?"), shown the latest memories naming it (qa.latest_k), is answered with '
                                      "the place the latest one's sentence naming it gives (\"I took the keys from "
                                      'the sofa to the desk in the office" -> "the desk in the office"), or for '
                                      "multiple choice with the one option that place names, not by the model. "
                                      "Otherwise, or off, the model answers (qa.where_answered).")
    next_by_memories: bool = setting(False, 'An open question asking what the wearer did right after something '
                                     '("what did I do right after I read the note?") is answered with the sentence '
                                     "that follows that event in the memories (found by MiniLM, as qa.order_by_time "
                                     "finds an option), not by the model; by the model without MiniLM, or when "
                                     "nothing follows. Off: the model answers.")
    who_named: bool = setting(False, 'Multiple choice asking whom the wearer met in a place ("who did I meet in the '
                              'kitchen?"), shown the latest memories naming a person there (qa.latest_k), is answered '
                              "by the one option the latest of them names (a <face_N> tag or a name, whole), not by "
                              "the model; by the model when it names several or none. Off: the model answers.")
    rrf_k: int = setting(60, "Reciprocal-rank-fusion constant for the FTS5 and embedding ranks.", between(1, 10000),
                         "must be in [1, 10000]")
    use_embeddings: bool = setting(True, "MiniLM sentence embeddings (onnxruntime) beside FTS5.")
    choice: str = setting("generate", 'How multiple choice is answered: "generate" (the model writes the letter) or '
                          '"score" (the model answers the open question; each option is ranked by its likelihood '
                          'as that answer, E when "not in memory" is likely enough, then the model cites). A '
                          'backend that cannot score (a remote answerer) generates.', one_of("generate", "score"),
                          "must be generate or score")
    abstain_probability: float = setting(0.5, 'choice "score": answer E when the model\'s probability of answering '
                                         'exactly "not in memory" is at least this.', between(0, 1),
                                         "must be in [0, 1]")


@dataclass
class RewardConfig(Section):
    """Phase Two's task-relevance reward: how the wearer's questions are weighted and pairs are decided."""

    section = "adapt.reward"
    rule: str = setting("auto", '"auto" (judge_and_embedding while the judge is position-consistent, else '
                        'embedding), "judge_and_embedding" (the local model judges in both orderings and MiniLM '
                        'relevance agrees), "judge", or "embedding" (no model calls).',
                        one_of("auto", "judge_and_embedding", "judge", "embedding"),
                        "must be auto, judge_and_embedding, judge or embedding")
    answer_match: bool = setting(True, "Any rule: a pair whose memories differ in telling the wearer's corrected "
                                 "answers (every word of an answer but words such as 'the' and 'on' in the "
                                 "memory) goes to the one telling more of them, by weight, before a judge or "
                                 "embeddings are asked.")
    judge_probe: int = setting(8, 'Rule "auto": judged comparisons (both verdicts valid) before the judge is '
                               'trusted or dropped.', at_least(1), "must be >= 1")
    min_judge_consistency: float = setting(0.5, 'Rule "auto": the share of probe comparisons whose two orderings '
                                           'must name the same memory for the judge to be kept.', between(0, 1),
                                           "must be in [0, 1]")
    max_questions: int = setting(64, "The most recent answered questions that form the task distribution.",
                                 at_least(1), "must be >= 1")
    judge_questions: int = setting(8, "The highest-weighted questions shown to the judge (the prompt stays short).",
                                   at_least(1), "must be >= 1")
    correct_weight: float = setting(1.0, "Weight of a question answered correctly, or with no feedback.",
                                    lambda v: v > 0, "must be > 0")
    wrong_weight: float = setting(3.0, "Weight of a question answered wrongly: the memory missed what mattered.",
                                  lambda v: v > 0, "must be > 0")
    corrected_bonus: float = setting(2.0, "Extra factor when the wearer gave the right answer (its text joins the "
                                     "question: it says what a memory should have held).", lambda v: v > 0,
                                     "must be > 0")
    min_relevance_gap: float = setting(0.0, "Embedding relevance of the chosen memory must exceed the rejected "
                                       "one's by more than this.", at_least(0), "must be >= 0")
    max_pairs_per_segment: int = setting(6, "At most this many candidate pairs of one window are compared (each "
                                         "costs 2 judge generations).", at_least(1), "must be >= 1")


@dataclass
class GateConfig(Section):
    """When a newly trained adapter may become active."""

    section = "adapt.gate"
    min_accuracy_gain: float = setting(0.0, "Held-out preference accuracy must exceed the baseline's by MORE than "
                                       "this (0 = any strict improvement).", lambda v: 0 <= v < 1,
                                       "must be in [0, 1)")
    max_compliance_drop: float = setting(0.0, "Format compliance may fall below the baseline's by at most this.",
                                         between(0, 1), "must be in [0, 1]")
    min_holdout_pairs: int = setting(8, "Fewer held-out pairs than this: no evidence, reject.", at_least(1),
                                     "must be >= 1")
    max_p_value: float = setting(0.05, "Significance: the one-sided binomial p-value of the held-out wins under "
                                 "the baseline's accuracy (at least a coin flip) must be at most this; 1 = off.",
                                 lambda v: 0 < v <= 1, "must be in (0, 1]")
    require_compliance: bool = setting(True, "Refuse when no format-compliance check can be run.")
    shrink_steps: int = setting(2, "When a vector that wins on held-out pairs fails only format compliance, try it "
                                "again at half its length, up to this many times (0 = never, the paper): a vector "
                                "pushed far enough to break the memories' format may help, in the same direction, "
                                "at a shorter length. Every try must pass the whole gate again.",
                                between(0, 8), "must be in [0, 8]")


@dataclass
class AdaptConfig(Section):
    """Phase Two on the device: DPO on the steering vector (the paper's defaults), its reward and its gate."""

    section = "adapt"
    layer: int = setting(22, "Text layer (0-indexed) whose OUTPUT receives the vector (llama.cpp `direction.<L>`).",
                         between(1, 1024), "must be >= 1 (llama.cpp control vectors have no layer-0 slot)")
    beta: float = setting(0.1, "DPO temperature: how far the policy may move from the reference.", lambda v: v > 0,
                          "must be > 0")
    learning_rate: float = setting(1e-3, "Optimizer step size on the vector.", lambda v: 0 < v <= 10,
                                   "must be in (0, 10]")
    steps: int = setting(10, "Optimizer steps; each sees `batch_pairs` training pairs.", between(1, 100000),
                         "must be in [1, 100000]")
    scale_after_training: float = setting(1.5, "The trained vector is multiplied by this before it is gated and "
                                          "deployed.", lambda v: 0 < v <= 100, "must be in (0, 100]")
    sft_weight: float = setting(0.0, "Weight of an SFT term, the mean token NLL of the chosen memories, added to the "
                                "DPO loss (TRL loss_types [\"sigmoid\", \"sft\"], as RPO): it keeps the steered "
                                "writer's chosen replies, which are in format, likely. 0 = the paper's pure DPO.",
                                between(0, 100), "must be in [0, 100]")
    optimizer: str = setting("adamw", '"adamw", "adam" or "sgd".', one_of("adamw", "adam", "sgd"),
                             'must be "adamw", "adam" or "sgd"')
    weight_decay: float = setting(0.0, "AdamW decoupled weight decay on the vector.", at_least(0), "must be >= 0")
    init: str = setting("zeros", '"zeros" (the reference itself, the paper\'s start) or "normal" (N(0, init_std^2)).',
                        one_of("zeros", "normal"), 'must be "zeros" or "normal"')
    init_std: float = setting(0.0, 'Standard deviation of the "normal" init.', at_least(0), "must be >= 0")
    batch_pairs: int = setting(0, "Pairs per optimizer step; 0 = all training pairs.", at_least(0),
                               "must be >= 0 (0 = all pairs)")
    max_grad_norm: float = setting(0.0, "Clip the vector's gradient to this L2 norm; 0 = no clipping.", at_least(0),
                                   "must be >= 0 (0 = no clipping)")
    dtype: str = setting("auto", 'Weights of the frozen model: "auto" (bfloat16 where it runs natively or where '
                         'only it fits the free memory, else float32), "float32" (exact parity with an f32 GGUF) or '
                         '"bfloat16" (half the memory; the vector and log-probs stay float32).',
                         one_of("auto", "float32", "bfloat16"), 'must be "auto", "float32" or "bfloat16"')
    holdout_share: float = setting(0.25, "Share of windows whose pairs are held out for the gate.",
                                   lambda v: 0 < v < 1, "must be in (0, 1)")
    min_pairs: int = setting(4, "Fewer kept pairs than this: no training.", at_least(2), "must be >= 2")
    seed: int = setting(0, "Seeds the split, the init and the mini-batch order.", at_least(0), "must be >= 0")
    reward: RewardConfig = field(default_factory=RewardConfig, metadata={"help": "The task-relevance reward."})
    gate: GateConfig = field(default_factory=GateConfig, metadata={"help": "The adapter gate."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.init == "normal" and self.init_std <= 0:
            raise ConfigError(f"adapt.init_std={self.init_std!r}: must be > 0 with init=\"normal\"")


@dataclass
class FacesConfig(Section):
    """The face registry (edge_agent/memory/faces.py): people numbered as met, their tags set in memories."""

    section = "faces"
    enabled: str = setting("auto", '"auto": on when the model folder ships a face network (faces.npz), "on" (an error '
                           'when there is none), or "off": memories keep the writer\'s own <face_N> tags.',
                           one_of("auto", "on", "off"), "must be auto, on or off")
    model: str = setting("", "A face network (.npz, tools/train_faces.py) other than the model folder's faces.npz.")
    present_probability: float = setting(0.5, "A keyframe shows a person when the network says so with at least "
                                         "this probability.", between(0, 1), "must be in [0, 1]")
    match_similarity: float = setting(0.7, "A person seen is one met before when their identity vectors lie at "
                                      "least this close (cosine); two people who differ in 2 of the 5 looks the "
                                      "default network tells lie at 0.6.", between(0, 1), "must be in [0, 1]")


@dataclass
class StorageConfig(Section):
    """What the data folder may hold (edge_agent/device/budget.py): checked between segments, oldest first."""

    section = "storage"
    max_bytes: int = setting(0, "Budget for the database and kept frames, bytes; over it the oldest memories (and "
                             "what was derived from them) are forgotten. 0 = no limit.", at_least(0), "must be >= 0")
    retention_days: float = setting(0.0, "Memories older than this many days are forgotten. 0 = kept forever.",
                                    between(0, 36500), "must be in [0, 36500]")
    check_every_segments: int = setting(6, "The budget is checked after every this many segments (and at start).",
                                        between(1, 100000), "must be in [1, 100000]")


@dataclass
class KeepUpConfig(Section):
    """How a live run degrades when the writer falls behind, before the capture queue drops a segment."""

    section = "keepup"
    enabled: bool = setting(True, "Degrade step by step (fewer keyframes, smaller frames, shorter window) when "
                            "behind; live sources only (a file never drops).")
    max_queue_age_seconds: float = setting(20.0, "Behind = stream seconds waiting in the capture queue at or over "
                                           "this; each segment behind goes one step down.", lambda v: v > 0,
                                           "must be > 0")
    recover_after_segments: int = setting(3, "Segments in a row with an empty queue before one step back up.",
                                          between(1, 1000), "must be in [1, 1000]")
    min_frame_size: int = setting(64, "Frames are never degraded below this longest side (pixels, multiple of 32).",
                                  lambda v: 32 <= v <= 2048 and v % 32 == 0, "must be a multiple of 32 in [32, 2048]")


@dataclass
class ServiceConfig(Section):
    """The systemd service (`edge-agent service install`): what it watches and when `adapt` may run."""

    section = "service"
    source: str = setting("0", "What the service runs on at boot: a camera index, a GStreamer pipeline for a CSI "
                          "camera, a file or a URL.", bool, "must not be empty")
    adapt_every_minutes: int = setting(60, "The adapt timer fires this often; `adapt` runs only if idle (and on AC).",
                                       between(5, 10080), "must be in [5, 10080]")
    idle_max_load: float = setting(0.5, "Idle = 1-minute load average per core below this.", lambda v: v > 0,
                                   "must be > 0")
    require_ac_power: bool = setting(True, "Run `adapt` only on mains power where /sys/class/power_supply says so.")
    restart_seconds: int = setting(5, "First wait before systemd restarts a failed run (grows up to 5 minutes "
                                   "where systemd supports RestartSteps).", between(1, 3600), "must be in [1, 3600]")


@dataclass
class Config:
    """The whole tree. `sources` says where each dotted setting's value came from (for `config show`)."""

    home: Path = field(default_factory=lambda: DEFAULT_HOME.expanduser())
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)
    qa: QAConfig = field(default_factory=QAConfig)
    faces: FacesConfig = field(default_factory=FacesConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    keepup: KeepUpConfig = field(default_factory=KeepUpConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

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


SECTIONS: dict[str, type[Section]] = {"capture": CaptureConfig, "model": ModelConfig, "writer": WriterConfig,
                                      "qa": QAConfig, "faces": FacesConfig, "adapt": AdaptConfig,
                                      "storage": StorageConfig, "keepup": KeepUpConfig, "service": ServiceConfig}


def _section_fields(cls: type[Section]) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _subsection(cls: type[Section], name: str) -> type[Section] | None:
    f = _section_fields(cls).get(name)
    if f is None or f.default_factory is dataclasses.MISSING:
        return None
    sub = f.default_factory
    return sub if isinstance(sub, type) and issubclass(sub, Section) else None


def _coerce(where: str, ftype: Any, raw: Any) -> Any:
    """Turn a TOML or environment value into the field's type, naming the setting when it does not fit."""
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
        if isinstance(raw, bool):  # TOML `top_k = true` is not the number 1
            raise ValueError(raw)
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            return float(raw)
        if not isinstance(raw, (str, int, float)):
            raise ValueError(raw)
        return str(raw)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{where}={raw!r}: expected {getattr(kind, '__name__', kind)}") from None


def _build(cls: type[Section], prefix: str, values: dict[str, Any]) -> Section:
    """A section from raw values (nested dicts for subsections), each coerced to its field's type."""
    fields = _section_fields(cls)
    kwargs: dict[str, Any] = {}
    for name, raw in values.items():
        where = f"{prefix}.{name}"
        if name not in fields:
            known = ", ".join(n for n in fields)
            raise ConfigError(f"{where}: unknown setting (known in [{prefix}]: {known})")
        sub = _subsection(cls, name)
        if sub is not None:
            if not isinstance(raw, dict):
                raise ConfigError(f"{where}={raw!r}: is a section ([{where}]), not a value")
            kwargs[name] = _build(sub, where, raw)
        else:
            if isinstance(raw, dict):
                raise ConfigError(f"{where}: is a value, not a section")
            kwargs[name] = _coerce(where, fields[name].type, raw)
    return cls(**kwargs)


def _put(values: dict[str, Any], path: list[str], raw: Any) -> None:
    for key in path[:-1]:
        values = values.setdefault(key, {})
        if not isinstance(values, dict):
            raise ConfigError(f"{'.'.join(path)}: {key} is a value, not a section")
    values[path[-1]] = raw


def _leaves(values: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in values.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


# A model profile's keys (models/catalog.toml `[models.NAME.profile]`, or `"profile"` in a local model folder's
# manifest.json) -> the settings they fill. Other profile keys are the model's needs (`ram_gb`, `disk_gb`), read
# by edge_agent/device/profiles.py, never settings.
PROFILE_KEYS = {"frame_size": "capture.frame_size", "keyframes_per_segment": "capture.keyframes_per_segment",
                "sample_fps": "capture.sample_fps", "n_ctx": "model.n_ctx", "n_threads": "model.n_threads",
                "n_gpu_layers": "model.n_gpu_layers", "image_cache_size": "model.image_cache_size",
                "window_segments": "writer.window_segments", "answer_choice": "qa.choice",
                "moment_memories": "qa.moment_k", "latest_memories": "qa.latest_k",
                "colour_memories": "qa.colour_k", "order_by_time": "qa.order_by_time",
                "match_options": "qa.match_options", "quoted_text": "qa.quoted_text",
                "where_answered": "qa.where_answered",
                "who_named": "qa.who_named", "count_by_memories": "qa.count_by_memories",
                "doing_at_moment": "qa.doing_at_moment", "colour_by_memory": "qa.colour_by_memory",
                "where_from_memory": "qa.where_from_memory", "next_by_memories": "qa.next_by_memories",
                # Phase Two's recipe where a model's own was measured (the embedded default: README, Phase Two)
                "candidate_share": "writer.candidate_share", "adapt_learning_rate": "adapt.learning_rate",
                "adapt_steps": "adapt.steps", "adapt_sft_weight": "adapt.sft_weight"}
PROFILE_NEEDS = ("ram_gb", "disk_gb")


def _apply_profile(values: dict[str, Any], sources: dict[str, str], home: Path) -> None:
    """Fill the settings no higher layer gave from the configured model's profile (lowest layer above defaults)."""
    from edge_agent.errors import ModelError
    from edge_agent.models import model_profile

    name = str(values["model"].get("name", ModelConfig.name) or "")
    try:
        found = model_profile(name, home) if name else None
    except ModelError:
        return  # an unreadable catalog or manifest: `edge-agent doctor` says so; settings stay defaults
    if found is None:
        return
    profile, label = found
    for key, raw in profile.items():
        if key in PROFILE_NEEDS:
            continue
        if key not in PROFILE_KEYS:
            raise ConfigError(f"{label}: unknown profile key {key!r} (known: "
                              f"{', '.join([*PROFILE_KEYS, *PROFILE_NEEDS])})")
        dotted = PROFILE_KEYS[key]
        if dotted in sources:
            continue  # config.toml, the environment or the command line said otherwise
        _put(values, dotted.split("."), raw)
        sources[dotted] = label


def load_config(home: Path | str | None = None, config_file: Path | str | None = None,
                environ: dict[str, str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Build the configuration for a data folder: defaults < model profile < TOML < environment < `overrides`.

    `overrides`: dotted settings from the command line (`--set capture.frame_size=256`), source "cli".
    """
    env = os.environ if environ is None else environ
    home_raw = home if home is not None else env.get(ENV_HOME)
    if home_raw is not None and str(home_raw).strip() == "":
        raise ConfigError(f"{ENV_HOME}='': empty; unset it to use {DEFAULT_HOME} or name a folder")
    home_path = Path(home_raw or DEFAULT_HOME).expanduser()
    values: dict[str, Any] = {s: {} for s in SECTIONS}
    sources: dict[str, str] = {}

    path = Path(config_file) if config_file else home_path / "config.toml"
    if config_file and not path.is_file():
        raise ConfigError(f"config file {str(path)!r}: not found")
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as e:
            raise ConfigError(f"config file {str(path)!r}: {e}") from None
        for section, table in data.items():
            if section not in SECTIONS or not isinstance(table, dict):
                raise ConfigError(f"config file {str(path)!r}: unknown section [{section}] "
                                  f"(known: {', '.join(SECTIONS)})")
            values[section].update(table)
        for key, _ in _leaves(data):
            sources[key] = str(path)

    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        parts = key[len(ENV_PREFIX):].lower().split("__")
        if parts[0] not in SECTIONS or not all(parts):
            raise ConfigError(f"{key}={raw!r}: unknown section {parts[0]!r} (known: {', '.join(SECTIONS)})")
        _put(values, parts, raw)
        sources[".".join(parts)] = f"env {key}"

    for key, raw in (overrides or {}).items():
        parts = str(key).strip().lower().split(".")
        if parts[0] not in SECTIONS or len(parts) < 2 or not all(parts):
            raise ConfigError(f"{key}={raw!r}: expected SECTION.NAME (sections: {', '.join(SECTIONS)})")
        _put(values, parts, raw)
        sources[".".join(parts)] = "cli"

    _apply_profile(values, sources, home_path)
    built = {section: _build(cls, section, values[section]) for section, cls in SECTIONS.items()}
    return Config(home=home_path, sources=sources, **built)


def describe(cfg: Config) -> list[dict[str, Any]]:
    """Every effective setting: {"name", "value", "source", "help"}, in tree order (for `config show`)."""
    rows: list[dict[str, Any]] = []

    def walk(obj: Section, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            name, value = f"{prefix}.{f.name}", getattr(obj, f.name)
            if isinstance(value, Section):
                walk(value, name)
            else:
                rows.append({"name": name, "value": value, "source": cfg.sources.get(name, "default"),
                             "help": f.metadata.get("help", "")})

    for section in SECTIONS:
        walk(getattr(cfg, section), section)
    return rows


def replace(cfg: Config, section: str, **changes: Any) -> Config:
    """A copy of `cfg` with fields of one section changed (checked again by __post_init__)."""
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **changes)})
