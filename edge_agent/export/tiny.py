"""The tiny test model: a seeded, randomly initialised Qwen3-VL small enough to build in seconds.

`make_tiny(out_dir, seed)` writes OUT/hf/ (transformers checkpoint, tokenizer, chat template, image processor
config) and exports it with the project's exporter to OUT/model.gguf + OUT/mmproj.gguf. Tests, the CLI's
`models make-tiny` and the demo use it where no real model can be downloaded.

Shape (about 1M parameters): text hidden 64 x 24 layers (so layer 22, the adapter layer, exists), 4 heads / 2 KV
heads of 16, M-RoPE sections [2, 3, 3]; vision tower depth 3, hidden 32, patch 16, 2x2 merge, deepstack taps
at vision layers 0 and 1. The tokenizer is byte-level BPE with Qwen2's pre-tokenizer, trained on the synthetic
world's vocabulary (so prompts and memories are short in tokens), plus Qwen's special tokens at the end of the
vocabulary as in the real models. Same seed, same bytes.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import ConfigError
from edge_agent.export.gguf_export import Progress, export_hf
from edge_agent.export.hf_checkpoint import QWEN2_PRETOKENIZER_REGEX

TINY_VERSION = 1  # bump when the tiny model's recipe changes (test caches key on it)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
BPE_VOCAB = 1024  # learned tokens incl. the 256 byte symbols; special tokens come after
VOCAB_MULTIPLE = 128  # the embedding is padded to a multiple of this, like Qwen's 151936 rows for 151669 tokens

# Image preprocessing shared by transformers (preprocessor_config.json) and llama.cpp (mmproj). llama.cpp's
# Qwen-VL path always keeps an image between 8 and 4096 merged tokens; the same bounds here keep both sides
# resizing identically. Frames whose sides are multiples of 32 px are not resized at all.
PATCH, MERGE = 16, 2
MIN_PIXELS, MAX_PIXELS = 8 * (PATCH * MERGE) ** 2, 4096 * (PATCH * MERGE) ** 2

# A Qwen-style chat template that understands both plain-string content and content lists with images/videos
# (as transformers' processors pass them), rendering each image as <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' or 'image' in part -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif part['type'] == 'video' or 'video' in part -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in part -%}{{- part['text'] -}}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)

# --- the synthetic world's words ------------------------------------------------------------------------------

COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "brown", "grey", "pink"]
OBJECTS = ["cup", "mug", "keys", "book", "phone", "bowl", "bottle", "plate", "glass", "spoon", "laptop", "bag",
           "wallet", "remote", "pen", "box", "towel", "apple", "note", "kettle"]
PLACES = ["table", "shelf", "sink", "door", "desk", "bed", "counter", "fridge", "bookshelf", "whiteboard",
          "cabinet", "sofa", "tv", "coffee table", "nightstand", "dresser", "drawer", "chair", "floor", "window"]
ROOMS = ["kitchen", "office", "living room", "bedroom", "hallway", "bathroom"]
VERBS = [("pick up", "picked up"), ("put down", "put down"), ("open", "opened"), ("close", "closed"),
         ("put", "put"), ("take", "took"), ("hold", "held"), ("carry", "carried"), ("move", "moved"),
         ("wash", "washed"), ("read", "read"), ("look at", "looked at"), ("walk into", "walked into"),
         ("meet", "met"), ("talk to", "talked to"), ("turn on", "turned on"), ("turn off", "turned off")]
ACTIVITIES = ["washing dishes", "cooking", "typing on the laptop", "watching tv", "folding clothes"]
WORDS = ["MILK", "EGGS", "BREAD", "RICE", "APPLES", "COFFEE", "TEA", "BUTTER", "LEMONS", "ANNA", "BEN", "MIA",
         "LEO", "SAM", "ZOE", "OMAR", "IDA", "BLUE", "FOX", "STAR", "MOON", "TREE", "OWL", "SUN"]
PROMPT_LINES = [
    "You are the memory of a wearable camera. You watch the wearer's first-person video in 10-second segments "
    "and write one short memory per segment that will later be the only record used to answer the wearer's "
    "questions.",
    "Note what matters for later questions: objects and where they were put, what the wearer did, who they met, "
    "text they saw, in which room. Refer to people only as <face_N>.",
    'Reply with JSON {"description": "..."}: one or two sentences.',
    "Earlier segment 00:00:10-00:00:20:", "Memory written: (none)", "New segment 00:00:20-00:00:30:",
    "Write the memory for the new segment.", "Answer from memory only.", "Question:", "Options:",
    "If the memories do not say, answer E. not in memory.", "Memories:", "Answer with the letter.",
]


def _corpus(n: int = 3000) -> list[str]:
    """Sentences about the synthetic world, from a fixed RNG: the tokenizer does not depend on the model seed."""
    rng = random.Random(1234)
    lines = list(PROMPT_LINES)
    lines += [" ".join(map(str, range(k, k + 10))) for k in range(0, 100, 10)]
    lines += [f"{h:02d}:{m:02d}:{s:02d}" for h, m, s in itertools.product((0, 1), (0, 15, 30, 45), (0, 10, 20))]
    for _ in range(n):
        c, o, p, r = rng.choice(COLOURS), rng.choice(OBJECTS), rng.choice(PLACES), rng.choice(ROOMS)
        verb, past = rng.choice(VERBS)
        face = f"<face_{rng.randint(1, 9)}>"
        kind = rng.randrange(6)
        if kind == 0:
            text = f"I {past} the {c} {o} on the {p} in the {r}."
        elif kind == 1:
            text = f"{face} {verb}s the {c} {o} near the {p}. I was {rng.choice(ACTIVITIES)} in the {r}."
        elif kind == 2:
            text = f"Where did I put the {c} {o}? A. on the {p} B. in the {rng.choice(PLACES)} C. near the " \
                   f"{rng.choice(PLACES)} D. on the {rng.choice(PLACES)} E. not in memory"
        elif kind == 3:
            text = f"The note on the {p} says {rng.choice(WORDS)} {rng.choice(WORDS)}. I met {face} in the {r}."
        elif kind == 4:
            text = f"Who gave me the {o}? Answer: {rng.choice('ABCDE')}. [{rng.randint(1, 40)}]"
        else:
            text = f"At {rng.randint(0, 59):02d}:{rng.randint(0, 59):02d} I {past} the {o} and walked to the {p}."
        lines.append(json.dumps({"description": text}) if rng.random() < 0.5 else text)
    return lines


def build_tokenizer():
    """A `tokenizers.Tokenizer`: byte-level BPE, Qwen2 pre-tokenizer, Qwen special tokens appended last."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZER_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)  # ids after the learned vocabulary, as in Qwen's tokenizer
    return tok


def tiny_config(vocab_size: int, ids: dict[str, int], *, hidden: int = 64, intermediate: int = 128,
                layers: int = 24, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
                mrope_section: tuple[int, int, int] = (2, 3, 3), max_positions: int = 4096,
                vision_hidden: int = 32, vision_intermediate: int = 64, vision_heads: int = 2,
                vision_depth: int = 3, deepstack: tuple[int, ...] = (0, 1), vision_positions: int = 64,
                rope_theta: float = 5e6, tied: bool = False):
    """The transformers Qwen3VLConfig of a small Qwen3-VL (the layout llama.cpp was verified to accept).

    The defaults are the tests' tiny model; the embedded default model (tools/train_default.py) is wider, and
    `export/shapes.py` fills every argument with a real model's dimensions (random weights at full size).
    `mrope_section` must sum to head_dim / 2.
    """
    from transformers import Qwen3VLConfig

    return Qwen3VLConfig(
        text_config=dict(
            hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=vocab_size,
            max_position_embeddings=max_positions,
            rope_parameters={"rope_type": "default", "rope_theta": rope_theta, "mrope_section": list(mrope_section),
                             "mrope_interleaved": True},
            tie_word_embeddings=tied, bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
            pad_token_id=ids["<|endoftext|>"],
        ),
        vision_config=dict(
            depth=vision_depth, hidden_size=vision_hidden, intermediate_size=vision_intermediate,
            num_heads=vision_heads,
            out_hidden_size=hidden, patch_size=PATCH, spatial_merge_size=MERGE, temporal_patch_size=2,
            num_position_embeddings=vision_positions, deepstack_visual_indexes=list(deepstack),
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=tied,
    )


def preprocessor_config() -> dict:
    """Qwen2-VL image processor settings (transformers) matching llama.cpp's preprocessing of the mmproj."""
    return {
        "image_processor_type": "Qwen2VLImageProcessor", "do_resize": True, "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "do_convert_rgb": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "patch_size": PATCH, "temporal_patch_size": 2, "merge_size": MERGE,
        "size": {"shortest_edge": MIN_PIXELS, "longest_edge": MAX_PIXELS},
    }


def make_tiny(out_dir: str | Path, seed: int = 0, *, outtype: str = "f32",
              progress: Progress | None = None, config: Callable[[int, dict[str, int]], Any] | None = None,
              dtype: str = "float32", mmproj_outtype: str | None = None,
              name: str | None = None) -> tuple[Path, Path, Path]:
    """Build the tiny Qwen3-VL into OUT_DIR; returns (OUT_DIR/hf, OUT_DIR/model.gguf, OUT_DIR/mmproj.gguf).

    Deterministic: the same seed gives byte-identical files. Needs torch and transformers (extra `adapt`).
    config(vocab_size, special_ids) -> Qwen3VLConfig replaces `tiny_config` (same tokenizer, other shape:
    `export/shapes.py`); dtype "bfloat16"/"float16" initialises and saves the weights in that type (half the
    RAM of a full-size random model); mmproj_outtype and name go to `export_hf`.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed={seed!r}: expected a non-negative integer")
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen3VLForConditionalGeneration

    out = Path(out_dir)
    hf = out / "hf"
    hf.mkdir(parents=True, exist_ok=True)

    tok = build_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(hf)
    ids = {s: tok.token_to_id(s) for s in SPECIAL_TOKENS}
    n_tokens = tok.get_vocab_size(with_added_tokens=True)
    vocab_size = -(-n_tokens // VOCAB_MULTIPLE) * VOCAB_MULTIPLE

    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        if config is None and dtype == "float32":
            model = Qwen3VLForConditionalGeneration(tiny_config(vocab_size, ids)).to(torch.float32).eval()
        else:  # created directly in `dtype`: a 2B-parameter init never exists in float32
            qcfg = (config or tiny_config)(vocab_size, ids)
            model = Qwen3VLForConditionalGeneration._from_config(qcfg, dtype=getattr(torch, dtype)).eval()
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a one-shard "Writing model shards" bar is noise here
    try:
        model.save_pretrained(hf)
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    del model  # the exporter streams the saved files; a full-size random model need not stay in RAM
    (hf / "preprocessor_config.json").write_text(json.dumps(preprocessor_config(), indent=2) + "\n")
    model_path, mmproj_path = export_hf(hf, out, outtype, mmproj_outtype=mmproj_outtype,
                                        name=name or f"edge-agent-tiny-qwen3vl-s{seed}", progress=progress)
    return hf, model_path, mmproj_path
