"""Why does (or doesn't) a Phase Two vector learn? Replays one night's adapt on a home snapshot, then trains variants.

    .venv/bin/python tools/phase_two_pairs.py --home /tmp/ea_phase_two/snapshots/wearer_A_night2 \
        --home /tmp/ea_phase_two/snapshots/wearer_B_night2 --out /tmp/pairs.json

The snapshots come from `tools/experiment_phase_two.py run --snapshots` (each wearer's home just before a night's
`adapt`, frames still kept). For every home, on a copy of it, the product's own steps make the night's pairs:
candidates sampled by the deployed llama.cpp model, the task-relevance reward (judge, then embedding fallback), the
stored split. Then, from one set of prepared pairs, every variant trains a vector (`edge_agent.adapt.dpo`) and is
scored as the gate scores it: held-out preference accuracy and its binomial p-value vs the zero vector.

What it reports, per home: what the pairs differ in (the kinds of fact each memory names, FACT_WORDS of the
experiment), the gradient at zero split into its DPO and SFT parts, and per variant train / held-out accuracy and
p; across homes, the cosine between the wearers' vectors of the same variant (a vector that is the same for every
wearer is not learning the wearer).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from experiment_phase_two import FACT_WORDS  # noqa: E402

# name -> (AdaptConfig overrides, pair filter). Filters: "all"; "gap<x>" (the reward's relevance gap at least x, as
# `adapt.reward.min_relevance_gap` would keep them); "kinds" (the two memories name different kinds of fact);
# "words<n>" (the two memories' word sets differ in at least n words: not a swap of one name for another).
# The product's recipe is configs/phase_two/product.toml.
PRODUCT = {"learning_rate": 1e-2, "steps": 50, "sft_weight": 1.0}
DPO_ONLY = {"learning_rate": 1e-2, "steps": 50, "sft_weight": 0.0}
VARIANTS = {
    "paper": ({"learning_rate": 1e-3, "steps": 10, "sft_weight": 0.0}, "all"),
    "product": (PRODUCT, "all"),
    "dpo_only": (DPO_ONLY, "all"),
    "product_gap0.02": (PRODUCT, "gap0.02"),
    "product_gap0.04": (PRODUCT, "gap0.04"),
    "product_gap0.06": (PRODUCT, "gap0.06"),
    "dpo_only_gap0.04": (DPO_ONLY, "gap0.04"),
    "product_kinds": (PRODUCT, "kinds"),
    "product_words4": (PRODUCT, "words4"),
    "dpo_only_words4": (DPO_ONLY, "words4"),
    "dpo_only_kinds": (DPO_ONLY, "kinds"),
}


def description(completion: str) -> str:
    """The memory text of a completion (the writer's JSON reply; a malformed one as it is)."""
    try:
        return str(json.loads(completion).get("description", completion))
    except (ValueError, AttributeError):
        return completion


def kinds(completion: str) -> frozenset[str]:
    """The kinds of fact a memory names (object, colour, person, room, text)."""
    text = description(completion)
    return frozenset(k for k, rx in FACT_WORDS.items() if re.search(rx, text, re.I))


def words(completion: str) -> set[str]:
    """The words (and face tokens) of a memory, lower-cased."""
    return set(re.findall(r"<face_\d+>|\w+", description(completion).lower()))


def night_pairs(home: Path, work: Path):
    """The night's pairs as `edge-agent adapt` makes them, on a copy of `home`. Returns (cfg, hf_dir, train, hold,
    stored pair rows by id, the reward's stats)."""
    from edge_agent.adapt.job import asked_segment_ids, fill_candidates
    from edge_agent.adapt.pairs import judge_new_pairs, preference_pairs, store_pairs
    from edge_agent.adapt.reward import RelevanceReward, task_distribution
    from edge_agent.config import load_config
    from edge_agent.memory.keep import kept_window_messages
    from edge_agent.models import resolve
    from edge_agent.qa.embed import open_embedder
    from edge_agent.store import Store
    from edge_agent.vlm.factory import open_backend

    copy = work / home.name
    shutil.copytree(home, copy)  # the store records its kept frames relative to the home: the copy finds its own
    cfg = load_config(copy)
    rcfg = cfg.adapt.reward
    with Store.open(cfg.db_path) as store:
        with open_backend(cfg) as backend:
            backend.set_steering(None)
            fill_candidates(store, backend, cfg, asked_segment_ids(store))
            task = task_distribution(store, rcfg)
            reward = RelevanceReward(task, open_embedder(cfg), rcfg, judge=backend if rcfg.rule != "embedding" else None)
            store_pairs(store, judge_new_pairs(store, reward), holdout_share=cfg.adapt.holdout_share,
                        seed=cfg.adapt.seed, window_segments=cfg.writer.window_segments)
        pf = lambda st, sid: kept_window_messages(st, sid, cfg.writer.window_segments)  # noqa: E731
        rows = {r["id"]: r for split in ("train", "holdout") for r in store.pairs(split=split)}
        train, _ = preference_pairs(store, "train", pf)
        hold, _ = preference_pairs(store, "holdout", pf)
    return cfg, resolve(cfg.model.name, cfg.home).hf_dir, train, hold, rows, reward.stats.as_dict()


def describe(pairs, rows) -> dict:
    """What the two memories of each pair differ in."""
    same = sum(kinds(p.chosen) == kinds(p.rejected) for p in pairs)
    gained: dict[str, int] = {}
    for p in pairs:
        for k in kinds(p.chosen) ^ kinds(p.rejected):
            gained[k] = gained.get(k, 0) + (1 if k in kinds(p.chosen) else -1)
    gaps = [float(rows[p.pair_id]["score"]) for p in pairs]
    swaps = sum(len(words(p.chosen) ^ words(p.rejected)) < 4 for p in pairs)
    return {"n": len(pairs), "same_kinds": same, "differ_in_under_4_words": swaps,
            "chosen_minus_rejected_naming": gained,
            "gap_median": float(np.median(gaps)) if gaps else None}


def gradient_parts(policy, prepared, beta: float) -> dict:
    """At vector zero: the DPO gradient and the SFT (chosen NLL per token) gradient, their norms and cosine."""
    import torch

    from edge_agent.adapt.dpo import vector_gradient

    _, g_dpo = vector_gradient(policy, prepared, np.zeros(policy.hidden_size, np.float32), beta)
    v = torch.zeros(policy.hidden_size, requires_grad=True)
    tokens = sum(len(p.chosen.targets) for p in prepared)
    for p in prepared:
        (-policy.steered_logp(p.chosen, v) / tokens).backward()
    g_sft = v.grad.numpy()
    cos = float(g_dpo @ g_sft / (np.linalg.norm(g_dpo) * np.linalg.norm(g_sft) + 1e-12))
    return {"dpo_norm": float(np.linalg.norm(g_dpo)), "sft_norm": float(np.linalg.norm(g_sft)), "cosine": cos}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", action="append", required=True, type=Path, help="a snapshot (repeat for each wearer)")
    ap.add_argument("--out", type=Path, required=True, help="JSON report")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    args = ap.parse_args()

    import torch

    from edge_agent.adapt.dpo import evaluate, prepare_pairs, train_vector
    from edge_agent.adapt.frozen_model import FrozenQwen3VL
    from edge_agent.adapt.gate import p_value

    torch.set_num_threads(1)
    def keep(filt: str, p, rows) -> bool:
        if filt.startswith("gap"):
            return float(rows[p.pair_id]["score"]) >= float(filt[3:])
        if filt.startswith("words"):
            return len(words(p.chosen) ^ words(p.rejected)) >= int(filt[5:])
        return filt == "all" or kinds(p.chosen) != kinds(p.rejected)

    report: dict = {"homes": {}, "cosine": {}}
    vectors: dict[str, dict[str, np.ndarray]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for home in args.home:
            t0 = time.perf_counter()
            cfg, hf_dir, train, hold, rows, reward_stats = night_pairs(home, Path(tmp))
            policy = FrozenQwen3VL(hf_dir, cfg.adapt.layer)
            prep = {p.pair_id: q for p, q in zip(train + hold, prepare_pairs(policy, train + hold))}
            info = {"reward": reward_stats, "train": describe(train, rows), "holdout": describe(hold, rows),
                    "gradient_at_zero": gradient_parts(policy, [prep[p.pair_id] for p in train], cfg.adapt.beta),
                    "variants": {}}
            print(home.name, json.dumps({k: info[k] for k in ("train", "holdout", "gradient_at_zero")}), flush=True)
            for name in args.variants.split(","):
                overrides, filt = VARIANTS[name]
                dcfg = dataclasses.replace(cfg.adapt, **overrides)
                tr = [prep[p.pair_id] for p in train if keep(filt, p, rows)]
                ho_all = [prep[p.pair_id] for p in hold]
                ho = [prep[p.pair_id] for p in hold if keep(filt, p, rows)]
                if len(tr) < 2 or not ho:
                    info["variants"][name] = {"skipped": f"{len(tr)} train / {len(ho)} held-out pairs"}
                    continue
                res = train_vector(policy, tr, dcfg)
                applied = res.vector.vector
                e_tr, e_all, e_f = (evaluate(policy, x, applied, dcfg.beta) for x in (tr, ho_all, ho))
                info["variants"][name] = {
                    "config": {**overrides, "filter": filt}, "train_n": e_tr.n, "train_acc": e_tr.accuracy,
                    "holdout_n": e_all.n, "holdout_acc": e_all.accuracy,
                    "holdout_p": p_value(e_all.n, e_all.accuracy, 0.5),
                    "filtered_holdout_n": e_f.n, "filtered_holdout_acc": e_f.accuracy,
                    "filtered_holdout_p": p_value(e_f.n, e_f.accuracy, 0.5),
                    "loss_first": res.losses[0], "loss_last": res.losses[-1],
                    "applied_norm": float(np.linalg.norm(applied))}
                vectors.setdefault(name, {})[home.name] = applied
                print(f"  {name:16s} " + json.dumps({k: round(v, 3) if isinstance(v, float) else v
                                                     for k, v in info["variants"][name].items() if k != "config"}),
                      flush=True)
            info["seconds"] = round(time.perf_counter() - t0, 1)
            report["homes"][home.name] = info
    for name, by_home in vectors.items():
        names = sorted(by_home)
        report["cosine"][name] = {f"{a}~{b}": float(by_home[a] @ by_home[b] / (np.linalg.norm(by_home[a]) *
                                                                               np.linalg.norm(by_home[b])))
                                  for i, a in enumerate(names) for b in names[i + 1:]}
    args.out.write_text(json.dumps(report, indent=1))
    print(json.dumps(report["cosine"], indent=1))


if __name__ == "__main__":
    main()
