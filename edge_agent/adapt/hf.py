"""The full-precision Qwen3-VL (transformers) as Phase Two sees it: frozen, with one steering vector at layer L.

Owns: loading the Hugging Face checkpoint frozen, rendering chat messages the way the llama.cpp backend
renders them, caching everything that enters layer L once per sequence, and the steered forward through
layers L..end that training differentiates.

Why the cache is exact: the vector is added to the OUTPUT of `language_model.layers[L]`, so nothing that
happens before layer L (vision tower, token embeddings, DeepStack injections of layers < L, M-RoPE cos/sin,
the causal mask) depends on it. One ordinary forward with the vector at zero records, through hooks,

- the hidden states entering layer L and the keyword arguments transformers passes to it
  (attention mask, text position ids, position_embeddings = the M-RoPE (cos, sin) pair),
- the DeepStack visual features and the mask of visual positions; transformers adds feature i to the
  output of text layer i for i < len(features) (3 on Qwen3-VL-2B, from vision layers [5, 11, 17]), so
  only when L falls inside that range does the steered tail have to add some of them again itself.

The same forward gives the reference log-probabilities (vector zero) for free.

torch and transformers are imported here only; `edge-agent ask` never loads this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edge_agent.errors import AdapterError, ModelError
from edge_agent.types import ImagePart, Message

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, IMAGE_PAD = "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"


@dataclass
class Encoded:
    """One prompt + completion, tokenized, with its image inputs. Batch size 1."""

    input_ids: torch.Tensor  # (1, T) int64
    completion_start: int  # index of the first completion token in input_ids
    mm_token_type_ids: torch.Tensor  # (1, T): 1 at image-pad positions, else 0 (transformers 5 needs it for M-RoPE)
    pixel_values: torch.Tensor | None = None  # (n_patches, C*T*P*P) float32, images in prompt order
    image_grid_thw: torch.Tensor | None = None  # (n_images, 3) int64

    @property
    def n_completion(self) -> int:
        return int(self.input_ids.shape[1]) - self.completion_start


@dataclass
class LayerInputs:
    """Everything layer L and the layers after it need for one sequence; none of it depends on the vector."""

    hidden: torch.Tensor  # (1, T, H): hidden states entering layer L
    layer_kwargs: dict[str, Any]  # as transformers passes them to each decoder layer (mask, positions, cos/sin)
    deepstack: list[tuple[int, torch.Tensor, torch.Tensor]]  # (layer index >= L, visual mask (1,T), features)
    targets: torch.Tensor  # (n,) completion token ids
    start: int  # completion_start
    ref_logp: float  # sum of completion log-probs from the ordinary forward, vector zero

    @property
    def n_tokens(self) -> int:
        return int(self.hidden.shape[1])


def _image_processor(hf_dir: Path):
    """The PIL Qwen2-VL image processor with the checkpoint's patch/merge/normalisation settings.

    The PIL backend is used on purpose: the fast (torchvision) processor is not needed and on some device
    images torchvision does not load beside the installed torch.
    """
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    path = hf_dir / "preprocessor_config.json"
    cfg = json.loads(path.read_text()) if path.is_file() else {}
    kwargs: dict[str, Any] = {}
    for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std"):
        if key in cfg:
            kwargs[key] = cfg[key]
    size = dict(cfg.get("size") or {})
    if "min_pixels" in cfg:
        size["shortest_edge"] = cfg["min_pixels"]
    if "max_pixels" in cfg:
        size["longest_edge"] = cfg["max_pixels"]
    if size.get("shortest_edge") and size.get("longest_edge"):
        kwargs["size"] = {"shortest_edge": size["shortest_edge"], "longest_edge": size["longest_edge"]}
    return Qwen2VLImageProcessorPil(**kwargs)


class FrozenQwen3VL:
    """A Qwen3-VL checkpoint loaded in float32, eval mode, every parameter with requires_grad False.

    `layer` is the text layer whose output receives the steering vector (0-indexed, as llama.cpp's
    `direction.<L>` tensor of a control vector).
    """

    def __init__(self, hf_dir: str | Path, layer: int, *, dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration

        self.hf_dir = Path(hf_dir)
        if not (self.hf_dir / "config.json").is_file():
            raise ModelError(f"hf checkpoint {str(self.hf_dir)!r}: no config.json (expected a Hugging Face folder)")
        try:
            self.model = Qwen3VLForConditionalGeneration.from_pretrained(self.hf_dir, dtype=dtype).eval()
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"hf checkpoint {str(self.hf_dir)!r}: cannot load as Qwen3-VL ({e})") from None
        self.model.requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(self.hf_dir)
        self.image_processor = _image_processor(self.hf_dir)
        self.text = self.model.model.language_model  # Qwen3VLTextModel: embed_tokens, layers, norm, rotary_emb
        self.layers = self.text.layers
        self.n_layers = len(self.layers)
        self.hidden_size = int(self.model.config.text_config.hidden_size)
        if not 0 <= layer < self.n_layers:
            raise AdapterError(f"adapt.layer={layer}: the model has text layers 0..{self.n_layers - 1}")
        self.layer = layer
        self.dtype = dtype
        self._image_pad_id = self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    # ---------------------------------------------------------------- rendering

    def _pixels(self, group: Sequence[ImagePart]) -> tuple[np.ndarray, list[int]]:
        """Patches of one image chunk: one frame (duplicated over time, as transformers and mtmd do for a
        still image) or two consecutive frames merged as one temporal patch pair (mtmd "mergeable" bitmaps)."""
        out = self.image_processor(images=[p.pixels for p in group], return_tensors="np")
        pv, grid = np.asarray(out["pixel_values"], np.float32), np.asarray(out["image_grid_thw"])
        if len(group) == 1:
            return pv, [int(x) for x in grid[0]]
        # Each patch row is laid out (C, T, P, P); the processor fills T with copies of the same frame.
        # A merged pair keeps frame a at t=0 and frame b at t=1, on the grid of one image.
        c = 3
        t = int(self.image_processor.temporal_patch_size)
        p = int(self.image_processor.patch_size)
        n = int(np.prod(grid[0]))
        rows = pv.reshape(len(group), n, c, t, p, p)
        merged = np.stack([rows[0, :, :, 0], rows[1, :, :, 0]], axis=2)  # (n, C, 2, P, P)
        return merged.reshape(n, -1), [int(x) for x in grid[0]]

    def _image_groups(self, parts: Sequence[Any]) -> list[Any]:
        """Text parts unchanged; runs of consecutive images cut into chunks of temporal_patch_size frames of the
        same size (the backend marks consecutive frames mergeable, so llama.cpp pairs them the same way)."""
        out: list[Any] = []
        run: list[ImagePart] = []
        t = int(self.image_processor.temporal_patch_size)

        def flush() -> None:
            i = 0
            while i < len(run):
                group = run[i:i + t]
                if len(group) == t and len({g.pixels.shape for g in group}) == 1:
                    out.append(list(group))
                    i += t
                else:
                    out.append([run[i]])
                    i += 1
            run.clear()

        for part in parts:
            if isinstance(part, ImagePart):
                run.append(part)
            else:
                flush()
                out.append(part)
        flush()
        return out

    def _text_ids(self, text: str, special: bool) -> list[int]:
        """Template text parses special tokens; message text does not (as the backend tokenizes them)."""
        if not text:
            return []
        return list(self.tokenizer(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"])

    def encode(self, messages: Sequence[Message], completion: str) -> Encoded:
        """Token ids as the llama.cpp backend builds them (vlm/llama_cpp.py `render_chat` + mtmd):
        `<|im_start|>{role}\\n` body `<|im_end|>\\n` per message, then `<|im_start|>assistant\\n`, then the
        completion and `<|im_end|>`. Adjacent text parts are joined; message text is tokenized without
        parsing special tokens; each image chunk becomes `<|vision_start|>` n x `<|image_pad|>` `<|vision_end|>`.
        (tests/test_adapt_hf_parity.py checks ids and logits against the backend.)"""
        ids: list[int] = []
        pixel_blocks: list[np.ndarray] = []
        grids: list[list[int]] = []
        merge = int(self.image_processor.merge_size)
        vs, ve = self.tokenizer.convert_tokens_to_ids([VISION_START, VISION_END])
        for m in messages:
            ids += self._text_ids(f"{IM_START}{m.role}\n", special=True)
            body: list[Any] = []
            for part in m.parts:
                if isinstance(part, str) and body and isinstance(body[-1], str):
                    body[-1] += part
                elif not (isinstance(part, str) and not part):
                    body.append(part)
            for item in self._image_groups(body):
                if isinstance(item, str):
                    ids += self._text_ids(item, special=False)
                    continue
                pv, grid = self._pixels(item)
                pixel_blocks.append(pv)
                grids.append(grid)
                n_tokens = grid[0] * grid[1] * grid[2] // (merge * merge)
                ids += [vs] + [self._image_pad_id] * n_tokens + [ve]
            ids += self._text_ids(f"{IM_END}\n", special=True)
        ids += self._text_ids(f"{IM_START}assistant\n", special=True)
        start = len(ids)
        ids += self._text_ids(completion, special=False) + self._text_ids(IM_END, special=True)
        t = torch.tensor([ids], dtype=torch.long)
        enc = Encoded(t, start, (t == self._image_pad_id).long())
        if pixel_blocks:
            enc.pixel_values = torch.from_numpy(np.concatenate(pixel_blocks, axis=0)).to(self.dtype)
            enc.image_grid_thw = torch.tensor(grids, dtype=torch.long)
        return enc

    def _model_inputs(self, enc: Encoded) -> dict[str, Any]:
        kw: dict[str, Any] = {"input_ids": enc.input_ids, "mm_token_type_ids": enc.mm_token_type_ids,
                              "use_cache": False}
        if enc.pixel_values is not None:
            kw["pixel_values"] = enc.pixel_values
            kw["image_grid_thw"] = enc.image_grid_thw
        return kw

    # ---------------------------------------------------------------- forward passes

    def _completion_logp(self, hidden_last: torch.Tensor, targets: torch.Tensor, start: int) -> torch.Tensor:
        """Sum of log p(completion token) from final-layer hidden states (before the final norm).
        Position i predicts token i+1, so the completion's tokens are predicted by positions start-1 .. T-2."""
        h = self.text.norm(hidden_last[:, start - 1:-1])
        logits = self.model.lm_head(h)[0].float()
        return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum()

    @torch.no_grad()
    def layer_inputs(self, enc: Encoded) -> LayerInputs:
        """One ordinary forward (vector zero): records what enters layer L and the reference log-prob."""
        if enc.completion_start < 1 or enc.n_completion < 1:
            raise AdapterError(f"sequence of {enc.input_ids.shape[1]} tokens: needs a prompt and a completion")
        seen: dict[str, Any] = {}

        def text_hook(module, args, kwargs):
            seen["visual_pos_masks"] = kwargs.get("visual_pos_masks")
            seen["deepstack"] = kwargs.get("deepstack_visual_embeds")

        def layer_hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen["hidden"] = hidden.detach().clone()
            seen["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}

        handles = [
            self.text.register_forward_pre_hook(text_hook, with_kwargs=True),
            self.layers[self.layer].register_forward_pre_hook(layer_hook, with_kwargs=True),
        ]
        try:
            out = self.model(**self._model_inputs(enc))
        finally:
            for h in handles:
                h.remove()
        targets = enc.input_ids[0, enc.completion_start:]
        logits = out.logits[0, enc.completion_start - 1:-1].float()
        ref = torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum()
        ds = seen.get("deepstack") or []
        mask = seen.get("visual_pos_masks")
        deepstack = [(i, mask, ds[i]) for i in range(len(ds)) if i >= self.layer]
        kwargs = dict(seen["kwargs"])
        kwargs.pop("past_key_values", None)
        kwargs["use_cache"] = False
        return LayerInputs(seen["hidden"], kwargs, deepstack, targets.clone(), enc.completion_start, float(ref))

    def steered_logp(self, li: LayerInputs, vector: torch.Tensor | None) -> torch.Tensor:
        """Completion log-prob with `vector` added to the output of layer L; differentiable in `vector` only."""
        h = li.hidden
        extra = {i: (m, f) for i, m, f in li.deepstack}
        for idx in range(self.layer, self.n_layers):
            h = self.layers[idx](h, **li.layer_kwargs)
            if idx == self.layer and vector is not None:
                h = h + vector.to(h.dtype)
            if idx in extra:  # DeepStack: visual features added to the output of the first few layers
                m, f = extra[idx]
                h = h.clone()
                h[m] = h[m] + f.to(h.dtype)
        return self._completion_logp(h, li.targets, li.start)

    def full_logp(self, enc: Encoded, vector: torch.Tensor | None) -> torch.Tensor:
        """The same log-prob through the whole model with a forward hook adding `vector` at layer L's output
        (the way llama.cpp applies a control vector). For checks of the cache; slow on a real model."""
        handle = None
        if vector is not None:
            def add(module, args, output):
                return output + vector.to(output.dtype)
            handle = self.layers[self.layer].register_forward_hook(add)
        try:
            out = self.model(**self._model_inputs(enc))
        finally:
            if handle is not None:
                handle.remove()
        targets = enc.input_ids[0, enc.completion_start:]
        logits = out.logits[0, enc.completion_start - 1:-1].float()
        return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum()

    def weights_fingerprint(self) -> dict[str, torch.Tensor]:
        """Copies of every parameter and buffer (tests check training leaves them bit-identical)."""
        sd = self.model.state_dict()
        return {k: v.detach().clone() for k, v in sd.items()}
