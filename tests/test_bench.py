"""edge_agent.bench: run_bench(quick=True) on the tiny model returns every section, finite and self-consistent.

No wall-clock thresholds: the machine is shared. What is asserted are counts and token numbers that must hold
on any machine (the cache saves encoder runs, merging saves tokens, a frame is 12 image tokens at 128 px), and
the bench's arithmetic checked against truths known independently of its own numbers: a fake clock whose parts
take known times (shares, ratios), a known allocation (peak RSS), the cached and the full-forward DPO losses
of the zero vector (both log 2). Re-deriving a ratio from the two numbers the bench printed next to it proves
nothing and is not done here.
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_agent.bench import (STAGES, PeakRss, _breakdown, _Clock, _ratio, _separate_frames, _TimedBackend,
                               _TimedEmbedder, _TimedStore, phase_two_cost, phase_two_pairs, run_bench, summary_rows)
from edge_agent.bench_shape import SHAPE_STAGES, run_shape_bench
from edge_agent.capture.segmenter import target_size
from edge_agent.config import load_config, replace
from edge_agent.errors import ConfigError, ModelError
from edge_agent.export.shapes import cached_shape, ensure_shape, shape_config, shape_dims, shape_dir
from edge_agent.export.tiny import SPECIAL_TOKENS
from edge_agent.types import ImagePart, Message

SECTIONS = ("environment", "settings", "vision_cache", "temporal_merging", "writer_vs_llama", "segmenter", "ingest",
            "ask", "store", "retrieval", "resources", "run_rss", "phase_two")


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
    # pure DPO (the embedded default's profile adds an SFT term): the zero vector's loss is then log 2, known
    # without the bench; and every question retrieved by text, so FTS is timed on each (the profile shows a question
    # that names a time, or asks where a thing was left, only those memories, found without FTS ranking); and the
    # paper's window of 5 segments, so the sliding windows share frames for the cache to save (the profile's is 1)
    cfg = load_config(home, environ={"EDGE_AGENT_ADAPT__SFT_WEIGHT": "0", "EDGE_AGENT_QA__MOMENT_K": "0",
                                     "EDGE_AGENT_QA__LATEST_K": "0", "EDGE_AGENT_WRITER__WINDOW_SEGMENTS": "5"})
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
    # with the cache every frame is encoded once: as many encoder runs as merged chunks in the clip
    assert on["encoder_runs"] <= v["keyframes"] < off["encoder_runs"]
    assert on["seconds_per_segment"] > 0 and off["seconds_per_segment"] > 0


@pytest.mark.slow
def test_temporal_merging_saves_tokens(bench):
    t = bench[0]["temporal_merging"]
    m, s = t["merged"], t["separated"]
    assert m["prompt_tokens"] < s["prompt_tokens"] and m["image_tokens"] < s["image_tokens"]
    assert m["prompt_tokens"] == m["image_tokens"] + m["text_tokens"]
    assert m["encoder_runs"] < s["encoder_runs"] == t["frames"]  # separated: one encoder run per frame
    # geometry known without the bench: a 256x192 synthetic frame at frame_size 128 is 128x96 px, 4 x 3 tiles of
    # 32 px = 12 image tokens per chunk, whether the chunk holds one frame or a temporal pair of two
    w, h = target_size(256, 192, bench[0]["settings"]["frame_size"])
    per_chunk = (w // 32) * (h // 32)
    assert per_chunk == 12
    assert s["image_tokens"] == per_chunk * t["frames"] and m["image_tokens"] == per_chunk * m["encoder_runs"]
    assert m["encoder_runs"] >= t["frames"] / 2  # a pair holds at most two frames


@pytest.mark.slow
def test_ingest_covers_the_whole_clip(bench):
    g = bench[0]["ingest"]
    assert g["segments"] == g["segments_written"] + g["segments_failed"] == bench[0]["settings"]["segments"]
    # the stream seconds are the clip's length, known before the bench ran
    assert g["stream_seconds"] == pytest.approx(bench[0]["settings"]["clip_seconds"], abs=0.5)
    assert g["realtime_factor"] > 0 and g["wall_seconds"] > 0
    assert 0 < g["write_share_of_wall"] <= 1.0 + 1e-6  # the writer's time is part of the wall time


@pytest.mark.slow
def test_ask_breakdown_times_every_part(bench):
    a = bench[0]["ask"]
    for run in (a["cold"], a["warm"]):
        assert run["fts_ms"] > 0 and run["model_ms"] > 0  # both were called on every question
        assert sorted(run["order"]) == ["embedding", "fts", "model", "other"]
    e = a["embedding"]
    if e["available"]:  # MiniLM weights installed
        assert e["backfill_memories"] == a["memories"]  # every memory stored was embedded once
        assert e["warm_ms"] > 0 and e["graph_load_ms"] > 0


@pytest.mark.slow
def test_store_and_resources(bench):
    result, _, tiny = bench
    s, r = result["store"], result["resources"]
    assert s["memories"] == 1000 and s["commits_per_second"] > 0
    assert 0 < s["fts_ms_median"] <= s["fts_ms_p90"]
    assert r["model_file_mb"] == pytest.approx((tiny / "model.gguf").stat().st_size / 2**20, abs=1e-3)
    assert r["peak_rss_mb"] >= (r["current_rss_mb"] or 0) * 0.99 and r["peak_rss_mb"] > r["model_file_mb"]
    st = r["steering"]
    assert st["layer"] == 22 and st["token_decode_ms"] > 0 and st["apply_ms"] > 0


@pytest.mark.slow
def test_run_rss_is_a_cli_run_of_a_three_minute_clip(bench):
    """The README's footprint row from `bench`: a real `edge-agent run` child, its own peak (not the bench's)."""
    result, _, tiny = bench
    rr = result["run_rss"]
    assert rr["available"], rr
    assert rr["segments_written"] + rr["segments_failed"] == 18  # 3 minutes of 10 s segments (the tiny model's
    # random memories fail validation: the writer still ran on every segment)
    files = ((tiny / "model.gguf").stat().st_size + (tiny / "mmproj.gguf").stat().st_size) / 2**20
    assert rr["model_files_mb"] == pytest.approx(files, abs=0.1)
    assert rr["beyond_model_files_mb"] == pytest.approx(rr["peak_rss_mb"] - rr["model_files_mb"], abs=0.2)
    assert 60 < rr["peak_rss_mb"] < result["resources"]["peak_rss_mb"]  # numpy + cv2 + llama.cpp; not the bench's


@pytest.mark.slow
def test_summary_rows_cover_every_measurement(bench):
    rows = summary_rows(bench[0])
    text = "\n".join(" | ".join(r) for r in rows)
    for word in ("cache on/off", "merged/separated", "real-time factor", "ask (warm): model", "FTS5", "peak RSS",
                 "beyond the model files",
                 "control vector apply"):
        assert word in text


# ---------------------------------------------------------------- fast, no model


def test_separated_frames_get_text_between_them():
    px = np.zeros((32, 32, 3), np.uint8)
    msgs = [Message("user", ["a", ImagePart("1", px), ImagePart("2", px), "b", ImagePart("3", px)])]
    parts = _separate_frames(msgs)[0].parts
    assert [p if isinstance(p, str) else p.key for p in parts] == ["a", "1", "\n", "2", "b", "3"]


class _FakeTime:
    """A clock that only moves when work says how long it took."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    def work(self, seconds: float, result=None):
        def run(*args, **kwargs):
            self.t += seconds
            return result
        return run


def test_ask_breakdown_with_a_fake_clock_recovers_the_known_times():
    """The bench's timing proxies around a store, an embedder and a backend whose calls take known fake times:
    the breakdown gives those times back, its shares sum to one, and the dominant part comes first."""
    now = _FakeTime()
    store = type("S", (), {"fts_search": now.work(0.004, []), "vector_search": now.work(0.006, []),
                           "other": now.work(0.5)})()
    backend = type("B", (), {"model_name": "fake", "generate": now.work(0.120, "A")})()
    embedder = type("E", (), {"name": "fake", "encode": now.work(0.010, [])})()
    clock = _Clock(now=now)
    s, b, e = _TimedStore(store, clock), _TimedBackend(backend, clock), _TimedEmbedder(embedder, clock)
    start = now()
    s.fts_search("q", 8)
    e.encode(["q"])
    s.vector_search("m", None, 8)
    b.generate([], None)
    now.work(0.030)()  # untimed work inside `answer`: lands in "other"
    out = _breakdown(clock.parts, now() - start)
    truth = {"fts": 4.0, "embedding": 16.0, "model": 120.0, "other": 30.0}
    for part, ms in truth.items():
        assert out[f"{part}_ms"] == pytest.approx(ms, abs=1e-6)
    assert out["total_ms"] == pytest.approx(170.0, abs=1e-6)
    assert sum(out["shares"].values()) == pytest.approx(1.0, abs=1e-9)
    assert out["shares"]["model"] == pytest.approx(120 / 170, abs=1e-9)
    assert out["order"] == ["model", "other", "embedding", "fts"]


def test_a_ratio_of_two_fake_timed_parts_is_the_true_ratio():
    now = _FakeTime()
    clock = _Clock(now=now)
    clock.timed("writer", now.work(0.075))
    clock.timed("llama", now.work(0.025))
    clock.timed("writer", now.work(0.015))  # accumulates
    assert _ratio(clock.parts["writer"], clock.parts["llama"]) == pytest.approx(90 / 25, rel=1e-9)


def test_timer_noise_never_makes_other_negative():
    out = _breakdown({"fts": 0.002, "embedding": 0.0, "model": 0.009}, total=0.010)  # parts exceed the total
    assert out["other_ms"] == 0.0 and out["total_ms"] == pytest.approx(11.0)
    assert sum(out["shares"].values()) == pytest.approx(1.0, abs=1e-9) and out["order"][0] == "model"


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only (VmHWM reset)")
def test_peak_rss_sees_a_known_allocation_and_resets():
    base = PeakRss()
    assert base.method.startswith("VmHWM")
    block = np.ones(300 << 20, dtype=np.uint8)  # 300 MB, every page touched
    with_block = base.mb()
    del block
    after = PeakRss()  # a new stage: the high-water mark starts again from what is resident now
    assert with_block - after.mb() > 250


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
    assert w["writer_seconds"] > 0 and w["llama_cpp_alone_seconds"] > 0 and w["backend_no_cache_seconds"] > 0
    assert 0 <= w["same_text_all_three"] <= w["generate_calls"]


@pytest.mark.slow
def test_segmenter_against_a_bare_decode(bench):
    g = bench[0]["segmenter"]
    assert g["segments"] == bench[0]["settings"]["segments"] and g["frames"] > g["segments"]
    # the synthetic clip is rendered at 5 fps: the bare decode reads every frame of it
    assert g["frames"] == pytest.approx(5 * bench[0]["settings"]["clip_seconds"], abs=5)
    assert g["segmenter_seconds"] > 0 and g["bare_decode_seconds"] > 0


@pytest.mark.slow
def test_retrieval_at_scale_reports_every_ranking(bench):
    r = bench[0]["retrieval"]
    # 48 B residual code + id + t_end + list + scale, and 4 B of order by list (lists were probed)
    assert r["memories"] == 10_000 and r["index"]["bytes_per_memory_ram"] == 76.0 and r["index"]["lists"] == 400
    for part in ("fts5", "vector", "fused", "exact_scan"):
        assert r[part]["n"] > 0 and r[part]["p95_ms"] >= r[part]["p50_ms"] > 0
    assert r["recall_at_8"]["mean"] >= 0.9 and r["build"]["db_bytes_per_memory"] > 1536  # float32 vectors kept


# ---------------------------------------------------------------- Phase Two rows (issue 14 item 5), no llama.cpp


def _segments(n: int, frames: int = 2, size: tuple[int, int] = (96, 128)) -> list:
    from edge_agent.types import Frame, Segment

    rng = np.random.default_rng(0)
    return [Segment(i, 10.0 * i, 10.0 * i + 10.0,
                    [Frame(j, 10.0 * i + j, rng.integers(0, 255, (*size, 3), dtype=np.uint8)) for j in range(frames)])
            for i in range(n)]


def test_phase_two_cost_on_the_tiny_checkpoint(tiny_model, tmp_path):
    """The cached layer-22 path and the full forward give the same DPO loss for the zero vector (log 2, known
    without the bench), every timed step is reported, and the peak is at least what was resident after loading."""
    cfg = load_config(tmp_path, environ={"EDGE_AGENT_ADAPT__SFT_WEIGHT": "0"})  # pure DPO: log 2 at vector zero
    pairs = phase_two_pairs(_segments(3), window_segments=2, n_pairs=2, stream_key="t")
    assert len(pairs) == 2 and pairs[0].chosen != pairs[0].rejected
    assert sum(isinstance(p, ImagePart) for m in pairs[0].messages for p in m.parts) == 4  # 2 segments x 2 frames
    out = phase_two_cost(tiny_model / "hf", pairs, cfg.adapt, steps=2, full_steps=1, threads=1)
    assert out["available"] is True and out["layer"] == 22 and out["pairs"] == 2
    assert out["cached"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert out["full_forward"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert out["cached"]["steps"] == 2 and len(out["cached"]["step_seconds_all"]) == 2
    assert out["full_forward"]["steps"] == 1
    assert all(isinstance(t, int) and t > 0 for t in out["sequence_tokens"]) and len(out["sequence_tokens"]) == 4
    assert out["cached_inputs_mb"] > 0 and out["parameters"] > 1_000_000
    assert out["peak_rss_mb"] >= out["rss_after_load_mb"] * 0.99
    json.dumps(out, allow_nan=False)


@pytest.mark.slow
def test_bench_has_phase_two_rows(bench):
    p2 = bench[0]["phase_two"]
    assert p2["available"] is True and p2["dtype"] == "float32"
    assert p2["cached"]["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert p2["full_forward"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert p2["pairs"] == 2 and p2["cached"]["steps"] == p2["full_forward"]["steps"] == 3
    assert isinstance(p2["peak_rss_mb"], float) and p2["peak_rss_mb"] > 0
    text = "\n".join(" | ".join(r) for r in summary_rows(bench[0]))
    assert "Phase Two DPO step" in text and "Phase Two peak RSS" in text


# ---------------------------------------------------------------- bench --shape (issue 14 item 4)

IDS = {s: 1024 + i for i, s in enumerate(SPECIAL_TOKENS)}
# The 2B shape down-scaled for tests: the same builder, exporter and quantizer, seconds instead of minutes. Text
# layers stay above the deepstack taps (llama.cpp adds a tap after the last layer's row pruning otherwise).
SMALL = dict(layers=3, hidden=256, intermediate=512, heads=4, kv_heads=2, head_dim=64, mrope_section=(12, 10, 10),
             vision_depth=2, vision_hidden=64, vision_intermediate=128, vision_heads=2, deepstack=(0, 1),
             vision_positions=64)


def test_2b_shape_config_has_the_published_dimensions():
    """Qwen/Qwen3-VL-2B-Instruct's config.json, value by value, without building a weight."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    cfg = shape_config("qwen3-vl-2b", IDS)
    tc, vc = cfg.text_config, cfg.vision_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim,
            tc.intermediate_size, tc.vocab_size) == (2048, 28, 16, 8, 128, 6144, 151936)
    assert cfg.tie_word_embeddings is True and tc.tie_word_embeddings is True
    rope = tc.rope_parameters
    assert rope["mrope_section"] == [24, 20, 20] and rope["rope_theta"] == 5e6 and rope["mrope_interleaved"]
    assert (vc.depth, vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.patch_size, vc.spatial_merge_size,
            vc.temporal_patch_size, vc.out_hidden_size, vc.num_position_embeddings) == \
        (24, 1024, 4096, 16, 16, 2, 2, 2048, 2304)
    assert list(vc.deepstack_visual_indexes) == [5, 11, 17]
    # transformers' defaults are another model's (4B/8B): nothing of the shape may come from them
    d = Qwen3VLConfig()
    assert (d.text_config.hidden_size, d.vision_config.depth, list(d.vision_config.deepstack_visual_indexes)) != \
        (2048, 24, [5, 11, 17])
    # the text parameters, counted on the meta device, match the architecture's formula
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(cfg)
    text = sum(p.numel() for n, p in model.named_parameters() if ".visual." not in f".{n}")
    per_layer = (2048 * 16 * 128 + 2 * 2048 * 8 * 128 + 16 * 128 * 2048  # q, k, v, o
                 + 3 * 2048 * 6144 + 2 * 2048 + 2 * 128)  # gate/up/down, two norms, q/k norms
    assert text == 151936 * 2048 + 28 * per_layer + 2048  # tied: one embedding matrix, plus the final norm


def test_shape_dims_refuse_unknown_and_inconsistent_overrides():
    assert shape_dims("qwen3-vl-2b", layers=2)["layers"] == 2
    with pytest.raises(ConfigError, match="unknown dimension"):
        shape_dims("qwen3-vl-2b", depth=3)
    with pytest.raises(ConfigError, match="mrope_section"):
        shape_dims("qwen3-vl-2b", head_dim=64)
    with pytest.raises(ConfigError, match="deepstack"):
        shape_dims("qwen3-vl-2b", vision_depth=4)
    with pytest.raises(ConfigError, match="unknown"):
        shape_dims("qwen3-vl-9b")


@pytest.fixture(scope="module")
def small_shape(tmp_path_factory):
    home = tmp_path_factory.mktemp("shape-home")
    folder = shape_dir(home, "qwen3-vl-2b")
    record, built = ensure_shape(folder, "qwen3-vl-2b", **SMALL)
    return home, folder, record, built


def test_built_shape_carries_its_dimensions_into_both_ggufs(small_shape):
    import gguf

    home, folder, record, built = small_shape
    assert built and folder == home / "bench" / "shapes" / "qwen3-vl-2b"
    r = gguf.GGUFReader(folder / "model.gguf")

    def kv(reader, key):
        return reader.fields[key].contents()

    assert (kv(r, "qwen3vl.embedding_length"), kv(r, "qwen3vl.block_count"), kv(r, "qwen3vl.feed_forward_length"),
            kv(r, "qwen3vl.attention.head_count"), kv(r, "qwen3vl.attention.head_count_kv"),
            kv(r, "qwen3vl.attention.key_length")) == (256, 3, 512, 4, 2, 64)
    assert kv(r, "qwen3vl.rope.dimension_sections")[:3] == [12, 10, 10] and kv(r, "qwen3vl.n_deepstack_layers") == 2
    assert len(kv(r, "tokenizer.ggml.tokens")) == 151936  # the real vocabulary size: the output layer's cost
    tensors = {t.name: t for t in r.tensors}
    assert "output.weight" not in tensors  # tied embeddings, as Qwen3-VL-2B
    assert list(tensors["token_embd.weight"].shape) == [256, 151936]
    assert kv(r, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    m = gguf.GGUFReader(folder / "mmproj.gguf")
    assert (kv(m, "clip.vision.block_count"), kv(m, "clip.vision.embedding_length"),
            kv(m, "clip.vision.feed_forward_length"), kv(m, "clip.vision.attention.head_count"),
            kv(m, "clip.vision.projection_dim"), kv(m, "clip.vision.patch_size"),
            kv(m, "clip.vision.spatial_merge_size")) == (2, 64, 128, 2, 256, 16, 2)
    assert kv(m, "clip.vision.is_deepstack_layers") == [True, True]
    assert kv(m, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    assert record["files"]["model_file_type"] == "Q4_K_M" and record["dims"]["layers"] == 3
    # a second call reuses the build; the full-size recipe does not match it
    again, built_again = ensure_shape(folder, "qwen3-vl-2b", **SMALL)
    assert not built_again and again == record
    assert cached_shape(folder, "qwen3-vl-2b") is None


@pytest.mark.slow
def test_shape_bench_json_rows(small_shape):
    """The bench on the down-scaled shape: the catalog's 2B capture settings, the frame cache's and the image
    tokens' arithmetic known from the geometry, and every row JSON-ready."""
    home, folder, record, _ = small_shape
    cfg = replace(replace(load_config(home, environ={}), "model", n_threads=1), "adapt", layer=2,
                  sft_weight=0.0)  # pure DPO: the zero vector's loss is log 2
    stages = []
    r = run_shape_bench(cfg, dims=SMALL, progress=stages.append, phase_two_steps=2)
    assert stages == list(SHAPE_STAGES)
    json.dumps(r, allow_nan=False)
    for path, x in _numbers(r):
        # n_gpu_layers = -1 is the profile's "all layers on the GPU" (ignored by a CPU-only llama.cpp)
        assert math.isfinite(x) and (x >= 0 or path.endswith("n_gpu_layers")), (path, x)
    assert r["build"]["built_now"] is False  # the fixture's build is reused
    s, w = r["settings"], r["writer"]
    assert (s["frame_size"], s["keyframes_per_segment"], s["n_ctx"]) == (448, 4, 4096)  # models/catalog.toml
    assert r["environment"]["n_threads"] == 1 and r["load"]["n_layers"] == 3 and r["load"]["n_vocab"] == 151936
    k, rows = w["window_segments"], w["per_segment"]
    per_chunk = (448 // 32) * (320 // 32)  # a 640x480 camera frame at 448 px is 448x320
    for i, row in enumerate(rows):
        assert row["frames_encoded"] == row["keyframes"]  # the frame cache: each frame through the encoder once
        assert row["chunks_encoded"] == math.ceil(row["keyframes"] / 2)  # consecutive frames merge in pairs
        if i >= k:  # the window has slid: all k segments' images are evaluated again
            window = rows[i - k + 1:i + 1]
            assert row["image_tokens"] == per_chunk * sum(math.ceil(x["keyframes"] / 2) for x in window)
    assert w["steady_segments"] == len(rows) - k
    for key in ("vision_encode_seconds_per_frame", "prompt_eval_tokens_per_second", "decode_tokens_per_second",
                "seconds_per_segment", "real_time_factor"):
        assert isinstance(w[key], float) and w[key] > 0, key
    assert isinstance(w["keeps_up"], bool)
    p2 = r["phase_two"]
    assert p2["available"] is True and p2["dtype"] == "bfloat16" and p2["window_segments"] == k
    assert p2["cached"]["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert p2["full_forward"]["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert r["summary"]["n_threads"] == 1


def test_cli_shape_is_its_own_opt_in(tmp_path):
    from conftest import run_cli

    res = run_cli(tmp_path / "home", "bench", "--quick", "--shape", "qwen3-vl-2b")
    assert res.returncode == 2 and b"drop --quick" in res.stderr
    assert not (tmp_path / "home" / "bench").exists()  # nothing was built
    res = run_cli(tmp_path / "home", "bench", "--shape", "qwen3-vl-9b")
    assert res.returncode == 2 and b"qwen3-vl-9b" in res.stderr
