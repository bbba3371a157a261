"""The face registry: people numbered as the wearer meets them, in the world and in the memories."""

import json
from pathlib import Path

import numpy as np
import pytest

from edge_agent.config import load_config, replace
from edge_agent.errors import ModelError
from edge_agent.memory.faces import FACES_FILE, FaceModel, FaceRegistry, open_face_registry, retag
from edge_agent.runtime import Ingestor
from edge_agent.store import Store
from edge_agent.synth import generate
from edge_agent.synth.world import build_script, build_world
from edge_agent.types import Frame, Segment
from edge_agent.vlm.fake import ScriptedBackend
from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "models" / "default" / FACES_FILE


@pytest.fixture(scope="module")
def faces_tool():
    return load_tool("train_faces")


def test_people_are_numbered_in_the_order_the_wearer_first_meets_them():
    firsts = 0
    for seed in range(12):
        rng = np.random.default_rng([seed, 0])
        world = build_world(rng)
        looks = {p.tag: (p.skin, p.hair, p.hair_style, p.glasses, p.shirt) for p in world.people}
        script = build_script(world, 540.0, rng)
        met = list(dict.fromkeys(e["person"] for e in script.events if e["type"] == "meet"))
        assert met == [f"<face_{i + 1}>" for i in range(len(met))]
        assert [p.tag for p in world.people] == ["<face_1>", "<face_2>", "<face_3>", "<face_4>"]
        for e in script.events:
            if e["type"] == "meet":
                assert e["person"] in e["description"]
        # the shots draw the person the events name, and every person keeps the looks they were drawn with
        meets = [s for s in script.shots if s.kind == "meet"]
        assert [s.person for s in meets] == [e["person"] for e in script.events if e["type"] == "meet"]
        assert sorted(looks.values()) == sorted((p.skin, p.hair, p.hair_style, p.glasses, p.shirt)
                                                for p in world.people)
        firsts += len(met)
    assert firsts >= 30  # the worlds meet people at all


def test_the_numpy_face_network_gives_its_torch_twins_outputs(tmp_path, faces_tool):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = faces_tool.build_net()
    faces_tool.save_npz(net, tmp_path / "f.npz", {})
    model = FaceModel.load(tmp_path / "f.npz")
    images = [np.random.default_rng(i).integers(0, 256, (96, 128, 3), dtype=np.uint8) for i in range(3)]
    x = torch.from_numpy(np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - 0.5)
    with torch.no_grad():
        ref = net(x).numpy()
    got = np.stack([model.features(im) for im in images])
    assert ref.shape == got.shape == (3, 2 + sum(len(v) for v in faces_tool.GROUPS.values()))
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_training_the_face_network_lowers_its_loss_and_moves_its_weights(faces_tool):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    frames = faces_tool.frames_of([50000, 50001, 50002, 50003], jobs=1)
    people = [f for f in frames if f["present"] != 0]
    assert len(people) >= 10
    net = faces_tool.build_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    rng = np.random.default_rng(0)
    others = [f for f in frames if f["present"] == 0]
    losses = []
    for _ in range(80):
        batch = [people[i] for i in rng.integers(len(people), size=16)] + \
                [others[i] for i in rng.integers(len(others), size=16)]
        loss = faces_tool.loss_of(net, *faces_tool.to_tensor(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10])
    assert all(not torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_retag_gives_the_memorys_tags_the_registrys_in_reading_order():
    assert retag("I met <face_3> in the kitchen. I was talking with <face_3>.", ["<face_1>"]) == \
        "I met <face_1> in the kitchen. I was talking with <face_1>."
    assert retag("I met <face_3>. I met <face_4>.", ["<face_2>", "<face_1>"]) == "I met <face_2>. I met <face_1>."
    # more tags than people seen: the rest stay as written; no tag, no person: unchanged
    assert retag("I met <face_3>. I met <face_4>.", ["<face_1>"]) == "I met <face_1>. I met <face_4>."
    assert retag("I washed the dishes.", ["<face_2>"]) == "I washed the dishes."
    assert retag("I met <face_2>.", []) == "I met <face_2>."


def test_the_store_numbers_new_people_in_order_matches_known_ones_and_forget_all_removes_them(tmp_path):
    store = Store.open(tmp_path / "m.db")
    a, b = np.array([1, 0, 0, 0], np.float32), np.array([0, 1, 0, 0], np.float32)
    assert store.match_face(a, 0.7, 2, 10.0) == "<face_1>"
    assert store.match_face(b, 0.7, 1, 20.0) == "<face_2>"
    assert store.match_face(np.array([0.9, 0.1, 0, 0], np.float32), 0.7, 2, 30.0) == "<face_1>"
    assert store.match_face(np.array([0.5, 0.5, 0.7, 0], np.float32), 0.7, 1, 40.0) == "<face_3>"
    rows = store.faces()
    assert [(r["tag"], r["n_frames"], r["first_seen"], r["last_seen"]) for r in rows] == [
        ("<face_1>", 4, 10.0, 30.0), ("<face_2>", 1, 20.0, 20.0), ("<face_3>", 1, 40.0, 40.0)]
    # a vector of another network (other length) is never the same person
    assert store.match_face(np.ones(6, np.float32), 0.0, 1, 50.0) == "<face_4>"
    counts = store.forget(everything=True)
    assert counts["faces"] == 4 and store.faces() == []
    assert store.match_face(a, 0.7, 1, 60.0) == "<face_1>"  # numbering starts again after forget --all
    store.close()


def test_faces_on_without_a_network_is_a_one_line_error_and_off_or_auto_write_without(tmp_path):
    cfg = load_config(tmp_path / "home", environ={})
    store = Store.open(tmp_path / "m.db")
    with pytest.raises(ModelError) as e:
        open_face_registry(store, replace(cfg, "faces", enabled="on"), tmp_path)
    assert FACES_FILE in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ModelError, match="nowhere.npz"):
        open_face_registry(store, replace(cfg, "faces", model=str(tmp_path / "nowhere.npz")), None)
    assert open_face_registry(store, cfg, tmp_path) is None  # auto, no faces.npz there
    assert open_face_registry(store, replace(cfg, "faces", enabled="off"), SHIPPED.parent) is None
    (tmp_path / FACES_FILE).write_bytes(b"not an npz")
    with pytest.raises(ModelError, match="not readable"):
        open_face_registry(store, cfg, tmp_path)
    store.close()


def segments_of(paths, frame_size=128):
    from edge_agent.capture import open_source, segment_stream
    from edge_agent.config import CaptureConfig

    with open_source(str(paths.video)) as src:
        return list(segment_stream(src, CaptureConfig(frame_size=frame_size)))


@pytest.mark.skipif(not SHIPPED.is_file(), reason="the default model ships no face network")
def test_the_shipped_face_network_numbers_a_held_out_clips_people_as_the_world_does(tmp_path):
    """Held-out worlds (never trained on): the registry's tag for each segment where a person is in view is the
    world's tag (numbered by first meeting), and segments without anyone register nobody."""
    cfg = load_config(tmp_path / "home", environ={})
    right = wrong = missed = false_people = empty = 0
    for seed in (9100, 9101, 9102, 9103, 9104):
        paths = generate(seed=seed, minutes=6.0, out_dir=tmp_path / f"s{seed}")
        events = json.loads(paths.events.read_text())["events"]
        store = Store.open(tmp_path / f"s{seed}.db")
        registry = FaceRegistry(store, FaceModel.load(SHIPPED), cfg.faces)
        for seg in segments_of(paths):
            # people clearly in view for at least one keyframe: met from 1.5 s in until 1.5 s before they leave
            truth = list(dict.fromkeys(e["person"] for e in events if e["type"] == "meet" for f in seg.keyframes
                                       if e["t"] + 0.5 <= f.t <= e["t_end"] - 1.5))
            nobody = not any(e["type"] == "meet" and e["t"] - 1.0 <= f.t <= e["t_end"] for e in events
                             for f in seg.keyframes)
            got = registry.people_in(seg)
            if truth:
                right += got[:1] == truth[:1]
                wrong += bool(got) and got[:1] != truth[:1]
                missed += not got
            elif nobody:
                empty += 1
                false_people += bool(got)
        store.close()
    n = right + wrong + missed
    assert n >= 30 and empty >= 100, (n, empty)
    assert right / n >= 0.85, (right, wrong, missed)
    assert false_people / empty <= 0.05, (false_people, empty)


def test_the_ingestor_writes_the_registrys_tags_into_memories(tmp_path):
    """A writer that always names <face_4>: the stored memories name whom the registry saw, numbered as met."""
    if not SHIPPED.is_file():
        pytest.skip("the default model ships no face network")
    paths = generate(seed=9103, minutes=3.0, out_dir=tmp_path / "clip")
    events = json.loads(paths.events.read_text())["events"]
    meets = [e for e in events if e["type"] == "meet"]
    assert meets and meets[0]["person"] == "<face_1>"
    cfg = load_config(tmp_path / "home", environ={})
    cfg = replace(replace(cfg, "writer", candidate_share=0.0), "capture", sample_fps=2.0)
    store = Store.open(cfg.db_path)
    backend = ScriptedBackend(lambda call: json.dumps({"description": "I met <face_4> in the kitchen."}))
    with Ingestor(str(paths.video), store, backend, cfg) as ing:
        assert ing.faces is not None  # the default model folder ships faces.npz: auto turns it on
        ing.advance()
    mems = store.memories()
    first = meets[0]  # its segments (person in view from 1.5 s in until 1.5 s before they leave) name <face_1>
    during = [m["text"] for m in mems if m["t_start"] < first["t_end"] - 1.5 and m["t_end"] > first["t"] + 0.5]
    assert during and all(t == "I met <face_1> in the kitchen." for t in during)
    n_met = len({e["person"] for e in meets})
    assert [r["tag"] for r in store.faces()] == [f"<face_{i + 1}>" for i in range(n_met)]
    # segments with nobody in view (most of them) keep the writer's words
    assert sum(m["text"] == "I met <face_4> in the kitchen." for m in mems) >= len(mems) // 2
    store.close()


def test_a_segment_without_keyframes_shows_nobody(tmp_path):
    if not SHIPPED.is_file():
        pytest.skip("the default model ships no face network")
    cfg = load_config(tmp_path / "home", environ={})
    store = Store.open(tmp_path / "m.db")
    registry = FaceRegistry(store, FaceModel.load(SHIPPED), cfg.faces)
    assert registry.people_in(Segment(0, 0.0, 10.0, [])) == []
    grey = Frame(0, 0.0, np.full((96, 128, 3), 128, np.uint8))
    assert registry.people_in(Segment(0, 0.0, 10.0, [grey])) == [] and store.faces() == []
    store.close()


def _ingest_a_meeting(tmp_path, candidate_share: float):
    """A 90-second held-out clip whose first meeting is <face_1>'s, ingested with the shipped face network by a
    writer that always names <face_4>, 2 candidates a sampled segment: (store, cfg, backend, the first meeting)."""
    if not SHIPPED.is_file():
        pytest.skip("the default model ships no face network")
    paths = generate(seed=9103, minutes=1.5, out_dir=tmp_path / "clip")
    first = next(e for e in json.loads(paths.events.read_text())["events"] if e["type"] == "meet")
    cfg = load_config(tmp_path / "home", environ={})
    cfg = replace(replace(cfg, "writer", candidate_share=candidate_share, candidates_per_segment=2), "capture",
                  sample_fps=2.0)
    store = Store.open(cfg.db_path)
    backend = ScriptedBackend(lambda call: json.dumps({"description": "I met <face_4> in the kitchen."}))
    with Ingestor(str(paths.video), store, backend, cfg) as ing:
        ing.advance()
    return store, cfg, backend, first


def test_phase_two_candidates_name_the_registrys_people_as_the_memory_does(tmp_path):
    """Sampled alternatives are kept with the registry's tags: a pair then differs in what it keeps, not in which
    tag the writer guessed (the written memory already carries the registry's)."""
    store, _, _, first = _ingest_a_meeting(tmp_path, candidate_share=1.0)
    rows = store.conn.execute("SELECT s.t_start, c.text, c.source FROM candidates c JOIN segments s "
                              "ON s.id = c.segment_id").fetchall()
    during = [(text, source) for t0, text, source in rows if first["t"] + 0.5 < t0 + 10 and t0 < first["t_end"] - 1.5]
    assert {source for _, source in during} == {"writer", "sampled"}
    assert all(json.loads(text)["description"] == "I met <face_1> in the kitchen." for text, _ in during), during
    store.close()


def test_candidates_adapt_samples_later_name_the_people_stored_with_their_segment(tmp_path):
    """`adapt` samples candidates later, from kept frames, for the segments the wearer asked about: they name the
    people the registry saw in that segment (stored with it, `segments.people`), as the written memory does, and a
    segment with nobody in view keeps the writer's words. `forget` clears a segment's people with it."""
    from edge_agent.adapt.job import fill_candidates

    store, cfg, backend, first = _ingest_a_meeting(tmp_path, candidate_share=0.0)
    segments = store.conn.execute("SELECT id, t_start, people FROM segments ORDER BY idx").fetchall()
    during = {sid for sid, t0, _ in segments if first["t"] + 0.5 < t0 + 10 and t0 < first["t_end"] - 1.5}
    assert during and all(people == "<face_1>" for sid, _, people in segments if sid in during)
    assert sum(people is None for _, _, people in segments) >= len(segments) // 2  # nobody in view
    assert store.conn.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == 0  # none kept while writing
    assert fill_candidates(store, backend, cfg, [sid for sid, _, _ in segments]) == 2 * len(segments)
    sampled = store.conn.execute("SELECT segment_id, text FROM candidates WHERE source = 'sampled'").fetchall()
    people = {sid: tags for sid, _, tags in segments}
    for sid, text in sampled:
        named = json.loads(text)["description"]
        if sid in during:
            assert named == "I met <face_1> in the kitchen.", (sid, named)
        elif people[sid] is None:
            assert named == "I met <face_4> in the kitchen.", (sid, named)
    assert {sid for sid, _ in sampled} >= during
    store.forget(everything=True)
    assert store.conn.execute("SELECT COUNT(*) FROM segments WHERE people IS NOT NULL").fetchone()[0] == 0
    store.close()
