"""The times questions name, on the memories' clock: offsets into the recording, clock times (replay and live)."""

from datetime import datetime

from edge_agent.qa.when import clock_time, offset_into_recording, time_ago


def test_offsets_into_the_recording():
    assert offset_into_recording("What was I doing at 7:07 into the recording?") == 427.0
    assert offset_into_recording("what happened 1:02:03 into the video") == 3723.0
    assert offset_into_recording("Where did I leave the keys?") is None
    assert offset_into_recording("at 7:75 into the recording") is None  # not a time


def test_clock_times_on_a_replay_are_stream_seconds():
    assert clock_time("What did I do at 14:05?", 60_000.0) == 14 * 3600 + 5 * 60
    assert clock_time("at 00:07:07", 600.0) == 427.0
    assert clock_time("at 3 pm", 60_000.0) == 15 * 3600
    assert clock_time("at 12 am", 60_000.0) == 0.0
    for not_a_time in ("at 3 people", "I met 2 at 3", "at 25:00", "at 13 pm", "where are my keys"):
        assert clock_time(not_a_time, 60_000.0) is None, not_a_time


def test_a_live_clock_time_is_the_latest_one_at_or_before_the_question():
    asked = datetime(2026, 12, 4, 10, 0).timestamp()  # local time, as the device keeps it
    assert datetime.fromtimestamp(clock_time("what was I doing at 9:30 am", asked)) == datetime(2026, 12, 4, 9, 30)
    assert datetime.fromtimestamp(clock_time("what was I doing at 2:30 pm", asked)) == datetime(2026, 12, 3, 14, 30)


def test_times_ago_count_back_from_the_question():
    assert time_ago("What was I doing 20 minutes ago?", 10_000.0) == 10_000.0 - 1200
    assert time_ago("who did I meet an hour ago", 10_000.0) == 10_000.0 - 3600
    assert time_ago("what did I read half an hour ago?", 10_000.0) == 10_000.0 - 1800
    assert time_ago("where was I 1.5 hours ago", 10_000.0) == 10_000.0 - 5400
    assert time_ago("where did I leave the keys?", 10_000.0) is None
