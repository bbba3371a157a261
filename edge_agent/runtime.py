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
from edge_agent.device.budget import BudgetKeeper
from edge_agent.device.keepup import KeepUp
from edge_agent.errors import AdapterError, EdgeAgentError
from edge_agent.memory import MemoryWriter, WindowEntry
from edge_agent.memory.faces import open_face_registry, retag
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
    keepup: dict | None = None  # live sources: keep-up level and counts (device/keepup.py), else None

    def as_dict(self) -> dict:
        lat = sorted(self.write_seconds)
        return {
            "stream_id": self.stream_id, "segments_written": self.segments_written,
            "segments_failed": self.segments_failed, "segments_skipped": self.segments_skipped,
            "frames_dropped": self.frames_dropped, "frames_merged": self.frames_merged,
            "stream_seconds": round(self.stream_seconds, 3),
            "write_latency_mean_s": round(sum(lat) / len(lat), 4) if lat else None,
            "error": self.error, "note": self.note, "keepup": self.keepup,
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
                 source: VideoSource | None = None, embedder=None, keep_frames: bool = True):
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
        self._adapter_id: str | None = None  # the adapter really applied to the backend (recorded on memories)
        self._applied_vector: SteeringVector | None = None
        self._wanted_adapter: str | None = None  # the registry's active adapter when last checked
        # False when Phase Two cannot use this model (no checkpoint): keyframes and candidates are not kept.
        self.keep_frames = keep_frames
        # Evaluation pins (adapter id, vector) per config, (None, None) for none; otherwise the writer follows
        # the registry (`edge-agent adapter activate`).
        self._pinned_adapter = pinned_adapter
        # Embedding each memory as it is written (~35 ms beside a 10 s segment) keeps the first `ask` after a
        # long day from embedding thousands of memories.
        self.embedder = embedder
        # Who the keyframes show, numbered as the wearer met them: the memory's <face_N> tags are set to theirs.
        self.faces = open_face_registry(store, cfg, model_folder(cfg))
        self._window: deque[WindowEntry] = deque(maxlen=max(cfg.writer.window_segments - 1, 1))
        # (segment id, memory id or None) of each window entry: `forget` in another process must reach the window
        self._window_keys: deque[tuple[int | None, int | None]] = deque(maxlen=self._window.maxlen)

        last = store.last_committed_segment(self.stream_id)
        start_after = 0.0
        if last is not None:
            start_after = (last + 1) * cfg.capture.segment_seconds
            # Resume: the earlier frames are gone, their memories are not.
            for row in store.recent_memories(self.stream_id, last + 1, cfg.writer.window_segments - 1):
                t0, t1 = row["t_start"] - origin, row["t_end"] - origin
                self._window.append(WindowEntry(Segment(row.get("segment_index", -1), t0, t1), row["text"]))
                self._window_keys.append((row.get("segment_id"), row.get("id")))
        self._last_committed = last
        # The CLI opens the source before loading the model, so a wrong path fails in a second, not after a load.
        self._source = source if source is not None else open_source(source_spec, cfg.capture)
        self._thread = CaptureThread(self._source, cfg.capture, start_after=start_after, drop_oldest=live)
        self._thread.start()
        self._segments = iter(self._thread)
        # Live sources degrade before they drop (device/keepup.py); the storage budget is checked between segments.
        self.keepup = KeepUp(cfg, store, self.stream_id, live=self._thread.drop_oldest, source=source_spec)
        self.budget = BudgetKeeper(store, cfg, self.stream_id)
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
        if wanted == self._wanted_adapter:
            return  # unchanged since the last check (a failed one is not retried on every segment)
        self._wanted_adapter = wanted
        if row is None:
            self.backend.set_steering(None)
            self._adapter_id, self._applied_vector = None, None
            return
        from edge_agent.vlm.steering import load_steering_vector
        try:
            vector = load_steering_vector(row["path"])
            self.backend.set_steering(vector)
        except (AdapterError, OSError) as e:
            # The registry must not go on claiming it: the row becomes "failed" with the reason (`adapter list`
            # shows both), no adapter is active, and the writer falls back to the base model, as memories
            # record. Not retried on every segment; `adapt` or `adapter activate` can make another one active.
            log.warning("adapter %s not applied: %s", wanted, e)
            self.backend.set_steering(None)
            self._adapter_id, self._applied_vector = None, None
            note = (f"NOT APPLIED by the writer at {time.strftime('%Y-%m-%d %H:%M:%S')}: {e}; "
                    f"memories after it record the base model")
            try:
                from edge_agent.adapt.registry import AdapterRegistry

                reason = row.get("reason")
                AdapterRegistry(self.store, self.cfg.adapters_dir).mark_failed(
                    wanted, note + (f" (was: {reason})" if reason else ""))
            except EdgeAgentError as e2:  # the row went meanwhile, or the store refused: not retried either
                log.warning("adapter %s: failure not recorded: %s", wanted, e2)
            else:
                self._wanted_adapter = None  # recorded: activating it again (once fixed) is picked up and retried
            return
        self._adapter_id, self._applied_vector = wanted, vector
        log.info("adapter %s active", wanted)

    def _drop_forgotten(self) -> None:
        """Drop window entries whose memory (or unwritten segment) was forgotten by another process, so neither
        the next prompt nor its candidates see forgotten text or frames."""
        if not self._window:
            return
        mem_ids = [m for _, m in self._window_keys if m is not None]
        alive = {r["id"] for r in self.store.get_memories(mem_ids)} if mem_ids else set()
        keep_entries, keep_keys = [], []
        for entry, (sid, mid) in zip(self._window, self._window_keys):
            if mid is not None:
                ok = mid in alive
            elif sid is not None:
                try:
                    ok = self.store.get_segment(sid).get("status") != "forgotten"
                except EdgeAgentError:
                    ok = False
            else:
                ok = True
            if ok:
                keep_entries.append(entry)
                keep_keys.append((sid, mid))
        if len(keep_entries) != len(self._window):
            log.info("%d forgotten segments left the writer's window", len(self._window) - len(keep_entries))
            self._window.clear()
            self._window_keys.clear()
            self._window.extend(keep_entries)
            self._window_keys.extend(keep_keys)

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
        self._drop_forgotten()
        seg, window = self.keepup.before(seg, list(self._window), self._thread.stats())
        result = self.writer.write(window, seg)
        people = self.faces.people_in(seg, self.origin) if self.faces is not None else []  # even if it failed
        if result.text is not None and people:
            result.text = retag(result.text, people)
        segment_id, memory_id = self.store.commit_segment(  # stream seconds; the store adds the origin for memories
            self.stream_id, seg, memory=result.text, failure=result.failure,
            writer_model=self.backend.model_name, adapter_id=self._adapter_id,
            n_tokens=result.n_tokens, latency_s=result.seconds, people=people)
        if memory_id is not None and self.embedder is not None:
            self.store.put_embeddings(self.embedder.name, [memory_id], self.embedder.encode([result.text]))
        self._drop_forgotten()  # a `forget` during the write: its candidates must not see the forgotten window
        keep_for_phase_two(self.store, self.writer, self.keepup.keep_config(), segment_id, seg, result,
                           list(self._window), keep_frames=self.keep_frames, people=people)
        self.store.expire_kept_frames()  # between segments: kept frames never outlive writer.keep_frames_hours
        self._window.append(WindowEntry(seg, result.text))
        self._window_keys.append((segment_id, memory_id))
        self.report.write_seconds.append(result.seconds)
        if result.text is None:
            self.report.segments_failed += 1
        else:
            self.report.segments_written += 1
        self.keepup.after(segment_id, seg)
        self.report.keepup = self.keepup.state() if self.keepup.live else None
        self.budget.after_segment(segment_id, seg.index)

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


def model_folder(cfg: Config) -> Path | None:
    """The configured model's folder (where a face network would ship), None when it does not resolve."""
    from edge_agent.models import resolve

    try:
        return resolve(cfg.model.name, cfg.home).model_path.parent
    except EdgeAgentError:
        return None


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


def phase_two_can_use_frames(cfg: Config) -> bool:
    """Whether keyframes (and candidates) are worth keeping while writing: Phase Two needs them, and it can run
    only when frames are kept at all and the configured model has its full-precision checkpoint (`hf/`)."""
    if cfg.writer.keep_frames_hours <= 0:
        return False
    from edge_agent.models import resolve

    try:
        model = resolve(cfg.model.name, cfg.home)
    except EdgeAgentError:
        return False  # open_backend says what is wrong with the model
    return model.hf_dir is not None and model.hf_dir.is_dir()


def run_source(cfg: Config, source_spec: str, *, until: float | None = None, video: VideoSource | None = None,
               on_segment: Callable[[Segment, IngestReport], None] | None = None,
               origin: float | None = None) -> IngestReport:
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
        from edge_agent.memory.keep import sweep_frames

        swept = sweep_frames(store, cfg.frames_dir)  # files a killed run left without a row
        if swept["deleted"] or swept["renamed"]:
            log.info("frames: %d unrecorded files deleted, %d renames finished", swept["deleted"], swept["renamed"])
        keep = phase_two_can_use_frames(cfg)
        if not keep and cfg.writer.keep_frames_hours > 0:
            log.info("model %s has no checkpoint for Phase Two: keyframes are not kept", cfg.model.name)
        backend = open_backend(cfg)
        with Ingestor(source_spec, store, backend, cfg, source=video, embedder=open_embedder(cfg),
                      keep_frames=keep, origin=origin) as ing:  # origin: the file's start time (`run`)
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
