"""`edge-agent eval --bench synthetic` end to end on the tiny model: replay -> answers at their time -> JSON + report."""

import json
import math

from edge_agent.config import load_config, replace
from edge_agent.eval import load_synthetic, replay
from edge_agent.eval.target import RuntimeTarget
from edge_agent.synth import generate
from edge_agent.vlm.fake import ScriptedBackend

from conftest import run_cli


def test_eval_synthetic_cli_writes_json_and_report(tmp_path, tiny_model):
    report_dir = tmp_path / "report"
    proc = run_cli(tmp_path / "home", "eval", "--bench", "synthetic", "--seed", "1", "--minutes", "2",
                   "--json", "--report", str(report_dir), model=tiny_model)
    assert proc.returncode == 0, proc.stderr.decode()
    results = json.loads(proc.stdout)
    assert len(results) == 1
    r = results[0]
    assert r["benchmark"] == "synthetic" and r["config"] == "baseline" and r["n_questions"] > 0
    assert math.isclose(r["acc"], r["cov"] * r["prec"], abs_tol=1e-9)
    # the replay ingests up to the last question's time: 10 s segments, each written or recorded as failed
    assert r["memory"]["n_segments"] == r["write_latency_s"]["n_segments"] >= 10
    assert r["memory"]["video_seconds"] >= 10 * r["memory"]["n_segments"] - 1e-6
    for name in ("report.md", "results.json", "synthetic_accuracy_by_category.png", "synthetic_acc_cov_prec.png"):
        assert (report_dir / name).stat().st_size > 0
    assert "synthetic" in (report_dir / "report.md").read_text()


def test_replay_answers_each_question_from_memories_written_by_its_time(tmp_path):
    """The real runner around a scripted writer: every shown memory ended by the question's time."""
    data = tmp_path / "clip"
    generate(seed=2, minutes=1, out_dir=data)
    bench = load_synthetic(data)
    cfg = replace(load_config(tmp_path / "home", environ={}), "writer", candidate_share=0.0)

    def reply(call):
        if "Memories (id, time, note):" in call.prompt:
            return json.dumps({"answer": "A", "citations": []})
        clock = call.prompt.rsplit("New segment ", 1)[1].split("-", 1)[0]
        return json.dumps({"description": f"At {clock} I held the red cup."})

    backend = ScriptedBackend(reply)
    runner = RuntimeTarget("baseline", None, None, backend, cfg, tmp_path / "work")
    run = replay(bench, [runner], progress=False)
    assert len(run.outcomes) == bench.n_questions
    asked = [c for c in backend.calls if "Memories (id, time, note):" in c.prompt]
    assert asked, "no question reached the model"
    # The driver raises FutureMemoryError when a shown memory ends after the question's time; here, in addition,
    # each prompt lists only memories whose end clock is not after the question's clock.
    for call in asked:
        text = call.prompt
        asked_at = _seconds(text.split("Asked at: ")[1].split("\n")[0])
        ends = [_seconds(line.split(" ")[1].split("-")[1]) for line in text.splitlines() if line.startswith("[")]
        assert ends and max(ends) <= asked_at
    stats = run.stats[("baseline", bench.items[0].key)]
    assert stats.n_memories == stats.n_segments >= 4 and stats.memory_bytes > 0


def _seconds(clock: str) -> float:
    h, m, s = clock.strip().split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def test_only_the_writer_is_steered_during_eval(tmp_path):
    """A pinned adapter steers every memory write and no answer, as `run` and `ask` do on the device."""
    import numpy as np

    from edge_agent.types import SteeringVector

    data = tmp_path / "clip"
    generate(seed=3, minutes=1, out_dir=data)
    bench = load_synthetic(data)
    cfg = replace(load_config(tmp_path / "home", environ={}), "writer", candidate_share=0.0)
    backend = ScriptedBackend(lambda call: json.dumps({"answer": "A", "citations": []})
                              if "Memories (id, time, note):" in call.prompt
                              else json.dumps({"description": "I held the red cup."}))
    vec = SteeringVector(np.full(backend.hidden_size, 0.1, np.float32), layer=2, scale=1.0,
                         base_model_hash=backend.model_hash)
    replay(bench, [RuntimeTarget("steered", "a1", vec, backend, cfg, tmp_path / "work")], progress=False)
    writes = [c for c in backend.calls if "Memories (id, time, note):" not in c.prompt]
    answers = [c for c in backend.calls if "Memories (id, time, note):" in c.prompt]
    assert writes and answers
    assert all(c.steering is vec for c in writes)
    assert all(c.steering is None for c in answers)
