"""A trained checkpoint -> a model folder the device runs: OUT/model.gguf (quantized), OUT/mmproj.gguf, OUT/hf/.

    export_checkpoint(hf_dir, out_dir, export_cfg) -> summary dict

Steps, all with the project's exporter (edge_agent.export): the checkpoint is copied to OUT/hf/ (the
full-precision weights Phase Two trains its steering vector against), exported to GGUF + mmproj, an importance
matrix is computed from the calibration set (writer-style prompts paired with synthetic-world frames, plus the
frames of any videos in calibration/videos/), and the text model is quantized with it (Q4_K_M by default).
The folder is then usable as `[model] name = "<OUT>"` (or EDGE_AGENT_MODEL__NAME=<OUT>) by `edge-agent run`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from edge_agent.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CALIBRATION = REPO_ROOT / "calibration" / "writer_prompts.txt"
CALIBRATION_VIDEOS = REPO_ROOT / "calibration" / "videos"

Progress = Callable[[str, int, int], None]


def calibration_frames(n: int, work: Path, frame_size: int = 128, videos: Path | None = None) -> list[Any]:
    """Up to n keyframes (RGB uint8) from a short synthetic clip and any videos under `videos`, via the capture path."""
    if n <= 0:
        return []
    from edge_agent.capture.segmenter import segment_stream
    from edge_agent.capture.source import open_source
    from edge_agent.config import CaptureConfig
    from edge_agent.synth import generate
    from edge_agent.train.data import find_videos

    clip = work / "calibration-clip"
    if not (clip / "video.mp4").is_file():
        generate(1000, 0.5, clip)
    sources = [clip / "video.mp4"]
    if videos is not None and videos.is_dir():
        sources += find_videos([videos])
    cfg = CaptureConfig(frame_size=frame_size)
    frames: list[Any] = []
    per_source = max(1, -(-n // len(sources)))
    for video in sources:
        src = open_source(str(video), cfg)
        try:
            got = [f.image for seg in segment_stream(src, cfg) for f in seg.keyframes]
        finally:
            src.close()
        step = max(1, len(got) // per_source)
        frames += got[::step][:per_source]
    return frames[:n]


def calibration_samples(ecfg, work: Path, calibration: Path | None = None) -> list[Any]:
    """Text prompts from the calibration file, the first ones paired with frames (image before text)."""
    from edge_agent.export import calibration_texts

    path = calibration or DEFAULT_CALIBRATION
    texts = calibration_texts(path)
    frames = calibration_frames(ecfg.calibration_frames, work, videos=CALIBRATION_VIDEOS)
    samples: list[Any] = [(t, frames[i]) if i < len(frames) else t for i, t in enumerate(texts)]
    samples += [(texts[i % len(texts)], f) for i, f in enumerate(frames[len(texts):])]
    return samples


def _copy_checkpoint(src: Path, dst: Path) -> None:
    if src.resolve() == dst.resolve():
        return
    if dst.exists():
        shutil.rmtree(dst)
    keep = [p for p in src.iterdir() if p.is_file() and not p.name.startswith(("optimizer", "scheduler", "rng_state",
                                                                              "trainer_state", "training_args"))]
    dst.mkdir(parents=True)
    for p in keep:
        shutil.copy2(p, dst / p.name)


def export_checkpoint(hf_dir: str | Path, out_dir: str | Path, ecfg, *, calibration: Path | None = None,
                      name: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Export `hf_dir` into the model folder `out_dir` (see module docstring); returns what was written."""
    from edge_agent.export import compute_imatrix, export_hf, quantize
    from edge_agent.export.moe_export import export_hf_moe, is_moe_checkpoint

    hf_dir, out = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").is_file():
        raise ConfigError(f"{hf_dir}: not a Hugging Face checkpoint folder (no config.json)")
    moe = is_moe_checkpoint(hf_dir)
    if moe and ecfg.quant_type != "none":
        # edge_agent.export.quantize (and compute_imatrix) accept the dense qwen3vl architecture only so far
        raise ConfigError(f"export.quant_type={ecfg.quant_type!r}: quantizing a Qwen3-VL MoE (qwen3vlmoe) export is "
                          'not supported yet; set quant_type = "none" (and quantize with llama-quantize)')
    out.mkdir(parents=True, exist_ok=True)
    hf_out = out / "hf"
    _copy_checkpoint(hf_dir, hf_out)
    work = out / ".export"
    work.mkdir(exist_ok=True)
    exporter = export_hf_moe if moe else export_hf
    full, mmproj = exporter(hf_out, work, ecfg.outtype, name=name or out.name, progress=progress)
    summary: dict[str, Any] = {"folder": str(out), "hf": str(hf_out), "arch": "qwen3vlmoe" if moe else "qwen3vl",
                               "outtype": ecfg.outtype,
                               "quant_type": ecfg.quant_type, "imatrix": None}
    if ecfg.quant_type == "none":
        shutil.move(str(full), out / "model.gguf")
    else:
        imx = None
        if ecfg.imatrix:
            samples = calibration_samples(ecfg, work, calibration)
            imx = compute_imatrix(hf_out, out / "imatrix.gguf", samples, dataset="edge-agent calibration",
                                  progress=progress)
            summary["imatrix"] = str(imx)
            summary["calibration_samples"] = len(samples)
        quantize(full, out / "model.gguf", ecfg.quant_type, imatrix=imx, progress=progress)
        full.unlink()
    shutil.move(str(mmproj), out / "mmproj.gguf")
    shutil.rmtree(work, ignore_errors=True)
    summary["model"] = str(out / "model.gguf")
    summary["mmproj"] = str(out / "mmproj.gguf")
    summary["model_bytes"] = (out / "model.gguf").stat().st_size
    (out / "export.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary
