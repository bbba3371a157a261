"""The one Qwen3-VL prompt encoder: chat rendering, image chunks (temporal pairs), image-token counts, pixels.

Pure (numpy only, no llama_cpp, no torch), so every consumer builds the same token sequence from the same
messages: the llama.cpp backend (which hands `render_chat`'s parts to mtmd), the torch model Phase Two trains
against (`adapt/frozen_model.py`), and the training tools (`tools/train_default.py`, `train/`).
`tests/test_vlm_prompt_parity.py` checks the three agree.

The layout, as llama.cpp's mtmd builds it for Qwen3-VL:
  `<|im_start|>{role}\\n` body `<|im_end|>\\n` per message, then `<|im_start|>assistant\\n`;
  template text parses special tokens, message text does not; adjacent text parts are joined;
  consecutive frames (no text between them) are "mergeable" and go in pairs into one temporal patch
  (temporal_patch_size 2), an odd frame or a frame of another size stands alone (repeated over time);
  each image chunk is `<|vision_start|>` + n x `<|image_pad|>` + `<|vision_end|>` with
  n = (h / 16 / 2) * (w / 16 / 2) (patch 16, 2x2 spatial merge);
  pixels enter the vision tower as (x / 255 - 0.5) / 0.5.

Sizes follow llama.cpp, not the checkpoint's preprocessor config: mtmd fits each frame to a multiple of 32
between 8 and 4,096 merged tokens (Qwen's smart resize; a 64x64 frame becomes 96x96), whatever `min_pixels`
the Hugging Face folder declares (65,536 px on Qwen3-VL-2B, which would blow a 128x96 frame up to 288x224).
Frames the capture delivers (multiples of 32, >= 8 tokens) pass unchanged; others are resized bicubically
(PIL, imported only then). So the vector Phase Two trains sees exactly the tokens the writer runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from edge_agent.types import ImagePart, Message

PATCH_SIZE = 16  # vision patch side, pixels
MERGE_SIZE = 2  # 2x2 patches merge into one LLM token
TEMPORAL_PATCH = 2  # frames per temporal patch
IMAGE_MEAN = 0.5
IMAGE_STD = 0.5
MIN_TOKENS, MAX_TOKENS = 8, 4096  # llama.cpp's limits per image for Qwen2/3-VL projectors
ROLES = ("system", "user", "assistant")

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


@dataclass(frozen=True)
class PromptPart:
    """A piece of the rendered chat: template text (special tokens parsed), message text (not parsed), or image."""

    text: str | None = None
    special: bool = False
    image: ImagePart | None = None
    mergeable: bool = False


def render_chat(messages: Sequence[Message], add_generation_prompt: bool = True) -> list[PromptPart]:
    """Qwen chat format, as parts. ImageParts with no text between them are marked mergeable (temporal pairs)."""
    out: list[PromptPart] = []
    for m in messages:
        if m.role not in ROLES:
            raise ValueError(f"message role {m.role!r}: expected one of {ROLES}")
        out.append(PromptPart(text=f"{IM_START}{m.role}\n", special=True))
        body: list[str | ImagePart] = []
        for p in m.parts:
            if isinstance(p, str):
                if p and body and isinstance(body[-1], str):
                    body[-1] += p
                elif p:
                    body.append(p)
            elif isinstance(p, ImagePart):
                body.append(p)
            else:
                raise ValueError(f"message part of type {type(p).__name__}: expected str or ImagePart")
        for i, p in enumerate(body):
            if isinstance(p, str):
                out.append(PromptPart(text=p))
            else:
                run = (i > 0 and isinstance(body[i - 1], ImagePart)) or (
                    i + 1 < len(body) and isinstance(body[i + 1], ImagePart))
                out.append(PromptPart(image=p, mergeable=run))
        out.append(PromptPart(text=f"{IM_END}\n", special=True))
    if add_generation_prompt:
        out.append(PromptPart(text=f"{IM_START}assistant\n", special=True))
    return out


def fitted_size(height: int, width: int) -> tuple[int, int]:
    """The size mtmd gives a frame: sides rounded to multiples of 32, area within [8, 4096] merged tokens."""
    unit = PATCH_SIZE * MERGE_SIZE
    if height <= 0 or width <= 0:
        raise ValueError(f"frame of {width}x{height}: empty")
    lo, hi = MIN_TOKENS * unit * unit, MAX_TOKENS * unit * unit
    h, w = max(unit, round(height / unit) * unit), max(unit, round(width / unit) * unit)
    if h * w > hi:
        beta = math.sqrt(height * width / hi)
        h, w = max(unit, math.floor(height / beta / unit) * unit), max(unit, math.floor(width / beta / unit) * unit)
    elif h * w < lo:
        beta = math.sqrt(lo / (height * width))
        h, w = math.ceil(height * beta / unit) * unit, math.ceil(width * beta / unit) * unit
    return h, w


def image_tokens(height: int, width: int) -> int:
    """LLM tokens one image chunk of a frame this size takes (after fitting and the 2x2 merge)."""
    h, w = fitted_size(height, width)
    unit = PATCH_SIZE * MERGE_SIZE
    return (h // unit) * (w // unit)


@dataclass(frozen=True)
class ImageChunk:
    """One or two consecutive frames that enter the vision tower as one temporal patch."""

    frames: tuple[ImagePart, ...]

    @property
    def grid(self) -> tuple[int, int, int]:
        """(t, h, w) in patches, as transformers' `image_grid_thw`."""
        h, w = fitted_size(*self.frames[0].pixels.shape[:2])
        return 1, h // PATCH_SIZE, w // PATCH_SIZE

    @property
    def n_tokens(self) -> int:
        h, w = self.frames[0].pixels.shape[:2]
        return image_tokens(h, w)


def chunk_images(parts: Sequence[PromptPart]) -> list[PromptPart | ImageChunk]:
    """Text parts unchanged; each run of mergeable frames cut into pairs of the same size (mtmd's pairing)."""
    out: list[PromptPart | ImageChunk] = []
    run: list[ImagePart] = []

    def flush() -> None:
        i = 0
        while i < len(run):
            pair = run[i:i + TEMPORAL_PATCH]
            if len(pair) == TEMPORAL_PATCH and len({p.pixels.shape for p in pair}) == 1:
                out.append(ImageChunk(tuple(pair)))
                i += TEMPORAL_PATCH
            else:
                out.append(ImageChunk((run[i],)))
                i += 1
        run.clear()

    for p in parts:
        if p.image is not None and p.mergeable:
            run.append(p.image)
            continue
        flush()
        out.append(ImageChunk((p.image,)) if p.image is not None else p)
    flush()
    return out


def normalize_pixels(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 (3, h, w) as the vision tower takes it, fitted to mtmd's size."""
    if not (isinstance(pixels, np.ndarray) and pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8):
        raise ValueError(f"pixels must be an H x W x 3 uint8 RGB array, got {getattr(pixels, 'dtype', type(pixels))} "
                         f"{getattr(pixels, 'shape', '')}")
    h, w = fitted_size(*pixels.shape[:2])
    if (h, w) != pixels.shape[:2]:
        from PIL import Image

        pixels = np.asarray(Image.fromarray(pixels).resize((w, h), Image.Resampling.BICUBIC))
    x = pixels.astype(np.float32) / 255.0
    return ((x - IMAGE_MEAN) / IMAGE_STD).transpose(2, 0, 1)


def patchify(chunk: ImageChunk) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One chunk -> (n_patches, 3 * 2 * 16 * 16) float32 rows in Qwen2-VL's patch order, and its grid (t, h, w).

    A single frame is repeated to fill the temporal patch, as transformers and mtmd do for a still image.
    Rows are ordered by 2x2 merge block, then within the block, each row laid out (C, T, P, P).
    """
    frames = [normalize_pixels(f.pixels) for f in chunk.frames]
    if len(frames) == 1:
        frames = frames * TEMPORAL_PATCH
    x = np.stack(frames)  # (T, C, H, W)
    t, c, h, w = x.shape
    gh, gw = h // PATCH_SIZE, w // PATCH_SIZE
    x = x.reshape(t, c, gh // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE, gw // MERGE_SIZE, MERGE_SIZE, PATCH_SIZE)
    x = x.transpose(2, 5, 3, 6, 1, 0, 4, 7)  # bh, bw, mh, mw, C, T, ph, pw
    return np.ascontiguousarray(x.reshape(gh * gw, c * t * PATCH_SIZE * PATCH_SIZE)), (1, gh, gw)


def pixel_inputs(chunks: Sequence[ImageChunk]) -> tuple[np.ndarray | None, list[tuple[int, int, int]]]:
    """All chunks of a prompt -> (pixel_values (n_patches, 1536) or None, image_grid_thw rows)."""
    rows, grids = [], []
    for ch in chunks:
        r, g = patchify(ch)
        rows.append(r)
        grids.append(g)
    return (np.concatenate(rows) if rows else None), grids


@dataclass
class EncodedPrompt:
    """Token ids of one chat (+ completion), with the image chunks in prompt order."""

    ids: list[int]
    n_prompt: int  # ids[:n_prompt] is the prompt; the rest is the completion + <|im_end|>
    chunks: list[ImageChunk] = field(default_factory=list)


Tokenize = Callable[[str, bool], list[int]]  # (text, parse_special) -> ids, never adding BOS/EOS


class PromptEncoder:
    """Messages (+ completion) -> token ids exactly as llama.cpp's mtmd tokenizes the rendered chat."""

    def __init__(self, tokenize: Tokenize, *, vision_start: int, vision_end: int, image_pad: int, im_end: int):
        self.tokenize = tokenize
        self.vision_start, self.vision_end, self.image_pad, self.im_end = vision_start, vision_end, image_pad, im_end

    @classmethod
    def from_tokenizer(cls, tok) -> "PromptEncoder":
        """From a `tokenizers.Tokenizer` (the training tools) or a transformers tokenizer (Phase Two)."""
        if hasattr(tok, "token_to_id"):  # tokenizers.Tokenizer: special tokens are always parsed by encode()
            def tokenize(text: str, special: bool) -> list[int]:
                if not special:
                    # message text must not turn "<|im_end|>" typed by a user into a control token
                    return _split_special(tok, text)
                return tok.encode(text, add_special_tokens=False).ids
            ids = {t: tok.token_to_id(t) for t in (VISION_START, VISION_END, IMAGE_PAD, IM_END)}
        else:
            def tokenize(text: str, special: bool) -> list[int]:
                return list(tok(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"])
            ids = {t: tok.convert_tokens_to_ids(t) for t in (VISION_START, VISION_END, IMAGE_PAD, IM_END)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ValueError(f"tokenizer has no {', '.join(missing)} token: not a Qwen3-VL tokenizer")
        return cls(tokenize, vision_start=ids[VISION_START], vision_end=ids[VISION_END], image_pad=ids[IMAGE_PAD],
                   im_end=ids[IM_END])

    def text_ids(self, text: str, special: bool = False) -> list[int]:
        return self.tokenize(text, special) if text else []

    def encode(self, messages: Sequence[Message], completion: str | None = None,
               add_generation_prompt: bool = True) -> EncodedPrompt:
        ids: list[int] = []
        chunks: list[ImageChunk] = []
        for item in chunk_images(render_chat(messages, add_generation_prompt)):
            if isinstance(item, ImageChunk):
                chunks.append(item)
                ids += [self.vision_start] + [self.image_pad] * item.n_tokens + [self.vision_end]
            else:
                ids += self.text_ids(item.text, item.special)
        n_prompt = len(ids)
        if completion is not None:
            ids += self.text_ids(completion) + [self.im_end]
        return EncodedPrompt(ids, n_prompt, chunks)


def _split_special(tok, text: str) -> list[int]:
    """Encode with a `tokenizers.Tokenizer` without parsing special tokens (as llama.cpp's parse_special=False)."""
    before = tok.encode_special_tokens
    tok.encode_special_tokens = True
    try:
        return tok.encode(text, add_special_tokens=False).ids
    finally:
        tok.encode_special_tokens = before
