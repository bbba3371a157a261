"""Retrieval at a lifetime of memories: the vector index vs the exact scan, FTS5 and fused retrieval.

    nice -n 15 .venv/bin/python tools/bench_vectors.py --sizes 10000 100000 1000000 --out vectors.json

Memory texts are the synthetic world's segment captions; their MiniLM vectors are computed once (cached in
--cache) and, beyond the number of distinct captions, mixed pairwise into new unit vectors
(`edge_agent.bench.mixed_vectors`). Questions are the synthetic world's questions, embedded by MiniLM.
Everything is built in a temporary folder and removed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.bench import vector_retrieval  # noqa: E402
from edge_agent.config import QAConfig  # noqa: E402


def synthetic_texts(hours: int = 60, questions_per_hour: int = 40) -> tuple[list[str], list[str]]:
    """Distinct captions and distinct questions of `hours` one-hour synthetic worlds (seeds from 11)."""
    from edge_agent.synth.questions import make_questions
    from edge_agent.synth.world import build_script, build_world, segment_captions

    caps: list[str] = []
    qs: list[str] = []
    for seed in range(11, 11 + hours):
        rng = np.random.default_rng([seed, 0])
        try:
            world = build_world(rng)
            script = build_script(world, 3600.0, rng)
        except ValueError:  # a world the script builder cannot fill (seed 56): skip it
            continue
        caps += [c["caption"] for c in segment_captions(world, script, 10.0)]
        qs += [q["question"] for q in make_questions(world, script, 10.0, np.random.default_rng([seed, 1]),
                                                     questions_per_hour)]
    return list(dict.fromkeys(caps)), list(dict.fromkeys(qs))


def embed_cached(texts: list[str], cache: Path) -> np.ndarray:
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:16]
    path = cache / f"minilm-{key}.npy"
    if path.is_file():
        return np.load(path)
    from edge_agent.qa.embed import MiniLM

    vecs = MiniLM(cache_dir=cache, threads=1).encode(texts)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--questions-large", type=int, default=30, help="questions above 100k memories")
    ap.add_argument("--exact-queries", type=int, default=20)
    ap.add_argument("--other-rescores", type=int, nargs="*", default=[160, 1000])
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the temporary databases")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "edge-agent-bench-cache")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    caps, qs = synthetic_texts()
    qs = qs[: args.questions]
    t = time.perf_counter()
    base, qv = embed_cached(caps, args.cache), embed_cached(qs, args.cache)
    result = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "distinct_captions": len(caps),
              "embed_s": round(time.perf_counter() - t, 2), "sizes": {}}
    qa = QAConfig()
    for n in args.sizes:
        # Above 100k FTS5 alone takes seconds a question here: fewer questions, three exact scans.
        k = len(qs) if n <= 100_000 else min(len(qs), args.questions_large)
        with tempfile.TemporaryDirectory(prefix="edge-agent-vectors-", dir=args.tmp) as tmp:
            r = vector_retrieval(Path(tmp), n, caps, base, qs[:k], qv[:k], qa,
                                 exact_queries=args.exact_queries if n <= 100_000 else 3,
                                 other_rescores=tuple(args.other_rescores))
        result["sizes"][str(n)] = r
        print(json.dumps({str(n): r}), flush=True)
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
