"""tools/default_heldout.py: where each category's answers were lost (writer, retrieval, reader)."""

from conftest import load_tool

tool = load_tool("default_heldout")


def g(category, right, held, shown_held):
    return {"category": category, "right": right, "abstained": False, "held": held, "shown_held": shown_held}


def test_stages_split_each_category_by_what_the_memories_held_and_what_was_shown():
    graded = [g("person", True, True, True), g("person", False, True, False), g("person", False, False, False),
              g("person", True, False, False), g("counting", True, None, None), g("counting", False, None, None)]
    table = tool.stages(graded)
    assert table["person"] == {"n": 4, "right": 2, "acc_ci95": tool.wilson(2, 4), "held": 2, "shown_held": 1,
                               "right_when_shown": 1, "right_otherwise": 1}
    assert table["counting"] == {"n": 2, "right": 1, "acc_ci95": tool.wilson(1, 2)}  # no few memories decide it
    md = tool.stage_table(table).splitlines()
    assert md[2] == "| counting | 2 | 1 (50.0 %, 9.5-90.5) | - | - | - | - |"
    assert md[3] == "| person | 4 | 2 (50.0 %, 15.0-85.0) | 2 | 1 | 1 of 1 | 1 of 3 |"


def test_a_run_without_home_removes_its_temporary_homes_and_a_given_home_stays(tmp_path, monkeypatch):
    homes = []

    def fake_seed(seed, minutes, home, model=None):  # a seed's eval home, as `edge-agent eval` leaves it
        home.mkdir(parents=True)
        (home / "store.db").write_bytes(b"x" * 1000)
        homes.append(home)
        return {"seed": seed, "n": 2, "answered": 2, "correct": 1, "hist": {"A": 2}, "abstained": 0,
                "cited_when_answered": 2, "n_answered_rows": 2, "memories": 3, "repeated_sentence_memories": 0,
                "graded": [g("person", True, True, True), g("person", False, True, True)],
                "writer_fields": {"segments": 3, "written": 2, **{k: [1, 2] for k in tool.FIELD_KEYS}}}

    monkeypatch.setattr(tool, "one_seed", fake_seed)
    monkeypatch.setattr("sys.argv", ["default_heldout", "--seeds", "1-2", "--out", str(tmp_path / "a.json")])
    tool.main()
    assert len(homes) == 2 and not any(h.exists() or h.parent.exists() for h in homes)
    kept = tmp_path / "kept"
    monkeypatch.setattr("sys.argv", ["default_heldout", "--seeds", "3", "--home", str(kept),
                                     "--out", str(tmp_path / "b.json")])
    tool.main()
    assert (kept / "s3" / "store.db").stat().st_size == 1000
    summary = tool.json.loads((tmp_path / "b.json").read_text())
    assert summary["acc"] == 0.5 and summary["writer_fields"]["room"]["acc"] == 0.5


def test_a_question_asked_twice_is_graded_against_each_asking_in_turn(tmp_path):
    """Held-out seed 9013 asks "Who did I meet most recently in the bedroom?" with the same options at 2:54
    (<face_3>, D) and at 3:19 (<face_2>, A). Each answer is graded against its own asking; keyed by the text alone
    both were graded against the later one (484 right counted where `edge-agent eval` counted 483)."""
    import json
    import sqlite3

    world = load_tool("train_default").text_world(9013, 9.0)
    twice = [q for q in world["questions"] if q["question"] == "Who did I meet most recently in the bedroom?"]
    assert [(q["asked_at"], q["answer"]) for q in twice] == [(174.8, "D"), (199.8, "A")]
    questions_json = tmp_path / "questions.json"
    questions_json.write_text(json.dumps({"segment_seconds": 10.0, "questions": world["questions"]}))
    db = sqlite3.connect(":memory:")
    db.executescript("CREATE TABLE memories (id INTEGER, segment_id INTEGER, text TEXT);"
                     "CREATE TABLE segments (id INTEGER, idx INTEGER);"
                     "CREATE TABLE answer_citations (answer_id INTEGER, memory_id INTEGER);")
    start = 1796461200.0  # the store's clock: the replay's start + the clip time
    rows = [(1, "A", 0, twice[1]["question"], json.dumps(twice[1]["options"]), 0, start + 199.8),
            (2, "D", 0, twice[0]["question"], json.dumps(twice[0]["options"]), 0, start + 174.8),
            (3, "B", 0, "A question the clip never asked?", "[]", 0, start + 10.0)]
    graded = tool.graded_answers(db, questions_json, rows)
    assert [g["right"] for g in graded] == [True, True]
    assert tool.match_questions({"questions": twice}, [(r[3], r[4], r[6]) for r in rows]) == [twice[1], twice[0], None]


def test_written_fields_count_each_written_segment_by_its_caption_and_the_rooms_the_wearer_was_in():
    """Room, colour and kind of each stored segment's memory against its caption, the room apart for segments the
    wearer walked into another room in; a walk at a segment's first instant belongs to that segment alone; a
    segment never written (after the clip's last question) is not counted, one stored without a memory is a miss."""
    import sqlite3

    captions = ["I was cooking at the counter in the kitchen.",
                "I took the red cup from the table in the kitchen to the desk in the office.",
                "I was typing on the laptop at the desk in the office.",
                "I looked around the bedroom.",
                "I was folding clothes at the bed in the bedroom."]
    clip = {"world": {"start_room": "kitchen"},
            "events": [{"t": 14.0, "type": "enter_room", "room": "office"},
                       {"t": 30.0, "type": "enter_room", "room": "bedroom"}],
            "segments": [{"index": i, "t_start": 10.0 * i, "t_end": 10.0 * (i + 1), "caption": c}
                         for i, c in enumerate(captions)]}
    db = sqlite3.connect(":memory:")
    db.executescript("CREATE TABLE segments (id INTEGER, idx INTEGER);"
                     "CREATE TABLE memories (id INTEGER, segment_id INTEGER, text TEXT);")
    db.executemany("INSERT INTO segments VALUES (?, ?)", [(10 + i, i) for i in range(4)])  # segment 4 unwritten
    db.executemany("INSERT INTO memories VALUES (?, ?, ?)", [
        (1, 10, captions[0]),
        (2, 11, "I picked up the blue cup from the table in the kitchen."),  # one of two rooms; wrong colour
        (3, 12, "I walked into the bedroom.")])  # a room walked into only at the next segment's first instant
    out = tool.written_fields(db, clip)  # segment 3 (index 3) is stored without a memory
    assert out == {"segments": 5, "written": 4, "room": [1, 4], "room_one_room": [1, 3], "room_two_rooms": [0, 1],
                   "room_visited": [2, 4], "colour": [0, 1], "object": [1, 1]}
    summed = tool.writer_fields([out, out])
    assert summed["written"] == 8 and summed["room"] == {"acc": 0.25, "right": 2, "n": 8, "ci95": tool.wilson(2, 8)}
