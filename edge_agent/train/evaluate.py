"""Held-out writer quality of a model folder, graded by the ground-truth judge: the Phase One before/after number.

    writer_quality(model_folder, seeds=[9000, 9001], minutes=2.0, segments=12) -> dict

Each held-out synthetic clip goes through the runtime's capture path and MemoryWriter on llama.cpp (greedy, JSON
grammar, the window growing with the memories the model itself wrote, as at run time). Every memory is then graded
like the Phase One rewards grade rollouts: valid (format rules on the first try), correct (GroundTruthJudge),
redundant, and the number of true things it names (richness's ranking key). Seeds 9000-9999 are never trained on.

    python -m edge_agent.train.evaluate MODEL_FOLDER [--seeds 9000-9003] [--minutes 2] [--segments 12]
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Sequence


def writer_quality(model_folder: str | Path, seeds: Sequence[int], minutes: float = 2.0, segments: int = 12,
                   window_segments: int = 5, n_threads: int = 1, work: Path | None = None) -> dict[str, Any]:
    from edge_agent.capture.segmenter import segment_stream
    from edge_agent.capture.source import open_source
    from edge_agent.config import CaptureConfig, WriterConfig
    from edge_agent.memory import MemoryWriter, WindowEntry
    from edge_agent.synth import generate
    from edge_agent.train.judges import GroundTruthJudge, entities, segment_truth
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    folder = Path(model_folder)
    judge = GroundTruthJudge()
    capture = CaptureConfig()
    rows: list[dict[str, Any]] = []
    backend = LlamaCppBackend(folder / "model.gguf", folder / "mmproj.gguf", n_threads=n_threads, n_ctx=8192,
                              image_cache_size=64, seed=0)
    tmp = tempfile.TemporaryDirectory() if work is None else None
    root = Path(tmp.name) if tmp else Path(work)
    try:
        for seed in seeds:
            clip = root / f"synth-{seed}-{minutes:g}m"
            if not (clip / "events.json").is_file():
                generate(seed, minutes, clip)
            log = json.loads((clip / "events.json").read_text())
            captions = {s["index"]: s["caption"] for s in log["segments"]}
            writer = MemoryWriter(backend, WriterConfig(window_segments=window_segments, max_retries=0),
                                  stream_key=f"heldout-{seed}")
            window: list[WindowEntry] = []
            src = open_source(str(clip / "video.mp4"), capture)
            try:
                for seg in segment_stream(src, capture):
                    if seg.index >= segments:
                        break
                    res = writer.write(window, seg)
                    evs = [e for e in log["events"]
                           if seg.t_start <= e["t"] < seg.t_end or e["t"] < seg.t_start < e.get("t_end", e["t"])]
                    w = {"caption": captions.get(seg.index, ""), "events": evs,
                         "prior_memories": [e.memory or "" for e in window[-(window_segments - 1):]]}
                    row = {"seed": seed, "segment": seg.index, "memory": res.text, "valid": res.text is not None}
                    if res.text is not None:
                        v = judge.assess(w, [res.text])[0]
                        row.update(correct=v.correct, redundant=v.redundant,
                                   true_things=len(entities(res.text) & segment_truth(w)))
                    rows.append(row)
                    window.append(WindowEntry(seg, res.text))
            finally:
                src.close()
    finally:
        backend.close()
        if tmp:
            tmp.cleanup()
    n = len(rows)
    valid = [r for r in rows if r["valid"]]

    def share(xs) -> float:
        return round(sum(xs) / n, 4) if n else 0.0

    return {
        "model": str(folder), "seeds": list(seeds), "segments": n,
        "valid": share(r["valid"] for r in rows),
        "correct": share(r.get("correct", False) for r in rows),  # over all segments: invalid counts as wrong
        "redundant": share(r.get("redundant", False) for r in rows),
        "true_things_per_memory": round(sum(r.get("true_things", 0) for r in valid) / len(valid), 3) if valid else 0.0,
        "examples": [r["memory"] for r in rows[:3]],
    }


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edge_agent.train.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("model", type=Path, help="model folder (model.gguf + mmproj.gguf)")
    ap.add_argument("--seeds", default="9000-9003")
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--segments", type=int, default=12)
    ns = ap.parse_args(argv)
    print(json.dumps(writer_quality(ns.model, _seeds(ns.seeds), ns.minutes, ns.segments), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
