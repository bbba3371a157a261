"""The full-precision Qwen3-VL (transformers) as Phase Two sees it: frozen, with one steering vector at layer L.

Owns: loading the Hugging Face checkpoint frozen, encoding chat messages with the shared prompt encoder
(`vlm/prompt.py`, the same tokens and pixels llama.cpp sees), caching everything that enters layer L once per sequence, and the steered forward through
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

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from edge_agent.errors import AdapterError, ModelError
from edge_agent.types import Message
from edge_agent.vlm.prompt import PromptEncoder, pixel_inputs



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
        self.encoder = PromptEncoder.from_tokenizer(self.tokenizer)
        self.text = self.model.model.language_model  # Qwen3VLTextModel: embed_tokens, layers, norm, rotary_emb
        self.layers = self.text.layers
        self.n_layers = len(self.layers)
        self.hidden_size = int(self.model.config.text_config.hidden_size)
        if not 0 <= layer < self.n_layers:
            raise AdapterError(f"adapt.layer={layer}: the model has text layers 0..{self.n_layers - 1}")
        self.layer = layer
        self.dtype = dtype

    # ---------------------------------------------------------------- rendering

    def encode(self, messages: Sequence[Message], completion: str) -> Encoded:
        """Token ids and pixels exactly as the llama.cpp backend feeds them (the shared `vlm.prompt` encoder)."""
        enc = self.encoder.encode(messages, completion)
        t = torch.tensor([enc.ids], dtype=torch.long)
        out = Encoded(t, enc.n_prompt, (t == self.encoder.image_pad).long())
        pixels, grids = pixel_inputs(enc.chunks)
        if pixels is not None:
            out.pixel_values = torch.from_numpy(pixels).to(self.dtype)
            out.image_grid_thw = torch.tensor(grids, dtype=torch.long)
        return out

    def _model_inputs(self, enc: Encoded) -> dict[str, Any]:
        # logits only where the completion is predicted (its n tokens, and the last position, which predicts
        # nothing): over a 1.8k-token window and a 152k vocabulary the full logits would be ~1.1 GB in float32
        kw: dict[str, Any] = {"input_ids": enc.input_ids, "mm_token_type_ids": enc.mm_token_type_ids,
                              "use_cache": False, "logits_to_keep": enc.n_completion + 1}
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
        logits = out.logits[0, :-1].float()  # positions completion_start-1 .. T-2 (logits_to_keep)
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
        logits = out.logits[0, :-1].float()  # positions completion_start-1 .. T-2 (logits_to_keep)
        return torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).sum()

    def weights_fingerprint(self) -> dict[str, torch.Tensor]:
        """Copies of every parameter and buffer (tests check training leaves them bit-identical)."""
        sd = self.model.state_dict()
        return {k: v.detach().clone() for k, v in sd.items()}
