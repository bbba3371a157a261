"""Phase Two end to end: feedback -> task-relevance reward -> pairs -> DPO on the vector -> gate -> registry.

Owns `run_adapt`, Phase Two from stored feedback to a registered adapter (`job.py` calls it). It runs in its
own process beside capture; the writer notices the newly active adapter through the store.

Order of work (each stage reports through `progress(stage, info)`):
  frames   delete kept keyframes past their expiry
  reward   judge candidate pairs not compared before (both orderings), store kept pairs with their split
  prepare  rebuild each stored pair's prompt (pairs whose frames are gone are skipped), cache layer-L inputs
  train    DPO on the vector (init: the active adapter's trained vector if it fits, else zeros)
  gate     held-out preference accuracy and format compliance vs the active adapter (or the base model)
  register write the adapter files and row: active if the gate accepts, else rejected with the reason
  cleanup  delete the kept keyframes of the windows used (they are only kept for training)
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_agent.adapt.dpo import evaluate, prepare_pairs, train_vector
from edge_agent.adapt.gate import ComplianceFn, decide
from edge_agent.adapt.pairs import PromptFn, judge_new_pairs, preference_pairs, store_pairs
from edge_agent.adapt.registry import AdapterRegistry
from edge_agent.adapt.reward import RelevanceReward, task_distribution
from edge_agent.config import Config
from edge_agent.memory.keep import kept_window_messages
from edge_agent.types import SteeringVector
from edge_agent.vlm.base import Backend

Progress = Callable[[str, dict[str, Any]], None]

def _fits(row: dict[str, Any] | None, vec: SteeringVector | None, layer: int, hidden: int, model_hash: str) -> bool:
    return (row is not None and vec is not None and vec.layer == layer and vec.hidden_size == hidden
            and (not model_hash or vec.base_model_hash == model_hash))


def run_adapt(store: Any, cfg: Config, hf_dir: str | Path, backend_for_judge: Backend | None, embedder: Any,
              compliance_fn: ComplianceFn | None, progress: Progress | None = None, *,
              prompt_fn: PromptFn | None = None,
              base_model_hash: str | None = None, init_from_active: bool = True,
              delete_used_frames: bool = True, now: float | None = None,
              release_backend: Callable[[], None] | None = None) -> dict[str, Any]:
    """Run Phase Two once. Returns a summary dict (JSON-serialisable) with `status` one of
    "activated", "rejected", "skipped" and a one-line `reason`.

    backend_for_judge: the deployed model through the Backend protocol (judge of "which memory is more
      useful"), ideally with no steering applied; None only with reward rule "embedding".
    embedder: `.embed(texts)` or `.encode(texts)` -> (n, d), e.g. `qa.embed.MiniLM`.
    compliance_fn: `f(SteeringVector | None) -> float`, share of held-out windows where the writer's reply
      passes format validation with that vector (None = base model).
    base_model_hash: hash of the full-precision checkpoint the deployed GGUF came from; defaults to
      `backend_for_judge.model_hash`. Stored on the adapter; backends refuse adapters of another model.
    release_backend: called once the judge is done, before the checkpoint loads (the llama.cpp model frees its
      memory while training; `compliance_fn` reopens it if it needs it).
    """
    start = time.perf_counter()
    say = progress or (lambda stage, info: None)
    rcfg, dcfg, gcfg = cfg.adapt.reward, cfg.adapt, cfg.adapt.gate
    pf = prompt_fn or (lambda st, sid: kept_window_messages(st, sid, cfg.writer.window_segments))
    model_hash = base_model_hash if base_model_hash is not None else getattr(backend_for_judge, "model_hash", "")
    registry = AdapterRegistry(store, cfg.adapters_dir)
    summary: dict[str, Any] = {"status": "skipped", "reason": "", "adapter_id": None,
                               "active_adapter_id": (store.active_adapter() or {}).get("id")}

    # frames: expired keyframes go first (privacy: they are kept only for a bounded time)
    summary["expired_frames_deleted"] = store.expire_kept_frames(now)
    say("frames", {"deleted": summary["expired_frames_deleted"]})

    # reward -> pairs
    task = task_distribution(store, rcfg)
    reward = RelevanceReward(task, embedder, rcfg, judge=backend_for_judge if rcfg.rule != "embedding" else None)
    judged = judge_new_pairs(store, reward, progress=say)
    new_ids = store_pairs(store, judged, holdout_share=cfg.adapt.holdout_share, seed=cfg.adapt.seed,
                          window_segments=cfg.writer.window_segments)
    summary["questions"] = len(task.questions)
    summary["reward"] = reward.stats.as_dict()
    summary["new_pairs"] = len(new_ids)

    train_rows, hold_rows = store.pairs(split="train"), store.pairs(split="holdout")
    train, train_skipped = preference_pairs(store, "train", pf, train_rows)
    hold, hold_skipped = preference_pairs(store, "holdout", pf, hold_rows)
    summary["pairs"] = {"train": len(train), "holdout": len(hold),
                        "skipped_no_frames": len(train_skipped) + len(hold_skipped)}
    n = len(train) + len(hold)
    if n < cfg.adapt.min_pairs or not train or not hold:
        summary["reason"] = (f"{len(train)} train + {len(hold)} held-out pairs with frames: need at least "
                             f"{cfg.adapt.min_pairs} in all and one on each side")
        summary["seconds"] = time.perf_counter() - start
        say("done", summary)
        return summary

    # train
    import torch

    from edge_agent.adapt.frozen_model import FrozenQwen3VL

    from edge_agent.adapt.fit import plan

    if release_backend is not None:
        release_backend()
    fit = plan(hf_dir, dcfg.dtype)  # ModelError naming the need and what is free, before anything loads
    summary["fit"] = fit.as_dict()
    say("train", {"loading": str(hf_dir), **fit.as_dict()})
    policy = FrozenQwen3VL(hf_dir, dcfg.layer, dtype=getattr(torch, fit.dtype))
    active_row = store.active_adapter()
    active_vec = registry.active_vector() if active_row else None
    baseline_fits = _fits(active_row, active_vec, dcfg.layer, policy.hidden_size, model_hash)
    init = None
    if init_from_active and baseline_fits:
        assert active_vec is not None and active_row is not None
        # adapters store the deployed vector (x scale_after_training); continue from the trained one
        init = active_vec.applied() / float(active_row.get("scale_after_training") or 1.0)
    prep_train = prepare_pairs(policy, train, progress=say)
    prep_hold = prepare_pairs(policy, hold, progress=say)
    result = train_vector(policy, prep_train, dcfg, init=init, base_model_hash=model_hash, progress=say)

    # gate: the trained vector, then (only when format compliance alone refuses it) shorter ones, same direction
    base_vec = active_vec if baseline_fits else None
    base_eval = evaluate(policy, prep_hold, None if base_vec is None else base_vec.applied(), dcfg.beta)
    baseline = f"adapter {active_row['id']}" if base_vec is not None and active_row else "base model"
    note = "no compliance function"
    base_c = None
    if compliance_fn is not None:
        say("gate", {"measuring": "compliance"})
        raw_base = compliance_fn(base_vec)
        base_c = None if raw_base is None else float(raw_base)
        note = "no held-out window could be rebuilt (their frames are gone)"

    def gate_at(length: float):
        vec = dataclasses.replace(result.vector, vector=(result.vector.vector * length).astype(np.float32))
        held = evaluate(policy, prep_hold, vec.applied(), dcfg.beta)
        raw = compliance_fn(vec) if compliance_fn is not None else None
        comp = None if raw is None else float(raw)
        verdict = decide(new_accuracy=held.accuracy, base_accuracy=base_eval.accuracy, n_holdout=held.n,
                         new_compliance=comp, base_compliance=base_c, cfg=gcfg, baseline=baseline,
                         compliance_note=note)
        return vec, held, comp, verdict

    length = 1.0
    vector, new_eval, new_c, decision = gate_at(length)
    tries = [{"length": length, **decision.metrics, "reason": decision.reason}]
    first_reason = decision.reason
    while decision.failed_on == "compliance" and len(tries) <= gcfg.shrink_steps:
        length /= 2
        say("gate", {"shrinking": length, "because": decision.reason})
        vector, new_eval, new_c, decision = gate_at(length)
        tries.append({"length": length, **decision.metrics, "reason": decision.reason})
    if len(tries) > 1:
        decision.reason = (f"{decision.reason} (at x{length:g} of its trained length; at x1: {first_reason})"
                           if decision.accepted else f"{first_reason}; at x{length:g}: {decision.reason}")
    if compliance_fn is not None:
        counter = getattr(compliance_fn, "n_windows", None)
        summary["compliance_windows"] = counter() if callable(counter) else None
    say("gate", {"accepted": decision.accepted, "reason": decision.reason})

    # register
    used_rows = [r for r in train_rows + hold_rows if r["id"] in {p.pair_id for p in train + hold}]
    feedback_ids = sorted({f for r in used_rows for f in r["feedback_ids"]})
    metrics = {"holdout": new_eval.as_dict(), "holdout_baseline": base_eval.as_dict(),
               "train_final": evaluate(policy, prep_train, vector.applied(), dcfg.beta).as_dict(),
               "gate": {**decision.metrics, "tries": tries}, "training": result.metrics()}
    row = registry.register(
        vector, status="active" if decision.accepted else "rejected", reason=decision.reason,
        pair_ids=[r["id"] for r in used_rows], feedback_ids=feedback_ids, metrics=metrics,
        # `length`: the gate's shrink; the next night continues from this shorter, live vector
        extra={"scale_after_training": dcfg.scale_after_training, "length": length,
               "trained_from": active_row["id"] if init is not None and active_row else None,
               "train_pair_ids": [p.pair_id for p in train],
               "holdout_pair_ids": [p.pair_id for p in hold], "hf_dir": str(hf_dir)})
    say("register", {"adapter_id": row["id"], "status": row["status"]})

    if delete_used_frames:
        segs = sorted({int(r["segment_id"]) for r in used_rows})
        summary["used_frames_deleted"] = store.delete_kept_frames(segment_ids=segs) if segs else 0

    summary.update(status="activated" if decision.accepted else "rejected", reason=decision.reason,
                   adapter_id=row["id"], active_adapter_id=(store.active_adapter() or {}).get("id"),
                   metrics={"holdout_accuracy": new_eval.accuracy, "baseline_accuracy": base_eval.accuracy,
                            "holdout_mean_margin": new_eval.mean_margin,
                            "holdout_logratio_baseline": base_eval.mean_logratio,
                            "holdout_logratio": new_eval.mean_logratio,
                            "loss_first": result.losses[0], "loss_last": result.losses[-1],
                            "compliance": new_c, "baseline_compliance": base_c,
                            "vector_norm": float(np.linalg.norm(vector.vector)), "length": length},
                   seconds=time.perf_counter() - start)
    say("done", summary)
    return summary
