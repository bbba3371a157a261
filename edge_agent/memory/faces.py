"""The face registry: who a segment's keyframes show, matched against the people met before, and the `<face_N>`
tags of its memory set to theirs.

A memory's `<face_N>` means the N-th person the wearer met (the paper's pipeline gets these ids from a face
registry, TaskMem's `face_process.py`). A writer sees a window of five segments: it cannot know whether the woman
in front of it is the one met an hour ago, so its tags are guesses. The registry knows: a small network
(`FaceModel`, numpy only) says per keyframe whether a person is in view and gives an identity vector; the
segment's people are matched (cosine) against the registry in the store, new ones get the next number, and the
memory's tags, in the order it names them, become the registry's, in the order the frames show them.

The embedded default ships its network as `faces.npz` (trained on the synthetic world by `tools/train_faces.py`);
a model folder without one leaves the writer's tags as written (`faces.enabled`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from edge_agent.errors import ModelError

if TYPE_CHECKING:
    from edge_agent.config import Config, FacesConfig
    from edge_agent.store import Store
    from edge_agent.types import Segment

FACES_FILE = "faces.npz"
TAG = re.compile(r"<face_\d+>")
# The network's layers, in order: (name, stride) of each 'same'-padded convolution, then two dense layers.
CONVS = (("c1", 2), ("c2", 2), ("c3", 2))
POOL = (3, 4)  # the last feature map is averaged down to this grid (rows, columns) before the dense layers


def _conv_relu(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """x: C x H x W; w: O x C x k x k (PyTorch's layout), zero padding k // 2. Returns O x H' x W'."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))[:, ::stride, ::stride]
    out = np.tensordot(w, win, axes=([1, 2, 3], [0, 3, 4])) + b[:, None, None]
    return np.maximum(out, 0.0, dtype=np.float32)


def _pool(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Average C x H x W down to C x rows x cols (H, W divisible by them), as torch's adaptive_avg_pool2d does."""
    c, h, w = x.shape
    return x.reshape(c, rows, h // rows, cols, w // cols).mean(axis=(2, 4))


@dataclass
class FaceModel:
    """Per keyframe: P(a person is in view) and an identity vector (one softmax per attribute group, scaled so a
    certain prediction has norm 1; two people who differ in d of g groups then lie at cosine 1 - d/g)."""

    weights: dict[str, np.ndarray]
    groups: dict[str, list[str]]  # attribute -> its values, the identity heads in order
    size: tuple[int, int]  # (width, height) of the frames it was trained on

    @classmethod
    def load(cls, path: str | Path) -> "FaceModel":
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                weights = {k: z[k].astype(np.float32) for k in z.files if k != "meta"}
        except (OSError, ValueError, KeyError) as e:
            raise ModelError(f"face model {str(path)!r}: not readable ({e})") from None
        return cls(weights, {k: list(v) for k, v in meta["groups"].items()}, tuple(meta["size"]))

    def features(self, image: np.ndarray) -> np.ndarray:
        """The raw head outputs (presence logit pair, then each group's logits) of one RGB uint8 frame."""
        import cv2

        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        x = image.astype(np.float32).transpose(2, 0, 1) / 255.0 - 0.5
        for name, stride in CONVS:
            x = _conv_relu(x, self.weights[f"{name}.weight"], self.weights[f"{name}.bias"], stride)
        x = _pool(x, *POOL).reshape(-1)
        x = np.maximum(self.weights["fc.weight"] @ x + self.weights["fc.bias"], 0.0)
        return self.weights["head.weight"] @ x + self.weights["head.bias"]

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(P(a person is in view) per frame, shape n; identity vectors, shape n x the groups' sizes summed)."""
        outs = [self.features(im) for im in images]
        present, idents = [], []
        scale = 1.0 / np.sqrt(len(self.groups))
        for o in outs:
            present.append(_softmax(o[:2])[1])
            parts, i = [], 2
            for values in self.groups.values():
                parts.append(_softmax(o[i:i + len(values)]) * scale)
                i += len(values)
            idents.append(np.concatenate(parts))
        dim = sum(len(v) for v in self.groups.values())
        return np.asarray(present, np.float32), np.asarray(idents, np.float32).reshape(len(outs), dim)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


class FaceRegistry:
    """The people the wearer has met, in the store's `faces` table, numbered in the order they were first seen."""

    def __init__(self, store: "Store", model: FaceModel, cfg: "FacesConfig"):
        self.store, self.model, self.cfg = store, model, cfg

    def people_in(self, segment: "Segment", t_origin: float = 0.0) -> list[str]:
        """The tags of the people the segment's keyframes show, in the order they appear; a person not met
        before is registered under the next number (committed at once: a tag, once given, is never reused)."""
        if not segment.keyframes:
            return []
        present, idents = self.model([f.image for f in segment.keyframes])
        # Frames of one person in a row are one look at them: average them before asking the registry.
        looks: list[list[np.ndarray]] = []
        for p, v in zip(present, idents):
            if p < self.cfg.present_probability:
                continue
            if looks and _cos(np.mean(looks[-1], axis=0), v) >= self.cfg.match_similarity:
                looks[-1].append(v)
            else:
                looks.append([v])
        tags: list[str] = []
        for look in looks:
            v = np.mean(look, axis=0).astype(np.float32)
            tag = self.store.match_face(v, self.cfg.match_similarity, len(look), t_origin + segment.t_start)
            if tag not in tags:
                tags.append(tag)
        return tags


def retag(memory: str, tags: Sequence[str]) -> str:
    """The memory with its i-th distinct `<face_N>` (in reading order) replaced by tags[i]; tags beyond the ones
    the frames showed stay as written."""
    named = list(dict.fromkeys(TAG.findall(memory)))
    mapping = {old: new for old, new in zip(named, tags)}
    return TAG.sub(lambda m: mapping.get(m.group(0), m.group(0)), memory) if mapping else memory


def face_network_path(cfg: "Config", model_dir: Path | None) -> Path | None:
    """The face network to use, or None: `faces.enabled` "off", or "auto" and none there (`faces.model`, else
    the model folder's faces.npz). "on", or a `faces.model` that does not exist, is an error."""
    fc = cfg.faces
    if fc.enabled == "off":
        return None
    path = Path(fc.model).expanduser() if fc.model else (model_dir / FACES_FILE if model_dir else None)
    if path is None or not path.is_file():
        if fc.model or fc.enabled == "on":
            raise ModelError(f"face network {str(path) if path else FACES_FILE!r}: no such file (faces.enabled = "
                             f"\"off\" writes without a face registry)")
        return None
    return path


def open_face_registry(store: "Store", cfg: "Config", model_dir: Path | None) -> FaceRegistry | None:
    """The registry for the configured model, or None where `face_network_path` finds no network."""
    path = face_network_path(cfg, model_dir)
    return FaceRegistry(store, FaceModel.load(path), cfg.faces) if path is not None else None
