"""Phase Two from the command line: run -> ask/feedback -> adapt -> adapter active -> the writer uses it."""

import json

import pytest

from edge_agent.store import Store

from conftest import run_cli

# One segment per window so each segment is its own train/held-out block; MiniLM relevance decides the pairs
# (the random tiny model is no judge).
# Six windows give two held-out pairs: the gate's evidence rules are lowered to what two pairs can show
# (2 of 2 right: p = 0.25), and the test checks the gate really measured format compliance on held-out windows.
ADAPT_ENV = {"EDGE_AGENT_WRITER__WINDOW_SEGMENTS": "1", "EDGE_AGENT_ADAPT__REWARD__RULE": "embedding",
             "EDGE_AGENT_ADAPT__MIN_PAIRS": "2", "EDGE_AGENT_ADAPT__GATE__MIN_HOLDOUT_PAIRS": "2",
             "EDGE_AGENT_ADAPT__GATE__MAX_P_VALUE": "0.25"}

CHOSEN = "I put the red cup on the shelf in the kitchen."
REJECTED = "I looked at the ceiling for a while."


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("clips")
    for seed in (4, 5):
        proc = run_cli(out / "home", "synth", "--seed", str(seed), "--minutes", "1", "--out", str(out / f"c{seed}"))
        assert proc.returncode == 0, proc.stderr.decode()
    return out / "c4" / "video.mp4", out / "c5" / "video.mp4"


@pytest.mark.slow
def test_feedback_to_adapter_to_writer(tmp_path, tiny_model, clips):
    home = tmp_path / "home"
    proc = run_cli(home, "run", str(clips[0]), "--json", model=tiny_model, env=ADAPT_ENV)
    assert proc.returncode == 0, proc.stderr.decode()
    stream_id = json.loads(proc.stdout)["stream_id"]

    store = Store.open(home / "memory.db")
    segments = store.segments(stream_id)
    assert len(segments) == 6 and all(store.kept_frames(s["id"]) for s in segments)  # frames kept for Phase Two
    for s in segments:  # two alternative memories per window, one useful for the wearer's question
        for text in (CHOSEN, REJECTED):
            store.add_candidate(s["id"], json.dumps({"description": text}), valid=True, failure=None,
                                sampling={"temperature": 0.6}, source="sampled")
    qid = store.add_question("Where did I leave the red cup?", [], asked_at=60.0)
    aid = store.add_answer(qid, choice=None, text="not in memory", abstained=True, cited=[], model="tiny",
                           adapter_id=None)
    fb = run_cli(home, "feedback", str(aid), "--wrong", "--answer", "on the shelf in the kitchen", "--json")
    assert fb.returncode == 0, fb.stderr.decode()

    proc = run_cli(home, "adapt", "--json", model=tiny_model, env=ADAPT_ENV)
    assert proc.returncode == 0, proc.stderr.decode()
    summary = json.loads(proc.stdout)
    assert summary["status"] == "activated", summary
    adapter_id = summary["adapter_id"]
    # not vacuous: the held-out windows were rebuilt and the writer ran on them with and without the vector
    assert summary["compliance_windows"] >= 1 and summary["metrics"]["compliance"] is not None
    assert summary["metrics"]["compliance"] >= summary["metrics"]["baseline_compliance"]
    assert summary["backend_released"] is True  # the llama.cpp model was closed while the checkpoint trained

    listed = json.loads(run_cli(home, "adapter", "list", "--json").stdout)
    row = next(r for r in listed if r["id"] == adapter_id)
    assert row["status"] == "active"
    assert row["metrics"]["holdout"]["accuracy"] > row["metrics"]["holdout_baseline"]["accuracy"]
    assert row["feedback_ids"] == [json.loads(fb.stdout)["feedback_id"]]  # provenance: which feedback it came from
    assert row["pair_ids"]

    # the next run's writer applies it: every segment records the adapter
    proc = run_cli(home, "run", str(clips[1]), "--json", model=tiny_model, env=ADAPT_ENV)
    assert proc.returncode == 0, proc.stderr.decode()
    new_segments = Store.open(home / "memory.db").segments(json.loads(proc.stdout)["stream_id"])
    assert new_segments and all(s["adapter_id"] == adapter_id for s in new_segments)

    out = tmp_path / "cv.gguf"
    assert run_cli(home, "adapter", "export", adapter_id, "--out", str(out)).returncode == 0
    assert out.stat().st_size > 4 * 64
    rb = run_cli(home, "adapter", "rollback")
    assert rb.returncode == 0 and "base model" in rb.stdout.decode()
