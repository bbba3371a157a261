"""Benchmark loaders on small fixture files written here in each benchmark's published format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import DataError
from edge_agent.eval.loaders import (egolife_clock, load_benchmark, load_egolife, load_egotempo, load_synthetic,
                                     load_videomme, probe_duration)


def write_video(path: Path, seconds: float, fps: float = 5.0) -> Path:
    """A tiny real mp4 (32x32, mp4v) of `seconds` length, so OpenCV probing is exercised for real."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (32, 32))
    assert writer.isOpened()
    for i in range(int(round(seconds * fps))):
        writer.write(np.full((32, 32, 3), (i * 17) % 255, np.uint8))
    writer.release()
    return path


# ------------------------------------------------------------------------------------------------ VideoMME

def videomme_rows() -> list[dict]:
    def row(vid, video_id, qid, task, answer):
        return {"video_id": video_id, "duration": "short", "domain": "Knowledge", "sub_category": "Humanity & History",
                "url": f"https://www.youtube.com/watch?v={vid}", "videoID": vid, "question_id": qid,
                "task_type": task, "question": f"Question {qid}?",
                "options": ["A. Apples.", "B. Pears.", "C. Plums.", "D. Figs."], "answer": answer}
    return [row("fFjv93ACGo8", "001", "001-1", "Counting Problem", "C"),
            row("fFjv93ACGo8", "001", "001-2", "Object Recognition", "A"),
            row("JPcNYB2Ltfg", "002", "002-1", "Action Reasoning", "D")]


def write_videomme(root: Path, rows: list[dict] | None = None, videos: dict[str, float] | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "videomme").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows or videomme_rows()), root / "videomme" / "test-00000-of-00001.parquet")
    for vid, seconds in (videos if videos is not None else {"fFjv93ACGo8": 2.0, "JPcNYB2Ltfg": 1.0}).items():
        write_video(root / "data" / f"{vid}.mp4", seconds)
    return root


def test_probe_duration_reads_frames_over_fps(tmp_path):
    assert probe_duration(write_video(tmp_path / "v.mp4", 2.0, fps=5)) == pytest.approx(2.0)
    assert probe_duration(tmp_path / "absent.mp4") is None


def test_videomme_loads_streams_in_order_asked_at_video_end(tmp_path):
    bench = load_videomme(write_videomme(tmp_path))
    assert bench.name == "videomme" and bench.n_questions == 3 and bench.skipped == []
    assert [it.key for it in bench.items] == ["videomme/fFjv93ACGo8", "videomme/JPcNYB2Ltfg"]
    first = bench.items[0]
    assert first.pieces[0].path == tmp_path / "data" / "fFjv93ACGo8.mp4" and first.pieces[0].offset == 0.0
    assert first.duration == pytest.approx(2.0)
    q = first.questions[0]
    assert q.id == "001-1" and q.video == "videomme/fFjv93ACGo8" and q.asked_at == pytest.approx(2.0)
    assert q.options == ("Apples.", "Pears.", "Plums.", "Figs.") and q.answer == "C"
    assert q.lettered_options() == ["A. Apples.", "B. Pears.", "C. Plums.", "D. Figs."]
    assert q.category == "Counting Problem" and q.meta["duration"] == "short" and q.meta["domain"] == "Knowledge"
    assert bench.items[1].questions[0].asked_at == pytest.approx(1.0)


def test_videomme_without_probe_asks_after_the_whole_stream(tmp_path):
    bench = load_videomme(write_videomme(tmp_path), probe=False)
    assert all(math.isinf(q.asked_at) for q in bench.questions)


def test_videomme_missing_video_is_an_error_or_skipped(tmp_path):
    root = write_videomme(tmp_path, videos={"fFjv93ACGo8": 2.0})
    with pytest.raises(DataError, match="JPcNYB2Ltfg.mp4"):
        load_videomme(root)
    bench = load_videomme(root, skip_missing=True)
    assert [it.key for it in bench.items] == ["videomme/fFjv93ACGo8"]
    assert len(bench.skipped) == 1 and "JPcNYB2Ltfg" in bench.skipped[0]


def test_videomme_bad_data_names_path_and_what_is_missing(tmp_path):
    with pytest.raises(DataError, match=r"absent.*folder not found"):
        load_videomme(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty.*no parquet file"):
        load_videomme(tmp_path / "empty")
    rows = [{k: v for k, v in r.items() if k != "task_type"} for r in videomme_rows()]
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet.*no column\(s\) task_type") as e:
        load_videomme(write_videomme(tmp_path / "bad", rows))
    assert "\n" not in str(e.value)
    (tmp_path / "junk" / "videomme").mkdir(parents=True)
    (tmp_path / "junk" / "videomme" / "x.parquet").write_text("not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        load_videomme(tmp_path / "junk")


# ------------------------------------------------------------------------------------------------ EgoLife

def egolife_item(id_, qdate, qtime, tdate=None, ttime=None, **extra) -> dict:
    item = {"ID": id_, "query_time": {"date": qdate, "time": qtime}, "type": "EntityLog", "need_audio": False,
            "need_name": True, "last_time": False, "trigger": "t", "question": f"Who used the screwdriver {id_}?",
            "choice_a": "Tasha", "choice_b": "Alice", "choice_c": "Shure", "choice_d": "Lucia", "answer": "B",
            "keywords": "use screwdriver", "reason": "r"}
    if tdate:
        item["target_time"] = {"date": tdate, "time": ttime}
    item.update(extra)
    return item


def write_egolife(root: Path, items: list[dict], qa_name: str = "EgoLifeQA_A1_JAKE.json",
                  pieces=("DAY1_A1_JAKE_11100000", "DAY1_A1_JAKE_11103000", "DAY1_A1_JAKE_11120000",
                          "DAY2_A1_JAKE_09000000")) -> Path:
    for name in pieces:
        day, code, person = name.split("_")[:3]
        path = root / f"{code}_{person}" / day / f"{name}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")  # the loader reads names only; EgoLife pieces are nominally 30 s
    (root / "EgoLifeQA").mkdir(parents=True, exist_ok=True)
    (root / "EgoLifeQA" / qa_name).write_text(json.dumps(items))
    return root


EGOLIFE_ITEMS = [
    egolife_item("1", "DAY1", "11210217", "DAY1", "11152408"),
    egolife_item("2", "DAY1", "11105010"),
    egolife_item("3", "DAY2", "09001000", "DAY1", "11200000"),
]


def test_egolife_clock_is_seconds_since_day1_midnight_with_20fps_frames():
    assert egolife_clock("DAY1", "11210217") == pytest.approx(11 * 3600 + 21 * 60 + 2 + 17 / 20)
    assert egolife_clock("DAY2", "00000000") == 86400.0
    assert egolife_clock("DAY1", "11210225") == 11 * 3600 + 21 * 60 + 2  # frame > 19 read as 0, as upstream
    with pytest.raises(ValueError):
        egolife_clock("day one", "11210217")
    with pytest.raises(ValueError):
        egolife_clock("DAY1", "1121")


def test_egolife_groups_by_person_and_day_with_stream_time_from_first_piece(tmp_path):
    bench = load_egolife(write_egolife(tmp_path, EGOLIFE_ITEMS))
    assert [it.key for it in bench.items] == ["egolife/A1_JAKE/DAY1", "egolife/A1_JAKE/DAY2"]
    day1, day2 = bench.items
    assert [p.offset for p in day1.pieces] == [0.0, 30.0, 120.0]  # the 11:11-11:12 gap stays a gap
    assert day1.pieces[0].path.name == "DAY1_A1_JAKE_11100000.mp4"
    assert day1.duration == 150.0
    # sorted by asked_at: question 2 at 11:10:50.50, question 1 at 11:21:02 + 17/20
    assert [q.id for q in day1.questions] == ["A1_JAKE/2", "A1_JAKE/1"]
    q1 = day1.questions[1]
    assert q1.asked_at == pytest.approx(662.85) and q1.evidence == pytest.approx((324.4, 324.4))
    assert q1.options == ("Tasha", "Alice", "Shure", "Lucia") and q1.answer == "B" and q1.category == "EntityLog"
    assert day1.questions[0].asked_at == pytest.approx(50.5)
    q3 = day2.questions[0]
    assert q3.asked_at == pytest.approx(10.0) and q3.evidence is None  # its target lies on DAY1
    assert q3.meta["query_time"] == {"date": "DAY2", "time": "09001000"}


def test_egolife_person_streams_span_days(tmp_path):
    bench = load_egolife(write_egolife(tmp_path, EGOLIFE_ITEMS), group="person")
    [item] = bench.items
    assert item.key == "egolife/A1_JAKE"
    assert [p.offset for p in item.pieces] == [0.0, 30.0, 120.0, 86400.0 - 7800.0]
    q3 = item.questions[-1]
    assert q3.asked_at == pytest.approx(78610.0) and q3.evidence == pytest.approx((600.0, 600.0))


def test_egolife_question_before_first_piece_is_asked_at_zero(tmp_path):
    bench = load_egolife(write_egolife(tmp_path, [egolife_item("9", "DAY1", "10000000")]))
    assert bench.items[0].questions[0].asked_at == 0.0


def test_egolife_person_from_identity_field_and_ambiguity(tmp_path):
    pieces = ("DAY1_A1_JAKE_11100000", "DAY1_A2_ALICE_11100000")
    items = [egolife_item("1", "DAY1", "11101000", identity="A2")]
    bench = load_egolife(write_egolife(tmp_path / "a", items, qa_name="qa.json", pieces=pieces))
    assert bench.items[0].key == "egolife/A2_ALICE/DAY1"
    with pytest.raises(DataError, match="does not say whose video"):
        load_egolife(write_egolife(tmp_path / "b", [egolife_item("1", "DAY1", "11101000")], qa_name="qa.json",
                                   pieces=pieces))


def test_egolife_missing_videos_and_fields(tmp_path):
    root = write_egolife(tmp_path / "a", EGOLIFE_ITEMS, pieces=("DAY1_A1_JAKE_11100000",))
    with pytest.raises(DataError, match="no videos for A1_JAKE DAY2"):
        load_egolife(root)
    bench = load_egolife(root, skip_missing=True)
    assert [it.key for it in bench.items] == ["egolife/A1_JAKE/DAY1"] and len(bench.skipped) == 1
    bad = [{k: v for k, v in EGOLIFE_ITEMS[0].items() if k != "choice_c"}]
    with pytest.raises(DataError, match=r"EgoLifeQA_A1_JAKE.json.*item 0 has no field\(s\) choice_c"):
        load_egolife(write_egolife(tmp_path / "b", bad))
    (tmp_path / "c").mkdir()
    with pytest.raises(DataError, match="no QA json file"):
        load_egolife(tmp_path / "c")


# ------------------------------------------------------------------------------------------------ EgoTempo

CLIP_A = "27470817-f803-45b4-b9d4-e754cb3196bc_368.4019995568589_403.56079044314106"
CLIP_B = "0a1b2c3d-0000-1111-2222-333344445555_10.0_42.5"


def write_egotempo(root: Path, clips=(CLIP_A, CLIP_B)) -> Path:
    anns = [{"question_id": f"{CLIP_A}_0", "clip_id": CLIP_A, "question_type": "object-specific action",
             "question": "What does the person pick up before rubbing their hands together?",
             "answer": "The oil remover spray."},
            {"question_id": f"{CLIP_A}_1", "clip_id": CLIP_A, "question_type": "action counting",
             "question": "How many times does the person open the drawer?", "answer": "Twice."},
            {"question_id": f"{CLIP_B}_0", "clip_id": CLIP_B, "question_type": "locating objects",
             "question": "Where did the person leave the keys?", "answer": "On the kitchen counter."}]
    root.mkdir(parents=True, exist_ok=True)
    (root / "egotempo_openQA.json").write_text(json.dumps({"info": {"date": "2025-03-15", "version": "1.0"},
                                                           "annotations": anns}))
    for clip in clips:
        write_video(root / "trimmed_clips" / f"{clip}.mp4", 1.0)
    return root


def test_egotempo_open_ended_asked_at_clip_end(tmp_path):
    bench = load_egotempo(write_egotempo(tmp_path))
    assert [it.key for it in bench.items] == [f"egotempo/{CLIP_A}", f"egotempo/{CLIP_B}"]
    q = bench.items[0].questions[0]
    assert q.options is None and not q.is_multiple_choice and q.answer == "The oil remover spray."
    assert q.category == "object-specific action" and q.asked_at == pytest.approx(1.0)
    assert bench.has_open_ended and bench.n_questions == 3


def test_egotempo_length_from_clip_id_when_not_probed(tmp_path):
    bench = load_egotempo(write_egotempo(tmp_path), probe=False)
    assert bench.items[1].questions[0].asked_at == pytest.approx(32.5)


def test_egotempo_missing_annotations_or_clip(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(DataError, match=r"egotempo_openQA.json.*file not found"):
        load_egotempo(tmp_path / "a")
    root = write_egotempo(tmp_path / "b", clips=(CLIP_A,))
    with pytest.raises(DataError, match=f"clip video {CLIP_B}.mp4 not found"):
        load_egotempo(root)
    assert len(load_egotempo(root, skip_missing=True).items) == 1
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "egotempo_openQA.json").write_text(json.dumps({"info": {}}))
    with pytest.raises(DataError, match="no 'annotations' list"):
        load_egotempo(tmp_path / "c")


# ------------------------------------------------------------------------------------------------ synthetic

def synth_questions() -> list[dict]:
    return [
        {"id": "q2", "category": "object_location", "question": "Where was the red cube?",
         "options": ["on the table", "on the shelf", "in the box", "on the floor"], "answer": "b",
         "open_answer": "on the shelf", "asked_at": 90.0, "evidence": {"t_start": 20.0, "t_end": 30.0}},
        {"id": "q1", "category": "counting", "question": "How many people came in?",
         "options": ["A. one", "B. two", "C. three", "D. four"], "answer": "C", "open_answer": "three",
         "asked_at": 45.5, "evidence": [{"t_start": 5.0, "t_end": 10.0}, {"t_start": 30.0, "t_end": 40.0}]},
    ]


def test_synthetic_loads_questions_json_and_video(tmp_path):
    write_video(tmp_path / "clip" / "video.mp4", 2.0)
    (tmp_path / "clip" / "questions.json").write_text(json.dumps(synth_questions()))
    bench = load_benchmark("synthetic", tmp_path / "clip")
    [item] = bench.items
    assert item.key == "synthetic/clip" and item.duration == pytest.approx(2.0)
    assert [q.id for q in item.questions] == ["q1", "q2"]  # replay order: by asked_at
    q1, q2 = item.questions
    assert q1.options == ("one", "two", "three", "four") and q1.evidence == (5.0, 40.0)
    assert q2.answer == "B" and q2.evidence == (20.0, 30.0) and q2.meta["open_answer"] == "on the shelf"


def test_synthetic_accepts_wrapped_list_and_names_missing_parts(tmp_path):
    write_video(tmp_path / "a" / "video.mp4", 1.0)
    (tmp_path / "a" / "questions.json").write_text(json.dumps({"seed": 1, "questions": synth_questions()}))
    assert load_synthetic(tmp_path / "a").n_questions == 2
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "questions.json").write_text(json.dumps(synth_questions()))
    with pytest.raises(DataError, match="video.mp4 not found"):
        load_synthetic(tmp_path / "b")
    bad = synth_questions()
    bad[0]["answer"] = "E"
    (tmp_path / "a" / "questions.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"questions.json.*answer='E' is not one of A-D"):
        load_synthetic(tmp_path / "a")


def test_unknown_benchmark_is_named(tmp_path):
    with pytest.raises(DataError, match="benchmark 'mmlu': unknown"):
        load_benchmark("mmlu", tmp_path)
