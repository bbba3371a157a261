"""Training windows, exactly as the memory writer sees them at run time, saved as a `datasets` dataset.

A window is the writer's prompt for one new segment: the runtime's capture path (open_source + segment_stream:
10 s segments, <= 4 keyframes, sides multiples of 32) cuts each video; the last k-1 earlier segments come with
the memories a reference writer wrote for them; `edge_agent.memory.prompts.writer_messages` builds the chat.
The trainer's processor (phase_one.py) turns these messages into token ids and pixels with the one prompt
encoder (`edge_agent.vlm.prompt`), so the token sequence equals what llama.cpp decodes on the device.

Reference writers for the prior memories (`[data] prior_memories`):
  "captions": the synthetic world's per-segment captions (events.json), a perfect writer;
  "model":    a model folder run by llama.cpp through the runtime's MemoryWriter, segment after segment;
  "none":     "(none)" for every earlier segment.

Columns: prompt (TRL conversational format, one {"type": "image"} placeholder per frame), images (the frames,
in order), window_id, clip, segment_index, t_start, t_end, prior_memories, caption (reference caption of the
new segment, "" without an event log), events (JSON list of the new segment's events, "[]" without), n_new_frames.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable

from edge_agent.errors import DataError
from edge_agent.types import ImagePart, Message, Segment

VIDEO_SUFFIXES = (".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v")
DATASET_VERSION = 1

Progress = Callable[[str, int, int], None]


def messages_to_conversation(messages: list[Message]) -> tuple[list[dict[str, Any]], list[Any]]:
    """edge_agent Messages -> (TRL conversational prompt with image placeholders, the images as PIL in order)."""
    from PIL import Image

    conv, images = [], []
    for m in messages:
        content = []
        for p in m.parts:
            if isinstance(p, ImagePart):
                content.append({"type": "image", "text": None})
                images.append(Image.fromarray(p.pixels))
            elif p:
                content.append({"type": "text", "text": p})
        conv.append({"role": m.role, "content": content})
    return conv, images


def conversation_to_messages(conv: list[dict[str, Any]]) -> list[Message]:
    """TRL conversational prompt (images filled in by TRL) -> edge_agent Messages, the inverse of the above."""
    import numpy as np

    out = []
    k = 0
    for m in conv:
        content = m.get("content")
        parts: list[Any] = []
        if isinstance(content, str):
            parts.append(content)
        else:
            for part in content or []:
                if part.get("type") == "image":
                    img = part.get("image")
                    if img is None:
                        raise DataError("a prompt image placeholder has no image (dataset without its images column?)")
                    arr = np.asarray(img.convert("RGB") if hasattr(img, "convert") else img, dtype=np.uint8)
                    parts.append(ImagePart(f"frame{k}", arr))
                    k += 1
                elif part.get("text"):
                    parts.append(part["text"])
        out.append(Message(m["role"], parts))
    return out


def find_videos(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_SUFFIXES)
        elif p.is_file():
            out.append(p)
        else:
            raise DataError(f"data.videos: {str(p)!r} is neither a video file nor a folder")
    return out


def _segment_events(events: list[dict[str, Any]], a: float, b: float) -> list[dict[str, Any]]:
    """Events inside [a, b) and those still going on at a (a conversation, an activity)."""
    return [e for e in events if a <= e["t"] < b or e["t"] < a < e.get("t_end", e["t"])]


def _clips(cfg, work: Path, progress: Progress | None) -> list[tuple[str, Path, dict[str, Any] | None]]:
    """(name, video, event log or None) for every synthetic seed and every configured video."""
    from edge_agent.synth import generate

    d = cfg.data
    clips: list[tuple[str, Path, dict[str, Any] | None]] = []
    for i, seed in enumerate(d.synth_seeds):
        folder = work / "clips" / f"synth-{seed}-{d.synth_minutes:g}m"
        if not (folder / "events.json").is_file():
            generate(seed, d.synth_minutes, folder, segment_seconds=d.segment_seconds)
        events = json.loads((folder / "events.json").read_text(encoding="utf-8"))
        clips.append((f"synth-{seed}", folder / "video.mp4", events))
        if progress:
            progress("clips", i + 1, len(d.synth_seeds))
    for v in find_videos(cfg.path(p) for p in d.videos):
        events_path = v.with_name("events.json")
        events = json.loads(events_path.read_text(encoding="utf-8")) if events_path.is_file() else None
        clips.append((v.stem if events is None else f"{v.parent.name}-{v.stem}", v, events))
    return clips


def _segments(video: Path, capture_cfg) -> list[Segment]:
    from edge_agent.capture.segmenter import segment_stream
    from edge_agent.capture.source import open_source

    source = open_source(str(video), capture_cfg)
    try:
        return list(segment_stream(source, capture_cfg))
    finally:
        source.close()


def _reference_memories(cfg, segments: list[Segment], events: dict[str, Any] | None, name: str) -> list[str | None]:
    d = cfg.data
    if d.prior_memories == "none":
        return [None] * len(segments)
    if d.prior_memories == "captions":
        if events is None:
            raise DataError(f"clip {name!r}: prior_memories = \"captions\" needs an events.json beside the video "
                            "(synthetic clips); use \"model\" or \"none\" for other videos")
        captions = {s["index"]: s["caption"] for s in events.get("segments", [])}
        return [captions.get(s.index) for s in segments]
    # "model": the runtime's writer on llama.cpp, the window growing as at run time
    from edge_agent.config import WriterConfig
    from edge_agent.memory import MemoryWriter, WindowEntry
    from edge_agent.vlm.llama_cpp import LlamaCppBackend

    folder = cfg.path(d.reference_model)
    backend = LlamaCppBackend(folder / "model.gguf", folder / "mmproj.gguf", n_threads=0, n_ctx=8192)
    try:
        writer = MemoryWriter(backend, WriterConfig(window_segments=d.window_segments), stream_key=name)
        window: list[WindowEntry] = []
        out: list[str | None] = []
        for seg in segments:
            text = writer.write(window, seg).text
            out.append(text)
            window.append(WindowEntry(seg, text))
        return out
    finally:
        backend.close()


def settings_key(cfg) -> str:
    """Identifies a windows dataset: the data settings and the dataset layout version."""
    d = cfg.as_dict()["data"]
    d.pop("dataset_dir", None)
    d.pop("max_windows", None)  # the subset is taken when loading
    return hashlib.sha256(json.dumps([DATASET_VERSION, d], sort_keys=True).encode()).hexdigest()[:16]


def window_rows(cfg, work: Path, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Every window of every clip, as dataset rows (images as PIL)."""
    from edge_agent.config import CaptureConfig
    from edge_agent.memory.prompts import writer_messages

    d = cfg.data
    capture = CaptureConfig(segment_seconds=d.segment_seconds, keyframes_per_segment=d.keyframes_per_segment,
                            frame_size=d.frame_size)
    rows: list[dict[str, Any]] = []
    clips = _clips(cfg, work, progress)
    if not clips:
        raise DataError("no training clips: data.videos matched no video and data.synth_seeds is empty")
    for ci, (name, video, events) in enumerate(clips):
        segments = [s for s in _segments(video, capture) if s.keyframes]
        memories = _reference_memories(cfg, segments, events, name)
        log = events.get("events", []) if events else []
        captions = {s["index"]: s["caption"] for s in (events or {}).get("segments", [])}
        for i, seg in enumerate(segments):
            lo = max(0, i - (d.window_segments - 1))
            context = [(segments[j], memories[j]) for j in range(lo, i)]
            conv, images = messages_to_conversation(writer_messages(name, context, seg))
            rows.append({
                "prompt": conv, "images": images, "window_id": f"{name}/{seg.index}", "clip": name,
                "segment_index": seg.index, "t_start": float(seg.t_start), "t_end": float(seg.t_end),
                "prior_memories": [m or "" for _, m in context],
                "caption": captions.get(seg.index, ""),
                "events": json.dumps(_segment_events(log, seg.t_start, seg.t_end)),
                "n_new_frames": len(seg.keyframes),
            })
        if progress:
            progress("windows", ci + 1, len(clips))
    return rows


def _subset(n: int, limit: int) -> list[int]:
    if limit <= 0 or limit >= n:
        return list(range(n))
    step = n / limit
    return sorted({min(n - 1, int(math.floor(i * step))) for i in range(limit)})


def build_windows(cfg, work: Path, progress: Progress | None = None):
    """The windows dataset of `cfg` (built once into data.dataset_dir or WORK/windows, then reused)."""
    import datasets

    target = cfg.path(cfg.data.dataset_dir) if cfg.data.dataset_dir else work / "windows"
    key = settings_key(cfg)
    stamp = target / "edge_agent_windows.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("key") == key:
        ds = datasets.load_from_disk(str(target))
    else:
        rows = window_rows(cfg, work, progress)
        if not rows:
            raise DataError("the clips gave no windows (no segment had a keyframe)")
        features = datasets.Features({
            "prompt": [{"role": datasets.Value("string"),
                        "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
            "images": datasets.Sequence(datasets.Image()),
            "window_id": datasets.Value("string"), "clip": datasets.Value("string"),
            "segment_index": datasets.Value("int64"), "t_start": datasets.Value("float64"),
            "t_end": datasets.Value("float64"), "prior_memories": datasets.Sequence(datasets.Value("string")),
            "caption": datasets.Value("string"), "events": datasets.Value("string"),
            "n_new_frames": datasets.Value("int64"),
        })
        ds = datasets.Dataset.from_list(rows, features=features)
        target.mkdir(parents=True, exist_ok=True)
        ds.save_to_disk(str(target))
        stamp.write_text(json.dumps({"key": key, "windows": len(ds), "data": cfg.as_dict()["data"]}, indent=1))
        ds = datasets.load_from_disk(str(target))
    keep = _subset(len(ds), cfg.data.max_windows)
    return ds.select(keep) if len(keep) != len(ds) else ds
