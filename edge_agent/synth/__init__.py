"""Synthetic egocentric world: a deterministic clip (video.mp4), its event log (events.json), questions (questions.json).

    from edge_agent.synth import generate
    paths = generate(seed=7, minutes=2, out_dir="synth7")   # paths.video, paths.events, paths.questions

Same seed and arguments -> the same events, questions and decoded frames. The video is 256x192 at 5 fps by
default ('mp4v' in an .mp4): enough for the capture path, which samples 2 frames/s and downscales to 128 px,
and fast to make: measured on one core, a 60-minute clip takes about 14 s of CPU at 5 fps (31 MB) and about
25 s at 10 fps (46 MB), rendering and mp4v encoding included.
The modules: world.py (layout, script, captions), render.py (OpenCV drawing), questions.py (from the log).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.errors import ConfigError

# 2: people numbered in the order the wearer first meets them (world.number_people_by_first_meeting)
FORMAT_VERSION = 2
MIN_MINUTES, MAX_MINUTES = 0.25, 60.0  # the CLI offers 1..60; shorter clips are for tests


@dataclass(frozen=True)
class SynthPaths:
    """The three files of a clip; also readable as a mapping (paths["video"], paths.items())."""

    video: Path
    events: Path
    questions: Path

    def keys(self) -> tuple[str, ...]:
        return ("video", "events", "questions")

    def __getitem__(self, key: str) -> Path:
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def items(self) -> list[tuple[str, Path]]:
        return [(k, self[k]) for k in self.keys()]


def generate(seed: int, minutes: float, out_dir: str | os.PathLike, *, fps: float = 5.0,
             segment_seconds: float = 10.0, questions_per_minute: float = 3.0) -> SynthPaths:
    """Write video.mp4, events.json and questions.json for a clip of `minutes` minutes into `out_dir`.

    `segment_seconds` is the memory segment the captions and the questions' timing rules assume (the
    paper's 10 s). About `questions_per_minute` questions per minute, at least one per category when the
    clip allows it.
    """
    from edge_agent.synth.questions import CATEGORIES, make_questions
    from edge_agent.synth.render import write_video
    from edge_agent.synth.world import VIEW_H, VIEW_W, build_script, build_world, segment_captions

    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"synth seed={seed!r}: must be a non-negative integer")
    if not (MIN_MINUTES <= float(minutes) <= MAX_MINUTES):
        raise ConfigError(f"synth minutes={minutes!r}: must be between {MIN_MINUTES:g} and {MAX_MINUTES:g}")
    if not (1.0 <= fps <= 30.0):
        raise ConfigError(f"synth fps={fps!r}: must be between 1 and 30")
    if segment_seconds <= 0:
        raise ConfigError(f"synth segment_seconds={segment_seconds!r}: must be > 0")
    if not (0.0 < float(questions_per_minute) <= 60.0):
        raise ConfigError(f"synth questions_per_minute={questions_per_minute!r}: must be above 0 and at most 60")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"synth out={str(out)!r}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)

    duration = round(float(minutes) * 60.0, 3)
    world_rng = np.random.default_rng([seed, 0])  # independent streams: changing question code keeps the video
    world = build_world(world_rng)
    script = build_script(world, duration, world_rng)
    n_questions = max(len(CATEGORIES), int(math.ceil(questions_per_minute * float(minutes))))
    questions = make_questions(world, script, segment_seconds, np.random.default_rng([seed, 1]), n_questions)

    paths = SynthPaths(out / "video.mp4", out / "events.json", out / "questions.json")
    n_frames = write_video(paths.video, world, script, fps)
    meta: dict[str, Any] = {"version": FORMAT_VERSION, "seed": seed, "minutes": float(minutes),
                            "duration": duration, "fps": fps, "frames": n_frames, "width": VIEW_W,
                            "height": VIEW_H, "segment_seconds": segment_seconds}
    events = dict(meta, world=world.to_json(), events=script.events,
                  segments=segment_captions(world, script, segment_seconds))
    _write_json(paths.events, events)
    _write_json(paths.questions, dict(meta, categories=list(CATEGORIES), questions=questions))
    return paths


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)


__all__ = ["SynthPaths", "generate"]
