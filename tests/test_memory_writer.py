"""MemoryWriter around a scripted model: window, prompt contents, retries, recorded failures, candidates."""

import numpy as np

from edge_agent.config import WriterConfig
from edge_agent.memory import MemoryWriter, WindowEntry
from edge_agent.types import Frame, ImagePart, Segment
from edge_agent.vlm.fake import ScriptedBackend


def segment(i: int, n_frames: int = 2) -> Segment:
    frames = [Frame(i * 100 + j, i * 10.0 + j, np.full((32, 32, 3), i * 10 + j, np.uint8)) for j in range(n_frames)]
    return Segment(i, i * 10.0, i * 10.0 + 10.0, frames, frames_seen=20)


def images(call):
    return [p for m in call.messages for p in m.parts if isinstance(p, ImagePart)]


def test_writes_a_valid_memory_greedily_with_the_window_in_the_prompt():
    backend = ScriptedBackend(['{"description": "I put the red cup on the shelf."}'])
    writer = MemoryWriter(backend, WriterConfig(window_segments=3), stream_key="s")
    context = [WindowEntry(segment(i), f"memory {i}.") for i in range(4)]
    result = writer.write(context, segment(4))

    assert result.text == "I put the red cup on the shelf." and result.failure is None
    assert result.attempts == 1
    call = backend.calls[0]
    assert call.sampling.temperature == 0.0 and call.json_schema["required"] == ["description"]
    # window k=3: the two most recent earlier segments and the new one, frames keyed for the image cache
    assert [p.key for p in images(call)] == ["s/2/200", "s/2/201", "s/3/300", "s/3/301", "s/4/400", "s/4/401"]
    assert "memory 2." in call.prompt and "memory 3." in call.prompt and "memory 1." not in call.prompt
    assert "New segment 00:00:40-00:00:50" in call.prompt


def test_a_window_of_one_shows_the_new_segment_alone():
    # the embedded default's profile: earlier frames and memories in the prompt made it name the wrong object
    backend = ScriptedBackend(['{"description": "I put the red cup on the shelf."}'])
    writer = MemoryWriter(backend, WriterConfig(window_segments=1), stream_key="s")
    result = writer.write([WindowEntry(segment(i), f"memory {i}.") for i in range(4)], segment(4))

    assert result.text == "I put the red cup on the shelf."
    call = backend.calls[0]
    assert [p.key for p in images(call)] == ["s/4/400", "s/4/401"]
    assert "Earlier segment" not in call.prompt and not any(f"memory {i}." in call.prompt for i in range(4))
    assert "New segment 00:00:40-00:00:50" in call.prompt


def test_invalid_replies_are_retried_with_sampling_then_recorded_as_a_failure():
    backend = ScriptedBackend(["not json", '{"description": "A. B. C."}', '{"description": "I met Bob <bob>."}'])
    writer = MemoryWriter(backend, WriterConfig(max_retries=2))
    result = writer.write([], segment(0))

    assert result.text is None and result.attempts == 3
    assert "<face_N>" in result.failure
    assert [c.sampling.temperature for c in backend.calls] == [0.0, 0.6, 0.6]
    assert "rejected (not JSON" in backend.calls[1].prompt
    assert result.raw == ["not json", '{"description": "A. B. C."}', '{"description": "I met Bob <bob>."}']


def test_a_retry_that_succeeds_is_kept():
    backend = ScriptedBackend(['{"description": ""}', '{"description": "I opened the door."}'])
    result = MemoryWriter(backend, WriterConfig(max_retries=1)).write([], segment(0))
    assert result.text == "I opened the door." and result.attempts == 2


def test_a_repeated_sentence_is_stored_once_not_re_asked():
    twice = '{"description": "I washed dishes at the sink. I washed dishes at the sink."}'
    backend = ScriptedBackend([twice, '{"description": "IN 8015\\"."}'])
    result = MemoryWriter(backend, WriterConfig(max_retries=1)).write([], segment(0))
    assert result.text == "I washed dishes at the sink." and result.attempts == 1 and result.failure is None
    assert len(backend.calls) == 1 and result.raw == [twice]


def test_a_repeat_whose_sentence_breaks_another_rule_is_still_retried():
    twice = '{"description": "I met Bob <bob>. I met Bob <bob>."}'
    backend = ScriptedBackend([twice, '{"description": "I met <face_1> in the hall."}'])
    result = MemoryWriter(backend, WriterConfig(max_retries=1)).write([], segment(0))
    assert result.text == "I met <face_1> in the hall." and result.attempts == 2
    assert "repeats its sentence" in backend.calls[1].prompt


def test_memory_over_the_token_cap_fails():
    long = "word " * 30
    backend = ScriptedBackend([f'{{"description": "{long}."}}'])
    result = MemoryWriter(backend, WriterConfig(max_memory_tokens=10, max_retries=0)).write([], segment(0))
    assert result.text is None and "cap 10" in result.failure


def test_candidates_are_sampled_with_the_papers_settings_and_distinct_seeds():
    backend = ScriptedBackend(['{"description": "one."}', "oops"])
    out = MemoryWriter(backend, WriterConfig()).sample_candidates([], segment(0), n=2, seed=5)
    assert [v.ok for _, v in out] == [True, False]
    assert [(c.sampling.temperature, c.sampling.top_p, c.sampling.top_k, c.sampling.seed) for c in backend.calls] \
        == [(0.6, 0.95, 20, 5), (0.6, 0.95, 20, 6)]
