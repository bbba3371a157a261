"""Capture: video sources (camera index, file, RTSP/HTTP via OpenCV), the segmenter, the capture thread.

Importing this package imports OpenCV (cv2): the CLI imports it inside the commands that read video.
"""

from edge_agent.capture.segmenter import segment_stream, target_size
from edge_agent.capture.source import OpenCVSource, VideoSource, open_source, parse_spec
from edge_agent.capture.thread import CaptureThread

__all__ = ["CaptureThread", "OpenCVSource", "VideoSource", "open_source", "parse_spec", "segment_stream",
           "target_size"]
