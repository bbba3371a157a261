"""CSI cameras on a Jetson: through a GStreamer pipeline into OpenCV, where the installed OpenCV has GStreamer.

`edge-agent run "gst:nvarguscamerasrc sensor-id=0 ! ... ! appsink"` (or any spec holding ` ! `) opens the
pipeline with `cv2.CAP_GSTREAMER`; everything else goes to capture.open_source. The pip wheel
opencv-python-headless is built WITHOUT GStreamer: on a Jetson use JetPack's OpenCV (apt `python3-opencv`,
built with GStreamer) or a USB/V4L2 camera (`/dev/video0`). `edge-agent doctor --device` says which applies.
"""

from __future__ import annotations

from typing import Any

from edge_agent.capture.source import OpenCVSource, VideoSource, open_source
from edge_agent.config import CaptureConfig
from edge_agent.errors import SourceError

GST_PREFIX = "gst:"


def csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: int = 30) -> str:
    """The usual Jetson CSI pipeline: Argus ISP -> NVMM -> nvvidconv to BGRx -> BGR for OpenCV, newest frame only."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! video/x-raw(memory:NVMM), width={width}, height={height}, "
            f"framerate={fps}/1 ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR ! "
            "appsink drop=1 max-buffers=1")


def opencv_gstreamer() -> bool | None:
    """True/False: the installed OpenCV was built with GStreamer; None: OpenCV is not importable."""
    try:
        import cv2
    except ImportError:
        return None
    for line in cv2.getBuildInformation().splitlines():
        if line.strip().startswith("GStreamer:"):
            return "YES" in line.split(":", 1)[1].upper()
    return False


def is_pipeline(spec: str) -> bool:
    return spec.startswith(GST_PREFIX) or " ! " in spec


class GStreamerSource(OpenCVSource):
    """A live camera read through a GStreamer pipeline ending in appsink."""

    def __init__(self, spec: str, cfg: CaptureConfig | None = None, **kw: Any) -> None:
        pipeline = spec[len(GST_PREFIX):] if spec.startswith(GST_PREFIX) else spec
        super().__init__(spec, "camera", pipeline.strip(), cfg, **kw)

    @property
    def label(self) -> str:
        return f"GStreamer pipeline {self.target!r}"

    def _make_capture(self) -> Any:
        import cv2

        return cv2.VideoCapture(self.target, cv2.CAP_GSTREAMER)

    def _open_failure(self) -> str:
        return (f"{self.label}: cannot be opened (is nvargus-daemon running, the sensor id right, and does the "
                "pipeline end in appsink?)")


def open_video(spec: str, cfg: CaptureConfig | None = None) -> VideoSource:
    """capture.open_source, plus GStreamer pipelines for CSI cameras. Raises SourceError naming the problem."""
    if not is_pipeline(spec):
        return open_source(spec, cfg)
    if not opencv_gstreamer():
        raise SourceError(f"video source {spec!r}: a GStreamer pipeline, but the installed OpenCV was built without "
                          "GStreamer (pip's opencv-python-headless never has it); on a Jetson install JetPack's "
                          "OpenCV (sudo apt install python3-opencv, venv with --system-site-packages) or use a "
                          "USB camera (/dev/video0)")
    src = GStreamerSource(spec, cfg)
    src.connect()
    return src
