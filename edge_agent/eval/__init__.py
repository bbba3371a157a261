"""Evaluation (owns benchmark loaders, the streaming replay driver, grading/judges, metrics and the report).

The paper's memory-only protocol: each stream is fed through capture -> writer -> store up to a question's time,
the question is answered from the memories written by then, and answers are scored by Acc / Cov / Prec.
Heavy or optional libraries (cv2, pyarrow, matplotlib, rich) are imported inside the functions that use them.
"""

from edge_agent.eval.grading import (BackendJudge, CachedJudge, Judge, JudgeError, OpenAIJudge, grade,
                                     judge_prompt, parse_verdict)
from edge_agent.eval.loaders import (BENCHMARKS, egolife_clock, load_benchmark, load_egolife, load_egotempo,
                                     load_synthetic, load_videomme, probe_duration)
from edge_agent.eval.metrics import (LatencyStats, Outcome, Scores, by_category, latency_stats, memory_bytes,
                                     memory_bytes_per_minute, summarize)
from edge_agent.eval.replay import (ConfigSpec, ReplayTarget, FutureMemoryError, ReplayRun, parse_config_spec, replay,
                                    replay_stream)
from edge_agent.eval.report import markdown_report, results_json, write_report
from edge_agent.eval.schema import Answer, Benchmark, BenchItem, BenchQuestion, StreamStats, VideoPiece

__all__ = [
    "Answer", "BackendJudge", "Benchmark", "BENCHMARKS", "BenchItem", "BenchQuestion", "CachedJudge", "ConfigSpec", "ReplayTarget",
    "FutureMemoryError", "Judge", "JudgeError", "LatencyStats", "OpenAIJudge", "Outcome", "ReplayRun", "Scores",
    "StreamStats", "VideoPiece", "by_category", "egolife_clock", "grade", "judge_prompt", "latency_stats",
    "load_benchmark", "load_egolife", "load_egotempo", "load_synthetic", "load_videomme", "markdown_report",
    "memory_bytes", "memory_bytes_per_minute", "parse_config_spec", "parse_verdict", "probe_duration", "replay", "replay_stream",
    "results_json", "summarize", "write_report",
]
