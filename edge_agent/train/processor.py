"""The processing class GRPOTrainer uses: Qwen3VLProcessor whose chat rendering and tokenization are the project's
prompt encoder (`edge_agent.vlm.prompt`), so rollouts and the loss see the tokens llama.cpp sees on the device.

transformers' own processor would resize frames up to the checkpoint's min_pixels and give every frame its own
image chunk; llama.cpp keeps frames whose sides are multiples of 32 as they are and pairs consecutive frames into
one temporal patch. This class keeps the processor interface TRL calls:

- apply_chat_template(conversations, tokenize=False) -> the rendered text, one `<|vision_start|><|image_pad|>
  <|vision_end|>` placeholder per frame (TRL keeps it only to hand it back to __call__);
- apply_chat_template(conversations, tokenize=True, return_dict=True) -> input_ids per prompt, plus
  pixel_values, image_grid_thw (one row per chunk) and mm_token_type_ids, for generation;
- __call__(images=..., text=...) -> the same for the forward pass, left-padded like TRL's prompt_ids.

Because a chunk may hold two frames, the number of image_grid_thw rows of a prompt is its number of
`<|vision_start|>` tokens, not its number of frames; phase_one.py's trainer counts chunks that way.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np
import torch
from transformers import BatchFeature, Qwen3VLProcessor

from edge_agent.train.data import conversation_to_messages
from edge_agent.types import ImagePart, Message
from edge_agent.vlm.prompt import IM_END, IM_START, IMAGE_PAD, VISION_END, VISION_START, PromptEncoder, pixel_inputs, \
    render_chat

FRAME_PLACEHOLDER = f"{VISION_START}{IMAGE_PAD}{VISION_END}"
_TURN = re.compile(re.escape(IM_START) + r"(\w+)\n(.*?)" + re.escape(IM_END) + r"\n", re.S)


def render_text(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """The chat as text with one placeholder per frame (not the token sequence: chunks are decided when encoding)."""
    out = []
    for p in render_chat(messages, add_generation_prompt):
        out.append(FRAME_PLACEHOLDER if p.image is not None else p.text)
    return "".join(out)


def parse_text(text: str, images: Sequence[Any] | None) -> list[Message]:
    """Inverse of render_text: turns and frame placeholders back into Messages, taking `images` in order."""
    images = list(images or [])
    messages, k = [], 0
    for role, body in _TURN.findall(text):
        parts: list[Any] = []
        pieces = body.split(FRAME_PLACEHOLDER)
        for j, piece in enumerate(pieces):
            if piece:
                parts.append(piece)
            if j < len(pieces) - 1:
                if k >= len(images):
                    raise ValueError(f"prompt has more frame placeholders than its {len(images)} images")
                img = images[k]
                arr = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8)
                parts.append(ImagePart(f"frame{k}", arr))
                k += 1
        messages.append(Message(role, parts))
    if k != len(images):
        raise ValueError(f"prompt has {k} frame placeholders but {len(images)} images")
    return messages


class WriterProcessor(Qwen3VLProcessor):
    """Qwen3VLProcessor with the project's prompt encoder (see module docstring)."""

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                         chat_template=chat_template, **kwargs)
        self.encoder = PromptEncoder.from_tokenizer(tokenizer)

    # -- rendering / encoding ---------------------------------------------------------------------------------
    def _encode_batch(self, batch: list[list[Message]], padding_side: str = "left") -> dict[str, Any]:
        encoded = [self.encoder.encode(m) for m in batch]
        ids = [e.ids[:e.n_prompt] for e in encoded]
        rows, grids = [], []
        for e in encoded:
            pv, g = pixel_inputs(e.chunks)
            if pv is not None:
                rows.append(pv)
                grids += g
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids],
                               "mm_token_type_ids": [[int(t == self.encoder.image_pad) for t in x] for x in ids]}
        if rows:
            out["pixel_values"] = torch.from_numpy(np.concatenate(rows))
            out["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
        return out

    @staticmethod
    def _batched(conversation) -> tuple[list, bool]:
        """A single conversation (list of message dicts) or a batch of them."""
        if conversation and isinstance(conversation[0], dict):
            return [conversation], False
        return list(conversation), True

    def apply_chat_template(self, conversation, chat_template=None, tokenize: bool = False,
                            add_generation_prompt: bool = True, return_dict: bool = False, **kwargs):
        convs, batched = self._batched(conversation)
        messages = [conversation_to_messages(c) for c in convs]
        if not tokenize:
            texts = [render_text(m, add_generation_prompt) for m in messages]
            return texts if batched else texts[0]
        out = self._encode_batch(messages)
        if not return_dict:
            return out["input_ids"] if batched else out["input_ids"][0]
        return BatchFeature(out) if batched else BatchFeature({k: (v[0] if isinstance(v, list) else v)
                                                               for k, v in out.items()})

    def __call__(self, images=None, text=None, videos=None, padding: bool | str = True,
                 return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        if videos is not None:
            raise ValueError("WriterProcessor: videos are not supported (frames are images in pairs)")
        texts = [text] if isinstance(text, str) else list(text or [])
        if images is None:
            per_text: list = [None] * len(texts)
        elif len(texts) == 1 and images and not isinstance(images[0], (list, tuple)):
            per_text = [images]
        else:
            per_text = list(images)
        out = self._encode_batch([parse_text(t, im) for t, im in zip(texts, per_text)])
        if return_tensors != "pt":
            return BatchFeature(out)
        pad = self.tokenizer.pad_token_id
        width = max(len(x) for x in out["input_ids"])

        def left(rows: list[list[int]], value: int) -> torch.Tensor:
            return torch.tensor([[value] * (width - len(r)) + r for r in rows], dtype=torch.long)

        res = {"input_ids": left(out["input_ids"], pad), "attention_mask": left(out["attention_mask"], 0),
               "mm_token_type_ids": left(out["mm_token_type_ids"], 0)}
        for k in ("pixel_values", "image_grid_thw"):
            if k in out:
                res[k] = out[k]
        return BatchFeature(res)


def make_processor(hf_dir, tokenizer) -> WriterProcessor:
    """The processor for a checkpoint: the PIL image processor with the checkpoint's settings (never used for
    pixels here, but saved with checkpoints so they stay loadable) and Qwen3-VL's video processor, as TRL's
    VLM path expects a full Qwen3VLProcessor."""
    import json
    from pathlib import Path

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    path = Path(hf_dir) / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    kwargs = {k: cfg[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")
              if k in cfg}
    size = cfg.get("size") or {}
    if size.get("shortest_edge") and size.get("longest_edge"):
        kwargs["size"] = {"shortest_edge": size["shortest_edge"], "longest_edge": size["longest_edge"]}
    return WriterProcessor(image_processor=Qwen2VLImageProcessorPil(**kwargs), tokenizer=tokenizer,
                           video_processor=Qwen3VLVideoProcessor(),
                           chat_template=getattr(tokenizer, "chat_template", None))
