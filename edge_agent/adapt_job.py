"""`edge-agent adapt`: wires the deployed model, the writer and the store into one Phase Two run (adapt.run_adapt)."""

from __future__ import annotations

from typing import Any, Callable

from edge_agent.config import Config
from edge_agent.errors import ModelError
from edge_agent.store import Store


def run_adapt_job(cfg: Config, progress: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Candidates for asked-about segments -> reward -> pairs -> DPO -> gate -> registry. Returns the summary."""
    from edge_agent.adapt.loop import run_adapt
    from edge_agent.adapt.pairs import holdout_segment_ids
    from edge_agent.adapt.reward import RewardConfig
    from edge_agent.models import resolve
    from edge_agent.runtime import (asked_segment_ids, fill_candidates, format_compliance, kept_window_messages,
                                    open_backend, open_embedder)

    model = resolve(cfg.model.name, cfg.home)
    if model.hf_dir is None or not model.hf_dir.is_dir():
        raise ModelError(f"model {model.name!r}: Phase Two trains against the full-precision Hugging Face "
                         f"checkpoint, and none is installed beside {model.model_path}")
    store = Store.open(cfg.db_path)
    backend = open_backend(cfg)
    try:
        backend.set_steering(None)  # the judge and the candidates come from the reference (Phase One) policy
        added = fill_candidates(store, backend, cfg, asked_segment_ids(store))
        if progress:
            progress("candidates", {"added": added})
        summary = run_adapt(
            store, cfg, model.hf_dir, backend, open_embedder(cfg),
            format_compliance(store, backend, cfg, holdout_segment_ids(store)), progress,
            prompt_fn=lambda st, sid: kept_window_messages(st, sid, cfg.writer.window_segments),
            reward_cfg=RewardConfig(rule=cfg.adapt.reward_rule), base_model_hash=backend.model_hash)
    finally:
        backend.close()
    summary["candidates_added"] = added
    return summary
