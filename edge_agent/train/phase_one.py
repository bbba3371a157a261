"""Phase One: GSPO training of the memory writer with TRL's GRPOTrainer, then export to a device model folder.

    run_phase_one(config_path, output=None, progress=None) -> summary dict

The run, top to bottom (OUTPUT defaults to ./runs/phase-one-<config stem>):

1. base model: a Hugging Face Qwen3-VL folder, or the seeded tiny model built into OUTPUT/base/;
2. windows: every 10 s segment of the configured videos / synthetic clips with its k-1 earlier segments and their
   reference memories (data.py), saved as a `datasets` dataset (OUTPUT/windows), built once by the main process;
3. GSPO: GRPOTrainer with importance_sampling_level="sequence", beta 0, epsilon 3e-4 / epsilon_high 4e-4,
   8 rollouts per window, lr 1e-6 (config defaults), the paper's rewards (rewards.py) as separate reward functions
   combined by reward_weights, the judge of [judge]; checkpoints in OUTPUT/checkpoints, resumed automatically;
4. OUTPUT/hf: the trained checkpoint (weights + the base's tokenizer, chat template and preprocessor files);
5. export: OUTPUT/model/ with model.gguf (quantized, imatrix from calibration/), mmproj.gguf and hf/.

Distributed: run the same entry under `accelerate launch --config_file configs/accelerate/<file>.yaml`; TRL and
accelerate do the rest (DDP, DeepSpeed ZeRO-2/3 from the shipped files). Only the main process builds the
dataset, saves the final checkpoint and exports.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edge_agent.errors import ConfigError, DataError, ModelError
from edge_agent.train.config import PhaseOneConfig, load

Progress = Callable[[str, int, int], None]


def default_output(config_path: Path) -> Path:
    return Path("runs") / f"phase-one-{Path(config_path).stem}"


def _base_checkpoint(cfg: PhaseOneConfig, out: Path, progress: Progress | None) -> Path:
    """The HF folder training starts from (building the tiny model when asked)."""
    if cfg.model.base == "tiny":
        base = out / "base"
        if not (base / "READY").is_file():
            from edge_agent.export import make_tiny

            make_tiny(base, cfg.model.tiny_seed, progress=progress)
            (base / "READY").write_text("tiny\n")
        return base / "hf"
    hf = cfg.path(cfg.model.base)
    if not (hf / "config.json").is_file():
        raise ConfigError(f"model.base={cfg.model.base!r}: {str(hf)!r} is not a Hugging Face checkpoint folder "
                          "(no config.json); download one, e.g. `hf download Qwen/Qwen3-VL-2B-Instruct --local-dir DIR`")
    return hf


def _grpo_args(cfg: PhaseOneConfig, out: Path, reward_weights: list[float]):
    from trl import GRPOConfig

    g = cfg.gspo
    kwargs: dict[str, Any] = dict(
        output_dir=str(out / "checkpoints"),
        # GSPO = GRPO with a sequence-level importance ratio, no KL term, and tight clipping.
        importance_sampling_level="sequence", beta=g.beta, epsilon=g.epsilon, epsilon_high=g.epsilon_high,
        loss_type=g.loss_type, num_generations=g.num_generations, learning_rate=g.learning_rate,
        max_steps=g.max_steps, per_device_train_batch_size=g.per_device_train_batch_size,
        gradient_accumulation_steps=g.gradient_accumulation_steps, max_completion_length=g.max_completion_length,
        temperature=g.temperature, top_p=g.top_p, top_k=g.top_k, seed=g.seed, data_seed=g.seed,
        logging_steps=g.logging_steps, save_steps=g.save_steps,
        save_total_limit=g.save_total_limit or None, reward_weights=reward_weights,
        use_cpu=g.use_cpu, bf16=g.bf16, report_to=list(g.report_to) or "none",
        remove_unused_columns=False,  # the reward functions read window_id, events, prior_memories...
        gradient_checkpointing=cfg.model.gradient_checkpointing, dataloader_num_workers=0,
        use_vllm=g.use_vllm, log_completions=False, disable_tqdm=True,
    )
    if g.use_vllm:
        kwargs["vllm_mode"] = g.vllm_mode
    return GRPOConfig(**kwargs)


def _trainer_class():
    """GRPOTrainer that counts a prompt's image chunks by its <|vision_start|> tokens.

    TRL slices pixel_values / image_grid_thw per sample by the number of images in the sample; with frames
    paired into temporal patches a prompt has fewer chunks (grid rows) than frames, so the count TRL passes is
    replaced by the chunk count read from the prompt's tokens.
    """
    from trl import GRPOTrainer

    class WriterGRPOTrainer(GRPOTrainer):
        def _chunks(self, prompt_ids):
            return (prompt_ids == self._vision_start_id).sum(dim=1).tolist()

        def _generate_and_score_completions(self, inputs):
            output = super()._generate_and_score_completions(inputs)
            if output.get("num_images") is not None and output.get("image_grid_thw") is not None:
                output["num_images"] = self._chunks(output["prompt_ids"])
            return output

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **kwargs):
            if kwargs.get("image_grid_thw") is not None:
                kwargs["num_images"] = self._chunks(input_ids[:, : input_ids.shape[1] - logits_to_keep])
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **kwargs)

    return WriterGRPOTrainer


def _resume_point(cfg: PhaseOneConfig, out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    r = cfg.gspo.resume
    if r == "never":
        return None
    ckpts = out / "checkpoints"
    if r == "auto":
        return get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
    p = cfg.path(r)
    if not (p / "trainer_state.json").is_file():
        raise ConfigError(f"gspo.resume={r!r}: {str(p)!r} is not a trainer checkpoint (no trainer_state.json)")
    return str(p)


def _watch(model, k: int = 6) -> dict[str, Any]:
    """Copies of a few trainable tensors (first, last, and some between) to tell afterwards whether weights moved."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        return {}
    idx = sorted({round(i * (len(named) - 1) / max(1, k - 1)) for i in range(k)})
    return {named[i][0]: named[i][1].detach().float().cpu().clone() for i in idx}


def _reward_history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    rows = []
    for entry in log_history:
        if "reward" in entry:
            rows.append({k: float(v) for k, v in entry.items()
                         if k in ("step", "reward", "reward_std", "loss", "grad_norm", "learning_rate", "entropy") or k.startswith("rewards/")})
    return rows


def _no_telemetry() -> None:
    """TRL's trainers report usage to huggingface.co; an offline training run of private video sends nothing.
    HF_HUB_DISABLE_TELEMETRY=0 in the environment keeps it on."""
    if os.environ.get("HF_HUB_DISABLE_TELEMETRY", "1") in ("0", "false", "False"):
        return
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"  # for processes started from here (dataloader workers)
    from huggingface_hub import constants

    constants.HF_HUB_DISABLE_TELEMETRY = True  # read at call time; the import may have happened already


def train(cfg: PhaseOneConfig, out: Path, *, reward_funcs: Sequence[Callable] | None = None,
          reward_weights: Sequence[float] | None = None, progress: Progress | None = None,
          export: bool | None = None) -> dict[str, Any]:
    """The whole run for a loaded config. `reward_funcs` (with `reward_weights`) replace the paper's rewards
    (tests use a toy reward); everything else is as run_phase_one."""
    import torch
    from accelerate import PartialState
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration, Qwen3VLMoeForConditionalGeneration

    from edge_agent.export.moe_export import is_moe_checkpoint
    from edge_agent.train.data import build_windows
    from edge_agent.train.judges import make_judge
    from edge_agent.train.processor import make_processor
    from edge_agent.train.rewards import RewardSet

    started = time.time()
    _no_telemetry()
    state = PartialState(cpu=cfg.gspo.use_cpu)
    out.mkdir(parents=True, exist_ok=True)
    with state.main_process_first():  # one process builds the tiny model and the dataset, the others reuse them
        base_hf = _base_checkpoint(cfg, out, progress if state.is_main_process else None)
        windows = build_windows(cfg, out, progress if state.is_main_process else None)
    if len(windows) == 0:
        raise DataError("the windows dataset is empty")

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.model.dtype]
    try:
        model_cls = Qwen3VLMoeForConditionalGeneration if is_moe_checkpoint(base_hf) else Qwen3VLForConditionalGeneration
        model = model_cls.from_pretrained(base_hf, dtype=dtype, attn_implementation=cfg.model.attn_implementation)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"model.base={str(base_hf)!r}: cannot load as Qwen3-VL ({e})") from None
    tokenizer = AutoTokenizer.from_pretrained(base_hf)
    processor = make_processor(base_hf, tokenizer)

    if reward_funcs is None:
        judge = make_judge(cfg.judge, cfg.path(cfg.judge.cache_dir) if cfg.judge.cache_dir else out / "judge_cache")

        def count_tokens(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])

        rewards = RewardSet(judge, cfg.rewards, count_tokens)
        reward_funcs, reward_weights = rewards.funcs, rewards.weights
    weights = list(reward_weights) if reward_weights is not None else [1.0] * len(reward_funcs)

    if cfg.gspo.use_vllm:
        import logging

        logging.getLogger(__name__).warning(
            "gspo.use_vllm: vLLM tokenizes images itself; the writer's prompts pair consecutive frames into one "
            "temporal patch, which vLLM's Qwen3-VL processor does not do. Check rollouts match (or set "
            "data.keyframes_per_segment = 1) before a long run.")
    args = _grpo_args(cfg, out, weights)
    trainer_cls = _trainer_class()
    trainer = trainer_cls(model=model, reward_funcs=list(reward_funcs), args=args, train_dataset=windows,
                          processing_class=processor)
    trainer._vision_start_id = processor.encoder.vision_start
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every log dict to stdout; the summary carries them

    watched = _watch(model)
    resume = _resume_point(cfg, out)
    result = trainer.train(resume_from_checkpoint=resume)
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    now = dict(unwrapped.named_parameters())
    # Under ZeRO-3 a rank holds only a shard (other shape): nothing to compare there.
    moved = {n: bool(not torch.equal(t, now[n].detach().float().cpu())) for n, t in watched.items()
             if tuple(now[n].shape) == tuple(t.shape)}

    summary: dict[str, Any] = {
        "output": str(out), "base": str(base_hf), "windows": len(windows),
        "steps": int(trainer.state.global_step), "resumed_from": resume,
        "train_loss": float(result.training_loss) if result.training_loss is not None else None,
        "rewards": _reward_history(trainer.state.log_history),
        "weights_changed": any(moved.values()) if moved else None,
        "watched_tensors_changed": sum(moved.values()), "watched_tensors": len(moved),
        "processes": state.num_processes,
    }
    trainer.accelerator.wait_for_everyone()
    if state.is_main_process:
        final = out / "hf"
        full_state = trainer.accelerator.get_state_dict(trainer.model)  # gathers ZeRO-3 shards
        _save_final_state(unwrapped, full_state, base_hf, final)
        summary["checkpoint"] = str(final)
        do_export = cfg.export.enabled if export is None else export
        if do_export:
            from edge_agent.train.export import export_checkpoint

            calib = cfg.path(cfg.export.calibration) if cfg.export.calibration else None
            summary["export"] = export_checkpoint(final, out / "model", cfg.export, calibration=calib,
                                                  name=f"edge-agent-phase-one-{out.name}", progress=progress)
        summary["seconds"] = round(time.time() - started, 1)
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    else:
        trainer.accelerator.get_state_dict(trainer.model)  # every rank takes part in a ZeRO-3 gather
    trainer.accelerator.wait_for_everyone()
    return summary


def _save_final_state(model, state_dict, base_hf: Path, dst: Path) -> None:
    """The trained weights + everything else the base checkpoint folder had (tokenizer, templates, preprocessor)."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    for p in base_hf.iterdir():
        if p.is_file() and not p.name.endswith(".safetensors") and p.name not in (
                "config.json", "generation_config.json", "model.safetensors.index.json") and not (tmp / p.name).exists():
            shutil.copy2(p, tmp / p.name)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)


def run_phase_one(config_path: Path, output: Path | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Run Phase One from a TOML config: windows -> GSPO -> checkpoint -> export (see the module docstring).

    output: the run folder (default ./runs/phase-one-<config stem>); re-running continues from its checkpoints.
    progress(stage, done, total): optional callback (tiny-model build, clips, windows, export stages).
    Returns a summary (steps, reward history, whether the weights changed, exported files).
    Raises ConfigError for a bad config, DataError for unusable data, ModelError for an unusable checkpoint.
    """
    cfg = load(config_path)
    out = Path(output) if output is not None else default_output(Path(config_path))
    return train(cfg, out, progress=progress)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m edge_agent.train.phase_one --config FILE [--output DIR]`: the same run without the CLI, for
    `accelerate launch -m edge_agent.train.phase_one ...`. Prints the summary as JSON on the main process."""
    import argparse
    import sys

    from edge_agent.errors import EdgeAgentError

    ap = argparse.ArgumentParser(prog="python -m edge_agent.train.phase_one", description=run_phase_one.__doc__)
    ap.add_argument("--config", required=True, type=Path, help="Phase One TOML file")
    ap.add_argument("--output", type=Path, default=None, help="run folder (default ./runs/phase-one-<stem>)")
    ns = ap.parse_args(argv)
    try:
        summary = run_phase_one(ns.config, ns.output)
    except EdgeAgentError as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 1)
    if "seconds" in summary:  # the main process
        print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
