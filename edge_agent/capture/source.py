"""Video sources behind one small interface (connect / grab / retrieve / read / close): camera index, file, URL.

Shaped like lerobot's cameras: `open_source(spec)` returns a connected `VideoSource`, usable as a context
manager; errors are `SourceError`s that name the device or path and the offending value.

Two steps per frame, as in OpenCV: `grab()` advances to the next frame and returns its timestamp without
decoding it; `retrieve()` decodes the frame last grabbed (BGR, OpenCV's order). The segmenter grabs every
frame (a live camera must be drained or its buffer goes stale) but decodes only the few it samples.

Timestamps are seconds on the stream's own clock: for files the container's presentation time
(CAP_PROP_POS_MSEC), so a file ingests as fast as it decodes and still cuts the same segments; for live
sources (camera, URL) monotonic seconds since the first connect, so the clock keeps running across reconnects.
"""

from __future__ import annotations

import logging
import os
import re
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import CaptureConfig
from edge_agent.errors import SourceError
from edge_agent.types import Frame

log = logging.getLogger(__name__)

URL_RE = re.compile(r"^(rtsp|rtsps|rtmp|http|https|udp|tcp|srt)://", re.IGNORECASE)
DEFAULT_OPEN_TIMEOUT_S = 5.0  # how long OpenCV may wait to connect to a URL
DEFAULT_READ_TIMEOUT_S = 5.0  # how long a URL read may block before the source counts as stalled
TEXT_CODECS = {"ansi"}  # FFmpeg's tty demuxer renders any text file as "video": refuse it


class VideoSource(ABC):
    """A stream of frames. Subclasses implement `_connect`, `grab`, `retrieve`, `_close` (and `seek` for files).

    Attributes every source has: `spec` (what the user typed), `kind` ("camera", "file", "url" or a test's
    own), `is_live` (frames arrive in real time and cannot be replayed), `fps` (nominal rate, 0.0 if unknown),
    `duration` (seconds, files only), `truncated` and `end_note` (set when a file ends before its header says).
    """

    kind = "source"
    is_live = False

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.fps = 0.0
        self.duration: float | None = None
        self.truncated = False
        self.end_note: str | None = None
        self.frames_grabbed = 0
        self._connected = False
        self._last_t: float | None = None
        self._last_index = -1

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        """Open the device, file or URL. Raises SourceError naming it when that fails. Idempotent."""
        if not self._connected:
            self._connect()
            self._connected = True

    def close(self) -> None:
        """Release the device or file. Safe to call twice."""
        if self._connected:
            self._connected = False
            self._close()

    def __enter__(self) -> "VideoSource":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r})"

    @property
    def label(self) -> str:
        """How error messages name this source."""
        return f"video source {self.spec!r}"

    # -- frames ----------------------------------------------------------------------------------------
    @property
    def frame_index(self) -> int:
        """Number of the frame last grabbed in the source (0-based; -1 before the first)."""
        return self._last_index

    def grab(self) -> float | None:
        """Advance to the next frame; return its timestamp in stream seconds, or None at the end of a file."""
        if not self._connected:
            raise SourceError(f"{self.label}: not connected (call connect() or use it in a with-block)")
        t = self._grab()
        if t is not None:
            self.frames_grabbed += 1
            self._last_index += 1
            self._last_t = t
        return t

    @abstractmethod
    def retrieve(self) -> np.ndarray:
        """Decode the frame last grabbed: H x W x 3 uint8, BGR."""

    def seek(self, t: float) -> bool:
        """Jump so the next grab returns the first frame at or after `t` seconds. False if not supported."""
        return False

    def read(self) -> Frame | None:
        """Grab and decode the next frame as an RGB `Frame` at full size; None at the end of a file."""
        t = self.grab()
        if t is None:
            return None
        bgr = self.retrieve()
        return Frame(index=self._last_index, t=t, image=np.ascontiguousarray(bgr[:, :, ::-1]))

    # -- subclass hooks --------------------------------------------------------------------------------
    @abstractmethod
    def _grab(self) -> float | None:
        """Advance without decoding; the new frame's time in stream seconds, or None at the end."""

    @abstractmethod
    def _connect(self) -> None:
        """Open the device, file or stream (SourceError naming it when that fails)."""

    def _close(self) -> None:
        """Release the device; sources holding nothing need not override it."""
        return None


class OpenCVSource(VideoSource):
    """A camera index, a video file or a stream URL read through `cv2.VideoCapture`."""

    def __init__(self, spec: str, kind: str, target: int | str, cfg: CaptureConfig | None = None, *,
                 open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S, read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
                 sleep=time.sleep) -> None:
        super().__init__(spec)
        if kind not in ("camera", "file", "url"):
            raise ValueError(f"kind={kind!r}")
        self.kind = kind
        self.is_live = kind != "file"
        self.target = target
        self.cfg = cfg or CaptureConfig()
        self.open_timeout_s = open_timeout_s
        self.read_timeout_s = read_timeout_s
        self._sleep = sleep  # injectable so tests of the backoff need not wait
        self._cap: Any = None
        self._t0: float | None = None  # monotonic time of the first connect (live clock origin)
        self.reconnects = 0  # successful reconnects of a live source

    @property
    def label(self) -> str:
        """How errors name this source: 'camera 0', "video file 'x.mp4'", "stream 'rtsp://...'"."""
        if self.kind == "camera":
            return f"camera {self.spec}"
        if self.kind == "file":
            return f"video file {self.spec!r}"
        return f"stream {self.spec!r}"

    def _make_capture(self) -> Any:
        """A new cv2.VideoCapture for the target (tests substitute a fake here to exercise reconnects)."""
        import cv2

        if self.kind == "url":
            # The timeouts are honoured by the FFmpeg backend only; without them an unreachable host blocks ~30 s.
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(self.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(self.read_timeout_s * 1000)]
            return cv2.VideoCapture(self.target, cv2.CAP_FFMPEG, params)
        return cv2.VideoCapture(self.target)

    def _connect(self) -> None:
        if self.kind == "file":
            path = Path(self.target)
            if not path.exists():
                raise SourceError(f"{self.label}: no such file")
            if path.is_dir():
                raise SourceError(f"{self.label}: is a folder, not a video file")
            if path.stat().st_size == 0:
                raise SourceError(f"{self.label}: file is empty (0 bytes)")
            if not os.access(path, os.R_OK):
                raise SourceError(f"{self.label}: cannot be read (permission denied)")
            image = _image_format(path)
            if image:
                raise SourceError(f"{self.label}: is a still image ({image}), not a video")
        cap = self._make_capture()
        if not cap.isOpened():
            cap.release()
            raise SourceError(self._open_failure())
        self._cap = cap
        self._read_properties()
        if self.kind == "file":
            if self._fourcc() in TEXT_CODECS:
                self._close()
                raise SourceError(f"{self.label}: is a text file, not a video")
            # Fail now, not on the first read, when the container opens but no frame decodes.
            if not self._cap.grab():
                self._cap.release()
                self._cap = None
                raise SourceError(f"{self.label}: no decodable video frame (corrupt or not a video)")
            self._cap.release()  # reopen rather than seek back: seeking a damaged file is less reliable
            self._cap = self._make_capture()
        if self._t0 is None:
            self._t0 = time.monotonic()

    def _open_failure(self) -> str:
        if self.kind == "file":
            return (f"{self.label}: cannot be opened as a video (not a video, corrupt, "
                    f"or truncated before its index)")
        if self.kind == "camera":
            devices = sorted(p.name for p in Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
            found = ", ".join(devices) if devices else "none"
            return f"{self.label}: no such camera or it cannot be opened (video devices found: {found})"
        return (f"{self.label}: cannot connect (unreachable, refused, or not a video stream; "
                f"open timeout {self.open_timeout_s:g} s)")

    def _read_properties(self) -> None:
        import cv2

        fps = float(self._cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if 0.0 < fps < 1000.0 else 0.0
        if self.kind in ("file", "url"):
            n = float(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
            self.duration = n / self.fps if (n > 0 and self.fps > 0) else None
        if self.kind == "url" and self.duration is not None and self.duration > 0:
            # An http(s) URL whose container announces a length is a finite remote file, not a live stream:
            # read it like a file (container time, no reconnects by wall clock, end of file = end of stream).
            # A live HLS/RTSP stream reports no frame count.
            self.is_live = False

    def _fourcc(self) -> str:
        import cv2

        code = int(self._cap.get(cv2.CAP_PROP_FOURCC) or 0)
        return code.to_bytes(4, "little").decode("latin-1").strip("\x00 ").lower()

    def _close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None

    def _grab(self) -> float | None:
        import cv2

        # A live source that stops delivering is reopened with exponential backoff; attempts are counted per
        # stall, so a camera that reopens but never delivers still ends in SourceError.
        failures, wait, waited = 0, self.cfg.reconnect_backoff_seconds, 0.0
        while True:
            if self._cap is not None and self._cap.grab():
                break
            if not self.is_live:
                self._check_complete()
                return None
            if failures >= self.cfg.reconnect_attempts:
                raise SourceError(f"{self.label}: stopped delivering frames; {failures} reconnect attempts "
                                  f"over {waited:.1f} s failed")
            failures += 1
            log.warning("%s: no frame; reconnect attempt %d/%d in %.2g s", self.label, failures,
                        self.cfg.reconnect_attempts, wait)
            self._sleep(wait)
            waited += wait
            wait *= 2
            self._reopen()
        if self.is_live:
            return time.monotonic() - (self._t0 or 0.0)
        t = float(self._cap.get(cv2.CAP_PROP_POS_MSEC)) / 1000.0
        # Some containers report no time; fall back on the frame number, and never go backwards.
        index = self._last_index + 1
        if (t <= 0.0 and index > 0) or (self._last_t is not None and t < self._last_t):
            t = index / self.fps if self.fps else (self._last_t or 0.0)
        return t

    def _reopen(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        cap = self._make_capture()
        if cap.isOpened():
            self._cap = cap
            self.reconnects += 1
        else:
            cap.release()

    def retrieve(self) -> np.ndarray:
        ok, image = self._cap.retrieve()
        if not ok or image is None:
            raise SourceError(f"{self.label}: frame {self._last_index} was grabbed but could not be decoded")
        return image

    def seek(self, t: float) -> bool:
        """Files only: position at `t` seconds (OpenCV decodes forward from the previous keyframe)."""
        import cv2

        if self.is_live or self._cap is None:
            return False
        ok = bool(self._cap.set(cv2.CAP_PROP_POS_MSEC, max(0.0, t) * 1000.0))
        if ok:
            pos = float(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0.0)
            self._last_index = int(pos) - 1
            self._last_t = None
        return ok

    def _check_complete(self) -> None:
        """At the end of a file: note when it stopped well before the length its header announces."""
        if self.truncated or self.duration is None or self._last_t is None or not self.fps:
            return
        reached = self._last_t + 1.0 / self.fps
        # Tolerance: two frames, or 2 % of the length (header durations are estimates in some containers).
        if reached < self.duration - max(2.0 / self.fps, 0.02 * self.duration):
            self.truncated = True
            self.end_note = (f"{self.label}: ended at {reached:.1f} s of {self.duration:.1f} s "
                             f"(truncated or corrupt); kept the {self.frames_grabbed} decodable frames")
            log.warning(self.end_note)


IMAGE_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"BM": "BMP", b"II*\x00": "TIFF",
               b"MM\x00*": "TIFF", b"P6": "PPM", b"P5": "PGM"}


def _image_format(path: Path) -> str | None:
    """The still-image format a file starts with (OpenCV would open it as a 1-frame "video"), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in IMAGE_MAGIC.items() if head.startswith(magic)), None)


MP4_EPOCH_OFFSET = 2082844800  # seconds from 1904-01-01 (QuickTime/MP4 clock) to 1970-01-01


def mp4_header_times(path: str | os.PathLike) -> tuple[float | None, float | None]:
    """(creation time as epoch seconds, duration in seconds) from an MP4/MOV `moov/mvhd` box; None when absent.

    Reads box headers only (the payload of `mdat` is skipped), so it costs a few reads even on a long file.
    Encoders that leave the creation time 0 (1904) give None: that is "unknown", not a real date.
    """
    import struct

    def boxes(f, end: int):
        while f.tell() + 8 <= end:
            start = f.tell()
            head = f.read(8)
            if len(head) < 8:
                return
            size, kind = struct.unpack(">I4s", head)
            if size == 1:
                big = f.read(8)
                if len(big) < 8:
                    return
                size = struct.unpack(">Q", big)[0]
            elif size == 0:
                size = end - start
            if size < 8 or start + size > end:
                return
            yield kind, start, f.tell(), start + size
            f.seek(start + size)

    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            total = f.tell()
            f.seek(0)
            for kind, _, body, end in list(boxes(f, total)):
                if kind != b"moov":
                    continue
                f.seek(body)
                for sub, _, sbody, _ in list(boxes(f, end)):
                    if sub != b"mvhd":
                        continue
                    f.seek(sbody)
                    version = f.read(4)[0]
                    if version == 1:
                        created, _, scale, length = struct.unpack(">QQIQ", f.read(28))
                    else:
                        created, _, scale, length = struct.unpack(">IIII", f.read(16))
                    when = created - MP4_EPOCH_OFFSET if created > MP4_EPOCH_OFFSET else None
                    return (float(when) if when else None), (length / scale if scale else None)
    except (OSError, IndexError, struct.error):
        pass
    return None, None


def file_start_time(path: str | os.PathLike, duration: float | None = None) -> tuple[float, str]:
    """When a recorded file began, as epoch seconds, and how that was found.

    The container's recorded creation time if it has one (MP4/MOV `mvhd`), else the file's modification time
    minus its duration (a recorder writes the file until the recording ends). `duration` is the length the
    decoder reports, used when the header gives none.
    """
    created, header_duration = mp4_header_times(path)
    if created is not None:
        return created, "container creation time"
    length = header_duration if header_duration else (duration or 0.0)
    return os.stat(path).st_mtime - length, "file modification time minus its duration"


def parse_spec(spec: str) -> tuple[str, int | str]:
    """Classify what the user typed: ("camera", 0), ("url", "rtsp://..."), ("file", "/path/clip.mp4")."""
    s = str(spec).strip()
    if not s:
        raise SourceError("video source '': empty (give a camera index, a file path or a URL)")
    if re.fullmatch(r"\d+", s):
        return "camera", int(s)
    if re.fullmatch(r"/dev/video\d+", s):
        return "camera", s
    if URL_RE.match(s):
        return "url", s
    if "://" in s:
        raise SourceError(f"video source {s!r}: unsupported URL scheme (use rtsp, http or https)")
    return "file", os.path.expanduser(s)


def open_source(spec: str | os.PathLike, cfg: CaptureConfig | None = None, *, connect: bool = True,
                open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
                read_timeout_s: float = DEFAULT_READ_TIMEOUT_S) -> OpenCVSource:
    """A source for a camera index ("0"), a video file path, or an rtsp/http(s) URL; connected unless told not.

    `cfg` supplies the reconnect policy for live sources (attempts, first backoff). Raises SourceError.
    """
    text = os.fspath(spec) if isinstance(spec, os.PathLike) else str(spec)
    kind, target = parse_spec(text)
    src = OpenCVSource(text, kind, target, cfg, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s)
    if connect:
        src.connect()
    return src
