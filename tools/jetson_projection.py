"""A projection (not a measurement) of the 2B writer's cost per 10 s segment on Jetson Orin boards.

    .venv/bin/python tools/jetson_projection.py BENCH_SHAPE.json [--text-tokens N] [--memory-tokens N]

Input: the JSON of `edge-agent bench --shape qwen3-vl-2b --json` (any machine). From it only the work per
segment is taken (image tokens, frames, vision chunks, completion tokens of a steady, slid window at the shipped
capture settings); the speed comes from published llama.cpp figures for the same text model shape on an Orin,
scaled to the other boards by memory bandwidth (decode) and GPU throughput (prompt eval, vision encoder):

  AGX Orin 64GB, llama.cpp CUDA, llama-bench, Qwen3-1.7B Q4_K_M (the text model of Qwen3-VL-2B has exactly its
  dimensions: hidden 2048, 28 layers, 16/8 heads of 128, FFN 6144, vocab 151,936, tied embeddings):
  pp512 833.53 tok/s, tg128 22.36 tok/s. Source: "Cross-Framework LLM Benchmark Results - Jetson Orin AGX 64GB"
  (2025-07-17, JetPack 6, CUDA 12.6), a jetpack-nixos example (examples/CROSS_FRAMEWORK_BENCHMARK.md; the later
  version in GiveThanksAlways/jetpack-nixos no longer has the Qwen3 row).
  Board figures (NVIDIA module data sheets): AGX Orin 64GB 204.8 GB/s, 2048 CUDA cores at up to 1.3 GHz;
  Orin Nano 8GB "Super" (JetPack 6.1+, 25 W / MAXN_SUPER) 102 GB/s, 1024 CUDA cores at 1.02 GHz.

The vision encoder has no published llama.cpp figure on an Orin that this tool knows of: it is projected from
its matrix FLOPs at the effective FLOP rate the text model reaches in pp512 on the same board.
Text tokens: the shape bench's tokenizer is the tiny model's (trained on these very prompts), so its text count
is lower than Qwen's; --text-tokens gives Qwen's count if known (default: an estimate, 330, for a 5-segment
window of 2-sentence memories).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

# published: AGX Orin 64GB, Qwen3-1.7B Q4_K_M, llama.cpp CUDA (see the docstring)
AGX_PP512, AGX_TG128 = 833.53, 22.36
BOARDS = {  # name: (memory GB/s, CUDA cores x GHz)
    "AGX Orin 64GB": (204.8, 2048 * 1.3),
    "Orin Nano 8GB Super": (102.0, 1024 * 1.02),
}
TEXT_MATMUL_PARAMS = 28 * (2 * 2048 * 2048 + 2 * 2048 * 1024 + 3 * 2048 * 6144)  # per prompt token
VISION = dict(depth=24, hidden=1024, ff=4096, merge_in=4096, out=2048, deepstack=3)


def vision_flops(patches: int) -> float:
    """Matrix FLOPs of one Qwen3-VL-2B vision chunk of `patches` 16 px patches (two frames per temporal patch)."""
    v = VISION
    blocks = v["depth"] * (2 * patches * (4 * v["hidden"] ** 2 + 2 * v["hidden"] * v["ff"])
                           + 4 * patches * patches * v["hidden"])  # weights + attention scores/values
    merged = patches // 4
    mergers = (1 + v["deepstack"]) * 2 * merged * (v["merge_in"] ** 2 + v["merge_in"] * v["out"])
    return float(blocks + mergers)


def project(result: dict, text_tokens: float | None, memory_tokens: float | None) -> list[dict]:
    w = result["writer"]
    steady = w["steady_mean"]
    frame = w["frame_size"]
    h = [r for r in w["per_segment"] if r["chunks_encoded"]]
    chunks = sum(r["chunks_encoded"] for r in h) / max(len(h), 1)
    per_chunk_tokens = steady["image_tokens"] / max(sum(math.ceil(r["keyframes"] / 2) for r in
                                                        w["per_segment"][-w["window_segments"]:]), 1)
    patches = int(round(per_chunk_tokens * 4))
    image_tokens = steady["image_tokens"]
    text = text_tokens if text_tokens is not None else 330.0
    completion = memory_tokens if memory_tokens is not None else float(w["max_memory_tokens"])
    agx_mem, agx_gpu = BOARDS["AGX Orin 64GB"]
    agx_flops = 2 * TEXT_MATMUL_PARAMS * AGX_PP512  # effective FLOP/s of prompt eval on the AGX
    rows = []
    for board, (mem, gpu) in BOARDS.items():
        pp = AGX_PP512 * gpu / agx_gpu
        tg = AGX_TG128 * mem / agx_mem
        vis_chunk = vision_flops(patches) / (agx_flops * gpu / agx_gpu)
        seconds = chunks * vis_chunk + (image_tokens + text) / pp + completion / tg
        rows.append({"board": board, "prompt_eval_tok_s": round(pp, 1), "decode_tok_s": round(tg, 2),
                     "vision_s_per_frame": round(vis_chunk / 2, 3), "seconds_per_segment": round(seconds, 2),
                     "real_time_factor": round(seconds / w["segment_seconds"], 3),
                     "work": {"frame_size": frame, "chunks_encoded": chunks, "image_tokens": image_tokens,
                              "text_tokens": text, "completion_tokens": completion}})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench_json")
    ap.add_argument("--text-tokens", type=float, default=None, help="Qwen-tokenizer text tokens of a window.")
    ap.add_argument("--memory-tokens", type=float, default=None, help="Tokens per memory (default: the bench cap).")
    args = ap.parse_args(argv)
    with open(args.bench_json, encoding="utf-8") as f:
        result = json.load(f)
    rows = project(result, args.text_tokens, args.memory_tokens)
    print("PROJECTION from published llama.cpp figures (AGX Orin 64GB, Qwen3-1.7B Q4_K_M: pp512 833.53, tg128 "
          "22.36 tok/s), scaled by board bandwidth/GPU; not measured on a Jetson.")
    print("| board | prompt eval tok/s | decode tok/s | vision s/frame | s per 10 s segment | RTF |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['board']} | {r['prompt_eval_tok_s']} | {r['decode_tok_s']} | {r['vision_s_per_frame']} | "
              f"{r['seconds_per_segment']} | {r['real_time_factor']} |")
    print(json.dumps(rows[0]["work"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
