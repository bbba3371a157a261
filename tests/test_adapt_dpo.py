"""DPO on the steering vector: the loss, parity with TRL, the layer-L cache, frozen weights, and that it learns."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from adapt_support import OBJECTS, hf_dir, one_torch_thread, window_prompt  # noqa: E402

from edge_agent.adapt.dpo import (  # noqa: E402
    PreferencePair, completion_text, dpo_loss, dpo_sft_loss, evaluate, prepare_pairs, train_vector,
    vector_gradient)
from edge_agent.config import AdaptConfig  # noqa: E402
from edge_agent.errors import AdapterError, ConfigError  # noqa: E402

# Sequence log-probs of 3 pairs, made up (chosen, rejected, ref chosen, ref rejected).
LOGPS = ([-12.0, -30.5, -7.25], [-14.5, -29.0, -9.0], [-13.0, -31.0, -7.0], [-13.5, -28.0, -8.5])


def test_loss_equals_hand_computed_value():
    pc, pr, rc, rr = (torch.tensor(x, dtype=torch.float64) for x in LOGPS)
    losses, margins = dpo_loss(pc, pr, rc, rr, beta=0.1)
    for i in range(3):
        m = 0.1 * ((LOGPS[0][i] - LOGPS[2][i]) - (LOGPS[1][i] - LOGPS[3][i]))
        assert margins[i].item() == pytest.approx(m, abs=1e-12)
        assert losses[i].item() == pytest.approx(math.log(1 + math.exp(-m)), abs=1e-12)
    # pair 0: margin 0.1 * (1 - (-1)) = 0.2 -> loss log(1 + e^-0.2)
    assert losses[0].item() == pytest.approx(0.598138869381592, abs=1e-12)


def _trl_loss(beta, pc, pr, rc, rr, lengths=None, loss_types=("sigmoid",), loss_weights=(1.0,)):
    """TRL 1.16's DPOTrainer._compute_loss on given sequence log-probs (`lengths`: tokens of each of the 2n
    completions, chosen then rejected; 1 each by default).

    TRL has no standalone loss function: the loss is computed inside `_compute_loss` from the model's
    per-token log-probs. A stand-in model returns per-token log-probs (0 outside the completion, as TRL's fused
    LM head gives for labels -100) spread evenly over each completion's tokens, so their sums are our sequence
    log-probs; the reference log-probs come in precomputed, and the trainer object is built without __init__
    (no model, data set or accelerator).
    """
    from trl import DPOTrainer

    n = len(pc)
    lengths = list(lengths or [1] * (2 * n))
    seq = max(lengths) + 1
    completion = torch.zeros(2 * n, seq, dtype=torch.long)
    per_token = torch.zeros(2 * n, seq - 1, dtype=torch.float64)
    for row, (logp, k) in enumerate(zip(list(pc) + list(pr), lengths)):
        completion[row, seq - k:] = 1
        per_token[row, seq - 1 - k:] = logp / k
    model = lambda **kw: SimpleNamespace(  # noqa: E731
        log_probs=per_token, entropy=torch.zeros_like(per_token), mean_logits=torch.zeros_like(per_token),
        is_top1=torch.zeros_like(per_token, dtype=torch.bool))
    model.training = True
    trainer = object.__new__(DPOTrainer)
    ident = lambda x: x  # noqa: E731
    attrs = dict(model=model, accelerator=SimpleNamespace(device="cpu", gather_for_metrics=ident, gather=ident),
                 aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                 loss_types=list(loss_types), loss_weights=list(loss_weights), beta=beta, use_weighting=False,
                 label_smoothing=0.0, _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                 _total_train_tokens=0, _tp_size=1)
    for k, v in attrs.items():
        object.__setattr__(trainer, k, v)
    inputs = {"input_ids": torch.zeros(2 * n, seq, dtype=torch.long), "attention_mask": torch.ones(2 * n, seq),
              "completion_mask": completion, "ref_chosen_logps": torch.tensor(rc, dtype=torch.float64),
              "ref_rejected_logps": torch.tensor(rr, dtype=torch.float64)}
    return trainer._compute_loss(model, inputs, return_outputs=False), trainer._metrics["train"]


def test_loss_equals_trl_dpo_loss():
    # trl is pinned in the dev extra (pyproject), so CI runs this; no skip when TRL's internals move: then the
    # comparison must be rewritten, not silently dropped.
    import trl

    assert trl.__version__ == "1.16.0", trl.__version__
    trl_loss, trl_metrics = _trl_loss(0.1, *LOGPS)
    pc, pr, rc, rr = (torch.tensor(x, dtype=torch.float64) for x in LOGPS)
    losses, margins = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert float(trl_loss) == pytest.approx(float(losses.mean()), abs=1e-12)
    assert trl_metrics["rewards/margins"][-1] == pytest.approx(float(margins.mean()), abs=1e-12)


def test_dpo_plus_sft_equals_trls_sigmoid_and_sft_loss_types():
    """adapt.sft_weight: TRL's loss_types ["sigmoid", "sft"] with loss_weights [1, w], the SFT term a token mean over
    the batch's chosen completions (of different lengths here, so a mean of per-pair means would differ)."""
    lengths = [3, 7, 12, 5, 9, 4]
    pc, pr, rc, rr = (torch.tensor(x, dtype=torch.float64) for x in LOGPS)
    ours = dpo_sft_loss(pc, pr, rc, rr, torch.tensor(lengths[:3], dtype=torch.float64), beta=0.1, sft_weight=0.7)
    trl_loss, _ = _trl_loss(0.1, *LOGPS, lengths=lengths, loss_types=("sigmoid", "sft"), loss_weights=(1.0, 0.7))
    assert float(ours) == pytest.approx(float(trl_loss), abs=1e-12)
    per_pair_means = dpo_loss(pc, pr, rc, rr, 0.1)[0].mean() + 0.7 * (-pc / torch.tensor(lengths[:3])).mean()
    assert abs(float(ours) - float(per_pair_means)) > 1e-3


def test_config_checks_and_defaults():
    c = AdaptConfig()
    assert (c.layer, c.beta, c.learning_rate, c.steps, c.scale_after_training) == (22, 0.1, 1e-3, 10, 1.5)
    with pytest.raises(ConfigError, match=r"adapt.beta=0"):
        AdaptConfig(beta=0)
    with pytest.raises(ConfigError, match=r"adapt.optimizer='lion'"):
        AdaptConfig(optimizer="lion")
    with pytest.raises(ConfigError, match=r"adapt.layer=0"):
        AdaptConfig(layer=0)
    with pytest.raises(ConfigError, match="init_std"):
        AdaptConfig(init="normal")


def test_completion_text():
    assert completion_text('{"description": "a cup."}') == '{"description": "a cup."}'
    assert completion_text("a cup.") == '{"description": "a cup."}'


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    yield from one_torch_thread()


def shelf_pairs(ids, with_images=True):
    """Chosen always names the place ("on the shelf"), rejected does not."""
    return [PreferencePair(window_prompt(i, 2, with_images), completion_text(f"I saw the {OBJECTS[i]} on the shelf."),
                           completion_text(f"I saw the {OBJECTS[i]}."), i) for i in ids]


@pytest.fixture(scope="module")
def policy(request, tmp_path_factory):
    from edge_agent.adapt.frozen_model import FrozenQwen3VL

    torch.manual_seed(0)
    return FrozenQwen3VL(hf_dir(request, tmp_path_factory), layer=22)


@pytest.fixture(scope="module")
def prepared(policy):
    return prepare_pairs(policy, shelf_pairs(range(10)))


def test_cached_reference_equals_full_forward(policy, prepared):
    for p in prepared[:3]:
        for li, ref in ((p.chosen, p.ref_chosen), (p.rejected, p.ref_rejected)):
            assert li.ref_logp == pytest.approx(ref, rel=1e-5)
    enc = policy.encode(window_prompt(0, 2), completion_text("I saw the red cup on the shelf."))
    v = torch.randn(policy.hidden_size, generator=torch.Generator().manual_seed(1))
    li = policy.layer_inputs(enc)
    with torch.no_grad():
        assert float(policy.steered_logp(li, v)) == pytest.approx(float(policy.full_logp(enc, v)), rel=1e-5)


def test_cached_gradient_equals_full_forward_gradient(policy, prepared):
    """The vector's gradient through cached layer-L inputs equals the one through the whole model."""
    pairs = shelf_pairs(range(3))
    v0 = (0.3 * torch.randn(policy.hidden_size, generator=torch.Generator().manual_seed(2))).numpy()
    _, g_cached = vector_gradient(policy, prepared[:3], v0, beta=0.1)

    v = torch.tensor(v0, requires_grad=True)
    for p, prep in zip(pairs, prepared[:3]):
        pc = policy.full_logp(policy.encode(p.messages, p.chosen), v)
        pr = policy.full_logp(policy.encode(p.messages, p.rejected), v)
        losses, _ = dpo_loss(pc[None], pr[None], torch.tensor([prep.ref_chosen]), torch.tensor([prep.ref_rejected]),
                             0.1)
        (losses[0] / 3).backward()
    g_full = v.grad.numpy()
    assert np.abs(g_full).max() > 0
    rel = np.linalg.norm(g_cached - g_full) / np.linalg.norm(g_full)
    assert rel < 1e-5, rel


def test_cache_with_deepstack_layers(request, tmp_path_factory):
    """With L inside the DeepStack range (tiny model: layers 0 and 1) the tail re-adds the visual features."""
    from edge_agent.adapt.frozen_model import FrozenQwen3VL

    pol = FrozenQwen3VL(hf_dir(request, tmp_path_factory), layer=1)
    enc = pol.encode(window_prompt(3, 3), completion_text("I saw the keys on the shelf."))
    li = pol.layer_inputs(enc)
    assert [i for i, _, _ in li.deepstack] == [1]
    v = torch.randn(pol.hidden_size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert float(pol.steered_logp(li, None)) == pytest.approx(li.ref_logp, rel=1e-6)
        assert float(pol.steered_logp(li, v)) == pytest.approx(float(pol.full_logp(enc, v)), rel=1e-5)


def test_training_moves_only_the_vector_and_lowers_the_loss(policy, prepared):
    before = policy.weights_fingerprint()
    cfg = AdaptConfig(steps=10)  # paper defaults: beta 0.1, lr 1e-3, 10 steps, x1.5
    res = train_vector(policy, prepared[:6], cfg, base_model_hash="h")
    after = policy.weights_fingerprint()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "a model weight changed"
    assert all(not p.requires_grad for p in policy.model.parameters())
    assert np.abs(res.raw).max() > 0, "the vector did not move"
    assert res.losses[0] == pytest.approx(math.log(2), abs=1e-6)  # vector zero = reference
    assert res.losses[-1] < res.losses[0] - 1e-3
    np.testing.assert_allclose(res.vector.vector, 1.5 * res.raw, rtol=1e-6)
    assert (res.vector.scale, res.vector.layer, res.vector.base_model_hash) == (1.0, 22, "h")


def test_heldout_preference_accuracy_and_logratio_rise(policy, prepared):
    """Chosen always names the place: a vector trained on 6 windows generalises to 4 unseen ones."""
    train, hold = prepared[:6], prepared[6:]
    res = train_vector(policy, train, AdaptConfig(steps=10))
    base = evaluate(policy, hold, None, 0.1)
    new = evaluate(policy, hold, res.vector.applied(), 0.1)
    assert base.accuracy == 0.5 and base.mean_margin == 0.0  # the zero vector ties every pair
    assert new.accuracy > base.accuracy
    assert new.accuracy == 1.0
    assert new.mean_logratio > base.mean_logratio
    assert new.mean_margin > 0


def test_sft_weight_trains_on_dpo_plus_sft_and_keeps_the_chosen_replies_likely(policy, prepared):
    """Step 0's accumulated loss is dpo_sft_loss of the batch; with the SFT term the chosen replies end likelier
    than with DPO alone (same lr and steps), while the held-out pairs are still ordered."""
    train, hold = prepared[:6], prepared[6:]
    chosen = torch.tensor([p.ref_chosen for p in train], dtype=torch.float64)
    rejected = torch.tensor([p.ref_rejected for p in train], dtype=torch.float64)
    tokens = torch.tensor([len(p.chosen.targets) for p in train], dtype=torch.float64)
    want = float(dpo_sft_loss(chosen, rejected, chosen, rejected, tokens, 0.1, 2.0))
    cfg = dict(steps=10, learning_rate=5e-2)
    with_sft = train_vector(policy, train, AdaptConfig(sft_weight=2.0, **cfg))
    dpo_only = train_vector(policy, train, AdaptConfig(**cfg))
    assert with_sft.losses[0] == pytest.approx(want, rel=1e-5) and want > math.log(2) + 0.1
    assert with_sft.losses[-1] < with_sft.losses[0]

    def chosen_logp(res):
        with torch.no_grad():
            v = torch.as_tensor(res.vector.applied())
            return sum(float(policy.steered_logp(p.chosen, v)) for p in hold)

    assert chosen_logp(with_sft) > chosen_logp(dpo_only) + 0.1
    assert evaluate(policy, hold, with_sft.vector.applied(), 0.1).accuracy > 0.5


def test_wrong_layer_and_empty_set(policy, prepared):
    with pytest.raises(AdapterError, match="no training pairs"):
        train_vector(policy, [], AdaptConfig())
    with pytest.raises(AdapterError, match="adapt.layer=5"):
        train_vector(policy, prepared[:1], AdaptConfig(layer=5))
