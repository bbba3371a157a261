"""Phase Two trainer: DPO on one steering vector added to the output of a Qwen3-VL text layer, model frozen.

Owns: the DPO loss, preparing preference pairs (layer-L inputs and
reference log-probs computed once), the training loop over the vector only, and held-out evaluation.

The objective (Rafailov et al., DPO, sigmoid loss), per pair with sequence log-probs summed over completion
tokens, policy pi = model with the vector, reference = the same model with the vector at zero:

    margin = beta * ((log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected)))
    loss   = -log sigmoid(margin)

With `adapt.sft_weight` w > 0 a batch's loss also gets w x the chosen replies' NLL per token (over the batch's chosen
tokens, as TRL's loss_types ["sigmoid", "sft"]): DPO alone may raise the chosen-over-rejected margin by making both
unlikely, which on a small writer breaks the JSON format at the deployed length; the SFT term holds the chosen
replies, all in format, likely.

Output convention: the returned `SteeringVector` carries the vector ALREADY multiplied by
`scale_after_training` and `scale = 1.0`. Every consumer (backend `set_steering` applies scale * vector,
the control-vector GGUF, stock `llama-cli --control-vector`) therefore applies the same thing. The unscaled
vector and the scale are kept in `TrainResult` and the adapter's metrics.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from edge_agent.config import AdaptConfig
from edge_agent.errors import AdapterError
from edge_agent.types import Message, SteeringVector

if TYPE_CHECKING:  # torch is imported inside functions so importing this module stays cheap
    import torch

    from edge_agent.adapt.frozen_model import FrozenQwen3VL, LayerInputs

Progress = Callable[[str, dict[str, Any]], None]


# ---------------------------------------------------------------------------- the loss


def dpo_loss(policy_chosen_logps: "torch.Tensor", policy_rejected_logps: "torch.Tensor",
             ref_chosen_logps: "torch.Tensor", ref_rejected_logps: "torch.Tensor",
             beta: float) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Per-pair sigmoid DPO loss and implicit reward margin. All inputs (n,) sequence log-probs."""
    import torch.nn.functional as F

    margin = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    return -F.logsigmoid(margin), margin


def dpo_sft_loss(policy_chosen_logps: "torch.Tensor", policy_rejected_logps: "torch.Tensor",
                 ref_chosen_logps: "torch.Tensor", ref_rejected_logps: "torch.Tensor", chosen_tokens: "torch.Tensor",
                 beta: float, sft_weight: float) -> "torch.Tensor":
    """A batch's loss: mean sigmoid DPO loss + sft_weight x the chosen replies' NLL per token (TRL's token mean
    over the batch, not a mean of per-pair means). `chosen_tokens` (n,) counts each chosen reply's tokens."""
    losses, _ = dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    return losses.mean() + sft_weight * (-policy_chosen_logps.sum() / chosen_tokens.sum())


# ---------------------------------------------------------------------------- pairs


def completion_text(candidate_text: str) -> str:
    """What the writer emits for a candidate: the JSON reply. Stored candidates may hold the raw reply
    (kept as is, also when malformed) or only the description (wrapped as {"description": ...})."""
    s = candidate_text.strip()
    if s.startswith("{"):
        return s
    return json.dumps({"description": s}, ensure_ascii=False)


@dataclass
class PreferencePair:
    """A prompt (the writer's window, images and text) with a preferred and a dispreferred memory reply."""

    messages: list[Message]
    chosen: str  # completion text as the writer would emit it (see completion_text)
    rejected: str
    pair_id: int | None = None


@dataclass
class PreparedPair:
    """A pair with its layer-L inputs cached; the reference log-probs are the cached path at vector zero."""

    pair_id: int | None
    chosen: "LayerInputs"
    rejected: "LayerInputs"
    ref_chosen: float
    ref_rejected: float


def prepare_pairs(policy: "FrozenQwen3VL", pairs: Sequence[PreferencePair],
                  progress: Progress | None = None) -> list[PreparedPair]:
    """Run everything before layer L once per sequence (no grad) and the reference log-probs once.

    The reference is computed through the same cached tail as the policy (vector zero), so at vector zero
    every margin is exactly 0 and the loss exactly log 2; `LayerInputs.ref_logp` (the ordinary forward)
    agrees with it to float rounding.
    """
    import torch

    out = []
    for i, p in enumerate(pairs):
        lc = policy.layer_inputs(policy.encode(p.messages, p.chosen))
        lr = policy.layer_inputs(policy.encode(p.messages, p.rejected))
        with torch.no_grad():
            rc = float(policy.steered_logp(lc, None))
            rr = float(policy.steered_logp(lr, None))
        out.append(PreparedPair(p.pair_id, lc, lr, rc, rr))
        if progress:
            progress("prepare", {"done": i + 1, "total": len(pairs)})
    return out


# ---------------------------------------------------------------------------- evaluation


@dataclass
class PreferenceEval:
    """How a vector orders held-out pairs, relative to the reference (vector zero)."""

    n: int
    accuracy: float  # share of pairs with implicit reward margin > 0; an exact tie (margin 0) counts 1/2
    mean_margin: float  # beta * ((pi_c - ref_c) - (pi_r - ref_r)), averaged
    mean_logratio: float  # log pi(chosen) - log pi(rejected), averaged (grows when the vector helps)
    mean_loss: float
    margins: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, float]:
        return {"n": self.n, "accuracy": self.accuracy, "mean_margin": self.mean_margin,
                "mean_logratio": self.mean_logratio, "mean_loss": self.mean_loss}


# Margins smaller than this are ties: a vector of zeros gives exactly 0, a vector with no effect on the
# completion tokens gives float noise. Ties count as a coin flip, so the zero vector scores exactly 0.5.
TIE_EPS = 1e-6


def evaluate(policy: "FrozenQwen3VL", prepared: Sequence[PreparedPair], applied: np.ndarray | None,
             beta: float) -> PreferenceEval:
    """Preference accuracy and margins of the deployed vector (`applied` = scale * vector, None = zero)."""
    import torch

    if not prepared:
        return PreferenceEval(0, float("nan"), float("nan"), float("nan"), float("nan"))
    v = None if applied is None else torch.as_tensor(np.asarray(applied, np.float32))
    if v is not None and v.shape != (policy.hidden_size,):
        raise AdapterError(f"vector of shape {tuple(v.shape)}: the model's hidden size is {policy.hidden_size}")
    pc, pr = [], []
    with torch.no_grad():
        for p in prepared:
            pc.append(float(policy.steered_logp(p.chosen, v)))
            pr.append(float(policy.steered_logp(p.rejected, v)))
    tc, tr = torch.tensor(pc, dtype=torch.float64), torch.tensor(pr, dtype=torch.float64)
    rc = torch.tensor([p.ref_chosen for p in prepared], dtype=torch.float64)
    rr = torch.tensor([p.ref_rejected for p in prepared], dtype=torch.float64)
    losses, margins = dpo_loss(tc, tr, rc, rr, beta)
    wins = (margins > TIE_EPS).double() + 0.5 * (margins.abs() <= TIE_EPS).double()
    return PreferenceEval(len(prepared), float(wins.mean()), float(margins.mean()), float((tc - tr).mean()),
                          float(losses.mean()), [float(m) for m in margins])


# ---------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    vector: SteeringVector  # deployed: vector already x scale_after_training, scale 1.0 (see module docstring)
    raw: np.ndarray  # the trained vector before scaling
    losses: list[float]  # each step's batch loss (DPO + the SFT term when weighted), before that step's update
    train_accuracy: list[float]  # share of the step's batch with margin > 0, before the update
    grad_norms: list[float]
    seconds: float
    config: dict[str, Any]

    def metrics(self) -> dict[str, Any]:
        return {"loss_first": self.losses[0], "loss_last": self.losses[-1], "losses": self.losses,
                "train_accuracy": self.train_accuracy, "grad_norms": self.grad_norms,
                "raw_norm": float(np.linalg.norm(self.raw)),
                "applied_norm": float(np.linalg.norm(self.vector.vector)), "seconds": self.seconds,
                "config": self.config}


def vector_gradient(policy: "FrozenQwen3VL", prepared: Sequence[PreparedPair], vector: np.ndarray,
                    beta: float) -> tuple[float, np.ndarray]:
    """Mean DPO loss over `prepared` and its gradient w.r.t. the vector (cached path); used by tests."""
    import torch

    v = torch.tensor(np.asarray(vector, np.float32), requires_grad=True)
    total = 0.0
    for p in prepared:
        loss, _, _ = _pair_loss(policy, p, v, beta)
        (loss / len(prepared)).backward()
        total += float(loss.detach()) / len(prepared)
    assert v.grad is not None
    return total, v.grad.detach().numpy().copy()


def _pair_loss(policy: "FrozenQwen3VL", p: PreparedPair, v: "torch.Tensor", beta: float):
    """One pair's DPO loss, its margin and the chosen reply's log-prob (for the SFT term)."""
    import torch

    pc = policy.steered_logp(p.chosen, v)
    pr = policy.steered_logp(p.rejected, v)
    ref_c = torch.tensor(p.ref_chosen, dtype=pc.dtype)
    ref_r = torch.tensor(p.ref_rejected, dtype=pr.dtype)
    losses, margin = dpo_loss(pc[None], pr[None], ref_c[None], ref_r[None], beta)
    return losses[0], margin[0], pc


def train_vector(policy: "FrozenQwen3VL", train: Sequence[PreparedPair], cfg: AdaptConfig, *,
                 init: np.ndarray | None = None, base_model_hash: str = "",
                 progress: Progress | None = None) -> TrainResult:
    """Optimise the vector on `train`; the model's parameters are never handed to the optimizer and have
    requires_grad False, so they stay bit-identical. Returns the deployed (scaled) vector."""
    import torch

    if not train:
        raise AdapterError("no training pairs: nothing to train the steering vector on")
    if cfg.layer != policy.layer:
        raise AdapterError(f"adapt.layer={cfg.layer}: the loaded model caches inputs of layer {policy.layer}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    if init is not None:
        v0 = torch.as_tensor(np.asarray(init, np.float32)).clone()
        if v0.shape != (policy.hidden_size,):
            raise AdapterError(f"init vector of shape {tuple(v0.shape)}: hidden size is {policy.hidden_size}")
    elif cfg.init == "normal":
        v0 = torch.randn(policy.hidden_size, generator=gen) * cfg.init_std
    else:
        v0 = torch.zeros(policy.hidden_size)
    vector = torch.nn.Parameter(v0)
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW([vector], lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam([vector], lr=cfg.learning_rate)
    else:
        opt = torch.optim.SGD([vector], lr=cfg.learning_rate)

    batch = cfg.batch_pairs or len(train)
    losses: list[float] = []
    accs: list[float] = []
    norms: list[float] = []
    order: list[int] = []
    for step in range(cfg.steps):
        if len(order) < batch:  # a fresh seeded permutation when the current one runs out
            order += torch.randperm(len(train), generator=gen).tolist()
        idx, order = order[:batch], order[batch:]
        opt.zero_grad(set_to_none=True)
        step_loss, wins = 0.0, 0
        chosen_tokens = sum(len(train[i].chosen.targets) for i in idx)
        for i in idx:  # gradient accumulation, one pair (two sequences) at a time: bounded memory
            loss, margin, chosen_logp = _pair_loss(policy, train[i], vector, cfg.beta)
            # this pair's share of dpo_sft_loss over the batch
            share = loss / len(idx) - cfg.sft_weight * chosen_logp / chosen_tokens
            share.backward()
            step_loss += float(share.detach())
            wins += int(float(margin.detach()) > 0)
        assert vector.grad is not None
        if cfg.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_([vector], cfg.max_grad_norm)
        norms.append(float(vector.grad.norm()))
        opt.step()
        losses.append(step_loss)
        accs.append(wins / len(idx))
        if progress:
            progress("train", {"step": step + 1, "steps": cfg.steps, "loss": step_loss})
    raw = vector.detach().numpy().astype(np.float32).copy()
    deployed = SteeringVector((raw * cfg.scale_after_training).astype(np.float32), layer=cfg.layer, scale=1.0,
                              base_model_hash=base_model_hash)
    conf = {k: getattr(cfg, k) for k in cfg.__dataclass_fields__ if k not in ("reward", "gate")}  # the trainer's own
    return TrainResult(deployed, raw, losses, accs, norms, time.perf_counter() - start, conf)
