"""edge_agent.bench: run_bench(quick=True) on the tiny model returns every section, finite and self-consistent.

No wall-clock thresholds: the machine is shared. What is asserted are counts, token numbers and ratios that
must hold on any machine (the cache saves encoder runs, merging saves tokens, shares add up to one).
"""

import json
import math

import numpy as np
import pytest

from edge_agent.bench import STAGES, _breakdown, _separate_frames, run_bench, summary_rows
from edge_agent.config import load_config, replace
from edge_agent.errors import ModelError
from edge_agent.types import ImagePart, Message

SECTIONS = ("environment", "settings", "vision_cache", "temporal_merging", "writer_vs_llama", "segmenter", "ingest",
            "ask", "store", "retrieval", "resources")


def _numbers(obj, path=""):
    """Every number (not bool) in a nested result, with its path."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return
    if isinstance(obj, (int, float)):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")


@pytest.fixture(scope="module")
def bench(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("bench-home")
    cfg = load_config(home, environ={})
    # One thread: on two shared cores llama.cpp's two threads wait on each other (see the bench's report).
    cfg = replace(cfg, "model", name=str(tiny_model), n_threads=1, n_ctx=2048)
    stages = []
    result = run_bench(cfg, quick=True, progress=stages.append)
    return result, stages, tiny_model


@pytest.mark.slow
def test_all_sections_present_json_ready_and_finite(bench):
    result, stages, _ = bench
    assert stages == list(STAGES)
    assert set(SECTIONS) <= set(result)
    json.dumps(result, allow_nan=False)  # no NaN/inf, nothing unserialisable
    for path, x in _numbers(result):
        assert math.isfinite(x) and x >= 0, (path, x)
    assert set(result["stage_seconds"]) == set(STAGES)


@pytest.mark.slow
def test_environment_names_the_model(bench):
    env = bench[0]["environment"]
    assert env["cpu_count"] >= 1 and env["llama_cpp_python"]
    assert isinstance(env["gpu_offload_supported"], bool)
    assert env["model_name"] == bench[2].name and len(env["model_hash"]) == 64
    assert env["quick"] is True and env["n_layers"] == 24 and env["hidden_size"] == 64


@pytest.mark.slow
def test_vision_cache_saves_encoder_runs(bench):
    v = bench[0]["vision_cache"]
    on, off = v["cache_on"], v["cache_off"]
    assert v["segments"] == bench[0]["settings"]["segments"] >= v["window_segments"]
    assert 0 < on["encoder_runs"] < off["encoder_runs"]
    assert on["cache_hits"] > 0 and off["cache_hits"] == 0
    # every chunk shown is either encoded or a hit, and both runs show the same chunks
    assert on["encoder_runs"] + on["cache_hits"] == off["encoder_runs"]
    assert v["encoder_runs_ratio"] == pytest.approx(on["encoder_runs"] / off["encoder_runs"])
    assert on["seconds_per_segment"] > 0 and off["seconds_per_segment"] > 0
    assert v["seconds_per_segment_ratio"] == pytest.approx(on["seconds_per_segment"] / off["seconds_per_segment"])


@pytest.mark.slow
def test_temporal_merging_saves_tokens(bench):
    t = bench[0]["temporal_merging"]
    m, s = t["merged"], t["separated"]
    assert m["prompt_tokens"] < s["prompt_tokens"] and m["image_tokens"] < s["image_tokens"]
    assert m["prompt_tokens"] == m["image_tokens"] + m["text_tokens"]
    assert m["encoder_runs"] < s["encoder_runs"] == t["frames"]  # separated: one encoder run per frame
    assert t["prompt_tokens_ratio"] == pytest.approx(m["prompt_tokens"] / s["prompt_tokens"])
    assert 0 < t["image_tokens_ratio"] < 1


@pytest.mark.slow
def test_ingest_real_time_factor_is_stream_over_wall(bench):
    g = bench[0]["ingest"]
    assert g["segments"] == g["segments_written"] + g["segments_failed"] == bench[0]["settings"]["segments"]
    assert g["stream_seconds"] == pytest.approx(bench[0]["settings"]["clip_seconds"], abs=0.5)
    assert g["realtime_factor"] == pytest.approx(g["stream_seconds"] / g["wall_seconds"], rel=1e-3)
    assert g["segments_per_second"] == pytest.approx(g["segments"] / g["wall_seconds"], rel=1e-3)
    assert g["faster_than_realtime"] == (g["realtime_factor"] > 1)
    assert 0 < g["write_share_of_wall"] <= 1.0 + 1e-6


@pytest.mark.slow
def test_ask_breakdown_shares_sum_to_one(bench):
    a = bench[0]["ask"]
    for run in (a["cold"], a["warm"]):
        assert sum(run["shares"].values()) == pytest.approx(1.0, abs=1e-6)
        parts = run["fts_ms"] + run["embedding_ms"] + run["model_ms"] + run["other_ms"]
        assert parts == pytest.approx(run["total_ms"], abs=0.01)
        assert run["fts_ms"] > 0 and run["model_ms"] > 0
    e = a["embedding"]
    if e["available"]:  # MiniLM weights installed
        assert e["backfill_memories"] == a["memories"]
        assert e["first_call_ms"] == pytest.approx(e["graph_load_ms"] + e["first_encode_ms"], abs=0.01)
        assert e["warm_ms"] > 0 and e["first_to_warm_ratio"] == pytest.approx(e["first_call_ms"] / e["warm_ms"])


@pytest.mark.slow
def test_store_and_resources(bench):
    result, _, tiny = bench
    s, r = result["store"], result["resources"]
    assert s["memories"] == 1000 and s["commits_per_second"] > 0
    assert 0 < s["fts_ms_median"] <= s["fts_ms_p90"]
    assert r["model_file_mb"] == pytest.approx((tiny / "model.gguf").stat().st_size / 2**20, abs=1e-3)
    assert r["peak_rss_mb"] >= (r["current_rss_mb"] or 0) * 0.99 and r["peak_rss_mb"] > r["model_file_mb"]
    st = r["steering"]
    assert st["layer"] == 22 and st["token_decode_ms"] > 0
    assert st["apply_to_decode_ratio"] == pytest.approx(st["apply_ms"] / st["token_decode_ms"], rel=1e-2)


@pytest.mark.slow
def test_summary_rows_cover_every_measurement(bench):
    rows = summary_rows(bench[0])
    text = "\n".join(" | ".join(r) for r in rows)
    for word in ("cache on/off", "merged/separated", "real-time factor", "ask (warm): model", "FTS5", "peak RSS",
                 "control vector apply"):
        assert word in text


# ---------------------------------------------------------------- fast, no model


def test_separated_frames_get_text_between_them():
    px = np.zeros((32, 32, 3), np.uint8)
    msgs = [Message("user", ["a", ImagePart("1", px), ImagePart("2", px), "b", ImagePart("3", px)])]
    parts = _separate_frames(msgs)[0].parts
    assert [p if isinstance(p, str) else p.key for p in parts] == ["a", "1", "\n", "2", "b", "3"]


def test_breakdown_puts_the_rest_in_other():
    out = _breakdown({"fts": 0.001, "embedding": 0.002, "model": 0.006}, total=0.010)
    assert out["other_ms"] == pytest.approx(1.0) and out["total_ms"] == pytest.approx(10.0)
    assert out["shares"]["model"] == pytest.approx(0.6) and sum(out["shares"].values()) == pytest.approx(1.0)


def test_unknown_model_is_a_clear_error(tmp_path):
    cfg = replace(load_config(tmp_path, environ={}), "model", name="no-such-model")
    stages = []
    with pytest.raises(ModelError, match="no-such-model"):
        run_bench(cfg, quick=True, progress=stages.append)
    assert stages == ["load"]


@pytest.mark.slow
def test_writer_against_llama_cpp_alone_on_the_same_prompts(bench):
    w = bench[0]["writer_vs_llama"]
    assert w["segments"] > 0 and w["generate_calls"] >= w["segments"]
    # The seconds are rounded to 0.1 ms in the result, the ratios are not.
    assert w["writer_to_llama_cpp_ratio"] == pytest.approx(w["writer_seconds"] / w["llama_cpp_alone_seconds"],
                                                           rel=1e-2)
    assert w["backend_no_cache_to_llama_cpp_ratio"] == pytest.approx(
        w["backend_no_cache_seconds"] / w["llama_cpp_alone_seconds"], rel=1e-2)
    assert 0 <= w["same_text_all_three"] <= w["generate_calls"]


@pytest.mark.slow
def test_segmenter_against_a_bare_decode(bench):
    g = bench[0]["segmenter"]
    assert g["segments"] == bench[0]["settings"]["segments"] and g["frames"] > g["segments"]
    assert g["segmenter_throughput_ratio"] == pytest.approx(g["bare_decode_seconds"] / g["segmenter_seconds"],
                                                            rel=1e-2)


@pytest.mark.slow
def test_retrieval_at_scale_reports_every_ranking(bench):
    r = bench[0]["retrieval"]
    assert r["memories"] == 10_000 and r["index"]["bytes_per_memory_ram"] == 64.0  # 48 B code + id + t_end
    for part in ("fts5", "vector", "fused", "exact_scan"):
        assert r[part]["n"] > 0 and r[part]["p95_ms"] >= r[part]["p50_ms"] > 0
    assert r["recall_at_8"]["mean"] >= 0.9 and r["build"]["db_bytes_per_memory"] > 1536  # float32 vectors kept
