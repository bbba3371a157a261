"""Wires capture -> memory writer -> store: the one ingest path used by `run`, `demo` and evaluation replays."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edge_agent.capture import CaptureThread, VideoSource, open_source
from edge_agent.config import Config
from edge_agent.errors import AdapterError, EdgeAgentError
from edge_agent.memory import MemoryWriter, WindowEntry
from edge_agent.memory.keep import keep_for_phase_two
from edge_agent.store import Store
from edge_agent.types import Segment, SteeringVector
from edge_agent.vlm.base import Backend

log = logging.getLogger(__name__)


@dataclass
class IngestReport:
    stream_id: int
    segments_written: int = 0
    segments_failed: int = 0
    segments_skipped: int = 0  # already committed by an earlier run (resume)
    frames_dropped: int = 0
    frames_merged: int = 0
    write_seconds: list[float] = field(default_factory=list)
    stream_seconds: float = 0.0  # stream time covered so far
    error: str | None = None  # a source that failed mid-way; what was written before is kept
    note: str | None = None  # a source that ended early but cleanly (truncated file)

    def as_dict(self) -> dict:
        lat = sorted(self.write_seconds)
        return {
            "stream_id": self.stream_id, "segments_written": self.segments_written,
            "segments_failed": self.segments_failed, "segments_skipped": self.segments_skipped,
            "frames_dropped": self.frames_dropped, "frames_merged": self.frames_merged,
            "stream_seconds": round(self.stream_seconds, 3),
            "write_latency_mean_s": round(sum(lat) / len(lat), 4) if lat else None,
            "error": self.error, "note": self.note,
        }


def source_fingerprint(spec: str) -> tuple[str, str]:
    """(fingerprint, kind). A file is the same stream while its path, size and mtime are; a live source never is."""
    path = Path(spec)
    if path.is_file():
        st = path.stat()
        key = f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        return hashlib.sha256(key.encode()).hexdigest()[:32], "file"
    kind = "camera" if spec.isdigit() else "url"
    return hashlib.sha256(f"{kind}:{spec}:{time.time_ns()}".encode()).hexdigest()[:32], kind


class Ingestor:
    """Feeds one source through the writer into the store, segment by segment, resumably.

    `advance(until)` processes every segment that ends by stream time `until` and stops there, holding the
    next segment back; the evaluation uses that to answer questions at their own time from the memory
    written so far. Each segment and its memory are committed in one transaction, so a killed process
    loses at most the segment in flight, and a re-run of the same file continues after the last commit.
    """

    def __init__(self, source_spec: str, store: Store, backend: Backend, cfg: Config, *,
                 origin: float | None = None, live: bool | None = None,
                 pinned_adapter: tuple[str | None, SteeringVector | None] | None = None,
                 source: VideoSource | None = None, embedder=None):
        self.store = store
        self.backend = backend
        self.cfg = cfg
        fingerprint, kind = source_fingerprint(source_spec)
        if origin is None:
            origin = 0.0 if kind == "file" else time.time()
        self.origin = origin
        self.stream_id = store.get_or_create_stream(source_spec, fingerprint, origin, kind)
        # Frame keys must be unique across stores and streams: the backend's image cache outlives both.
        self.writer = MemoryWriter(backend, cfg.writer, stream_key=fingerprint[:16])
        self.report = IngestReport(self.stream_id)
        self._adapter_id: str | None = None
        # Evaluation pins (adapter id, vector) per config, (None, None) for none; otherwise the writer follows
        # the registry (`edge-agent adapter activate`).
        self._pinned_adapter = pinned_adapter
        # Embedding each memory as it is written (~35 ms beside a 10 s segment) keeps the first `ask` after a
        # long day from embedding thousands of memories.
        self.embedder = embedder
        self._window: deque[WindowEntry] = deque(maxlen=max(cfg.writer.window_segments - 1, 1))

        last = store.last_committed_segment(self.stream_id)
        start_after = 0.0
        if last is not None:
            start_after = (last + 1) * cfg.capture.segment_seconds
            # Resume: the earlier frames are gone, their memories are not.
            for row in store.recent_memories(self.stream_id, last + 1, cfg.writer.window_segments - 1):
                t0, t1 = row["t_start"] - origin, row["t_end"] - origin
                self._window.append(WindowEntry(Segment(row.get("segment_index", -1), t0, t1), row["text"]))
        self._last_committed = last
        # The CLI opens the source before loading the model, so a wrong path fails in a second, not after a load.
        self._source = source if source is not None else open_source(source_spec, cfg.capture)
        self._thread = CaptureThread(self._source, cfg.capture, start_after=start_after, drop_oldest=live)
        self._thread.start()
        self._segments = iter(self._thread)
        self._pending: Segment | None = None
        self._exhausted = False

    # -- adapters -------------------------------------------------------------------------------------
    def refresh_adapter(self) -> None:
        """Pick up an adapter activated by another process (`edge-agent adapt`) between segments."""
        if self._pinned_adapter is not None:
            self._adapter_id, vector = self._pinned_adapter
            self.backend.set_steering(vector)
            return
        row = self.store.active_adapter()
        wanted = row["id"] if row else None
        if wanted == self._adapter_id:
            return
        if row is None:
            self.backend.set_steering(None)
            self._adapter_id = None
            return
        from edge_agent.vlm.steering import load_steering_vector
        try:
            self.backend.set_steering(load_steering_vector(row["path"]))
            self._adapter_id = wanted
            log.info("adapter %s active", wanted)
        except (AdapterError, OSError) as e:
            # Keep writing with what was active; the registry says why in `adapter list`.
            log.warning("adapter %s not applied: %s", wanted, e)
            self._adapter_id = wanted  # don't retry on every segment

    # -- ingest ---------------------------------------------------------------------------------------
    def _next_segment(self) -> Segment | None:
        if self._pending is not None:
            seg, self._pending = self._pending, None
            return seg
        if self._exhausted:
            return None
        try:
            return next(self._segments)
        except StopIteration:
            self._exhausted = True
            if getattr(self._source, "truncated", False):
                self.report.note = self._source.end_note  # e.g. a truncated file: what decoded was written
            return None

    def _write(self, seg: Segment) -> None:
        self.refresh_adapter()
        result = self.writer.write(list(self._window), seg)
        segment_id, memory_id = self.store.commit_segment(  # stream seconds; the store adds the origin for memories
            self.stream_id, seg, memory=result.text, failure=result.failure,
            writer_model=self.backend.model_name, adapter_id=self._adapter_id,
            n_tokens=result.n_tokens, latency_s=result.seconds)
        if memory_id is not None and self.embedder is not None:
            self.store.put_embeddings(self.embedder.name, [memory_id], self.embedder.encode([result.text]))
        keep_for_phase_two(self.store, self.writer, self.cfg, segment_id, seg, result, list(self._window))
        self._window.append(WindowEntry(seg, result.text))
        self.report.write_seconds.append(result.seconds)
        if result.text is None:
            self.report.segments_failed += 1
        else:
            self.report.segments_written += 1

    def advance(self, until: float | None = None,
                on_segment: Callable[[Segment, IngestReport], None] | None = None) -> IngestReport:
        """Write memories for every segment ending at or before stream time `until` (None: to the end)."""
        while True:
            seg = self._next_segment()
            if seg is None:
                break
            if until is not None and seg.t_end > until + 1e-6:
                self._pending = seg
                break
            self.report.frames_dropped += seg.frames_dropped
            self.report.frames_merged += seg.frames_merged
            self.report.stream_seconds = seg.t_end
            if self._last_committed is not None and seg.index <= self._last_committed:
                self.report.segments_skipped += 1
                continue
            self._write(seg)
            if on_segment:
                on_segment(seg, self.report)
        return self.report

    @property
    def exhausted(self) -> bool:
        """True once the source has ended and every segment was processed."""
        return self._exhausted and self._pending is None

    def close(self) -> None:
        try:
            self._thread.stop()
            self._thread.join(timeout=10)
        finally:
            self._source.close()

    def __enter__(self) -> "Ingestor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def ingest(source_spec: str, store: Store, backend: Backend, cfg: Config, *, until: float | None = None,
           origin: float | None = None,
           on_segment: Callable[[Segment, IngestReport], None] | None = None) -> IngestReport:
    """Run a source to its end (or to stream time `until`). A source failing mid-way keeps what was written."""
    with Ingestor(source_spec, store, backend, cfg, origin=origin) as ing:
        try:
            ing.advance(until, on_segment)
        except EdgeAgentError as e:
            ing.report.error = str(e)
        return ing.report


def run_source(cfg: Config, source_spec: str, *, until: float | None = None, video: VideoSource | None = None,
               on_segment: Callable[[Segment, IngestReport], None] | None = None) -> IngestReport:
    """`edge-agent run`: open the source (first, so a wrong path fails before the model loads; or take `video`
    opened by the caller), the store, the model and the embedder; ingest to the end, `until`, or Ctrl-C
    (`report.note` says so); close everything."""
    from edge_agent.qa.embed import open_embedder
    from edge_agent.vlm.factory import open_backend

    video = video if video is not None else open_source(source_spec, cfg.capture)
    try:
        store = Store.open(cfg.db_path)
    except BaseException:
        video.close()
        raise
    backend = None
    try:
        backend = open_backend(cfg)
        with Ingestor(source_spec, store, backend, cfg, source=video, embedder=open_embedder(cfg)) as ing:
            try:
                ing.advance(until, on_segment)
            except KeyboardInterrupt:
                ing.report.note = "stopped by Ctrl-C; everything committed so far is kept"
            except EdgeAgentError as e:
                ing.report.error = str(e)
            return ing.report
    finally:
        video.close()  # safe twice: the Ingestor closes it too
        if backend is not None:
            backend.close()
        store.close()
