"""The time a question names ("at 3 pm", "at 14:05", "7:07 into the recording", "20 minutes ago"), on the
memories' clock.

A question about a moment ("What was I doing at 7:07 into the recording?") shares no words with the memory of
that moment, so text and embedding retrieval cannot find it; the memories around the named time can be found by
their timestamps instead (`qa.retrieve`). Three forms are read:

- an offset into the recording, "M:SS" or "H:MM:SS into the recording / video / stream": seconds after the origin
  of the newest stream that began by the time the question is asked;
- a clock time, "at 14:05", "at 2:05 pm", "at 3 pm": the latest such time at or before the question. Replays keep
  stream seconds from origin 0 (`qa.answer.clock` prints them as 00:07:07), so there a clock time is read on that
  clock; live memories keep epoch seconds, read in the device's local time zone;
- a time before the question, "20 minutes ago", "an hour ago", "half an hour ago", "2 hours ago".

Spans ("this morning", "yesterday") are not read: `ask --since/--until` bounds those.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

REPLAY_CLOCK_LIMIT = 10 * 365 * 86400  # below this a timestamp is stream seconds (qa.answer.clock's rule)

_DOING = re.compile(r"^\s*what\s+(?:was\s+i\s+doing|did\s+i\s+do)\s+at\b", re.I)
_OFFSET = re.compile(r"\b(\d{1,2}):([0-5]\d)(?::([0-5]\d))?\s+into\s+the\s+(?:recording|video|stream)\b", re.I)
_AGO = re.compile(r"\b(an?|half an|\d+(?:\.\d+)?)\s+(seconds?|minutes?|mins?|hours?)\s+ago\b", re.I)
_CLOCK = re.compile(r"\bat\s+(\d{1,2})(?::([0-5]\d))?(?::([0-5]\d))?\s*(am|pm|a\.m\.|p\.m\.)?(?![\w:])", re.I)


def doing_asked(question: str) -> bool:
    """Whether `question` asks what the wearer was doing at a time ("What was I doing at 7:07 into the recording?",
    "What did I do at 3 pm?")."""
    return bool(_DOING.search(question))


def offset_into_recording(question: str) -> float | None:
    """Seconds into the recording the question names ("7:07 into the recording" -> 427.0), or None."""
    m = _OFFSET.search(question)
    if not m:
        return None
    a, b, c = int(m.group(1)), int(m.group(2)), m.group(3)
    return float(a * 3600 + b * 60 + int(c)) if c is not None else float(a * 60 + b)


def clock_time(question: str, asked_at: float) -> float | None:
    """The timestamp of the clock time the question names ("at 14:05", "at 2 pm"), the latest at or before
    `asked_at`; None when it names none (a bare "at 3" without minutes or am/pm is not read as a time)."""
    for m in _CLOCK.finditer(question):
        hour, minute, second, half = m.group(1), m.group(2), m.group(3), m.group(4)
        if minute is None and half is None:
            continue
        h, mi, s = int(hour), int(minute or 0), int(second or 0)
        if half:
            if not 1 <= h <= 12:
                continue
            h = h % 12 + (12 if half.lower().startswith("p") else 0)
        if h > 23:
            continue
        day = h * 3600 + mi * 60 + s
        if asked_at < REPLAY_CLOCK_LIMIT:  # stream clock: the day never wraps in a replay of a few hours
            return float(day)
        now = datetime.fromtimestamp(asked_at).astimezone()
        at = now.replace(hour=h, minute=mi, second=s, microsecond=0)
        if at > now:
            at -= timedelta(days=1)
        return at.timestamp()
    return None


def time_ago(question: str, asked_at: float) -> float | None:
    """The timestamp "N minutes / hours ago" names, counted back from `asked_at`; None when it names none."""
    m = _AGO.search(question)
    if not m:
        return None
    amount = {"a": 1.0, "an": 1.0, "half an": 0.5}.get(m.group(1).lower())
    amount = float(m.group(1)) if amount is None else amount
    unit = m.group(2).lower()
    seconds = 3600 if unit.startswith("hour") else 60 if unit.startswith("min") else 1
    return asked_at - amount * seconds
