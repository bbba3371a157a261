"""`edge-agent demo` and `edge-agent doctor` as a new user runs them."""

import json

from conftest import run_cli


def test_demo_runs_end_to_end_offline(tmp_path, tiny_model):
    proc = run_cli(tmp_path / "home", "demo", "--minutes", "0.5", "--seed", "2", "--json", model=tiny_model)
    assert proc.returncode == 0, proc.stderr.decode()
    res = json.loads(proc.stdout)
    ing = res["ingest"]
    assert ing["segments_written"] + ing["segments_failed"] == 3 and ing["error"] is None
    assert 1 <= res["asked"] <= 5 and len(res["answers"]) == res["asked"]
    assert all(a["choice"] in list("ABCDE") or a["abstained"] for a in res["answers"])
    # the score is the answers' own agreement with the clip's truth, and every answer is in the wearer's store
    assert all(a["truth"] in list("ABCD") for a in res["answers"])
    assert res["correct"] == sum(a["choice"] == a["truth"] for a in res["answers"])
    from edge_agent.store import Store

    with Store.open(tmp_path / "home" / "memory.db") as store:
        stored = {a["id"]: a for a in store.answers()}
    assert {a["answer_id"] for a in res["answers"]} <= set(stored)
    assert all(stored[a["answer_id"]]["choice"] == a["choice"] for a in res["answers"])


def test_doctor_reports_each_check(tmp_path, tiny_model):
    proc = run_cli(tmp_path / "home", "doctor", "--json", model=tiny_model)
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert proc.returncode == 0, checks
    assert checks["model"]["ok"] and "qwen3vl" in checks["model"]["detail"] and "24 layers" in checks["model"]["detail"]
    assert checks["llama-cpp-python"]["detail"].startswith("0.3.36")
    assert checks["store"]["ok"]


def test_doctor_fails_without_a_model(tmp_path):
    proc = run_cli(tmp_path / "home", "doctor", "--json", model=tmp_path / "nowhere")
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert proc.returncode == 1
    assert not checks["model"]["ok"] and "nowhere" in checks["model"]["detail"]
