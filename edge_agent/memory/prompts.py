"""The writer's prompt: the last k segments' keyframes and memories, then the new segment to remember."""

from __future__ import annotations

from typing import Sequence

from edge_agent.types import ImagePart, Message, Part, Segment

SYSTEM = (
    "You are the memory of a wearable camera. You watch the wearer's first-person video in 10-second segments "
    "and write one short memory per segment that will later be the only record used to answer the wearer's "
    "questions. Note what matters for later questions: objects and where they were put, what the wearer did, "
    "who they met, text they saw, in which room. Refer to people only as <face_N>. "
    'Reply with JSON {"description": "..."}: one or two sentences.'
)


def _clock(t: float) -> str:
    t = max(0.0, t)
    return f"{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{int(t % 60):02d}"


def frame_key(stream_key: str, segment: Segment, i: int) -> str:
    """Identifies a keyframe across windows, so the backend encodes it once."""
    return f"{stream_key}/{segment.index}/{segment.keyframes[i].index}"


def writer_messages(stream_key: str, context: Sequence[tuple[Segment, str | None]], new: Segment,
                    retry_note: str | None = None) -> list[Message]:
    """context: earlier segments of the window (oldest first) with the memory written for each (None if none)."""
    parts: list[Part] = []
    for seg, memory in context:
        parts.append(f"Earlier segment {_clock(seg.t_start)}-{_clock(seg.t_end)}:")
        parts.extend(ImagePart(frame_key(stream_key, seg, i), f.image) for i, f in enumerate(seg.keyframes))
        parts.append(f"\nMemory written: {memory if memory else '(none)'}\n")
    parts.append(f"New segment {_clock(new.t_start)}-{_clock(new.t_end)}:")
    parts.extend(ImagePart(frame_key(stream_key, new, i), f.image) for i, f in enumerate(new.keyframes))
    instruction = "\nWrite the memory for the new segment."
    if retry_note:
        instruction += f" Your previous reply was rejected ({retry_note}); follow the format."
    parts.append(instruction)
    return [Message("system", [SYSTEM]), Message("user", parts)]
