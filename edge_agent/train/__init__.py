"""Phase One, offline: GSPO training of the memory writer (TRL GRPOTrainer, sequence-level importance sampling).

    from edge_agent.train.phase_one import run_phase_one
    summary = run_phase_one(Path("configs/phase_one/tiny.toml"), output=Path("runs/p1"))

Modules: config.py (one TOML file, one dataclass per section), data.py (training windows exactly as the writer
sees them at run time, saved with `datasets`), judges.py (OpenAI-compatible endpoint judge with a disk cache;
ground-truth judge for the synthetic world), rewards.py (the paper's rewards, one function each),
processor.py (the Qwen3VLProcessor TRL uses, tokenizing with the project's prompt encoder), phase_one.py (the
trainer and `python -m edge_agent.train.phase_one`), export.py (checkpoint -> GGUF + mmproj -> quantized folder).

torch, transformers, trl, accelerate and datasets are imported inside the functions that need them; nothing in
the runtime imports this package.
"""
