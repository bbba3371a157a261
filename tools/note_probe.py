"""Can a model's vision tower read the notes its keyframes show? A diagnostic: a note-text head on the merger output.

    .venv/bin/python tools/note_probe.py frozen --from models/default/hf            # the tower as it is
    .venv/bin/python tools/note_probe.py tuned --from models/default/hf --minutes 20  # tower + head trained
    .venv/bin/python tools/note_probe.py tuned --frame-size 256 --minutes 14          # at twice the side

Note frames come from fresh synthetic worlds (seeds 30000+ to train, 39000+ held out; 4-minute worlds, never the
issue's dev or held-out seeds), rendered at 2 frames a second while the wearer reads a note, through an mp4v round
trip and the capture's downscale (`capture.segmenter.prepare`), paired as 2-frame chunks as mtmd pairs keyframes.
A head (an MLP on a chunk's flattened merger tokens) predicts the note's text as one character class at each of 14
positions. `frozen` trains the head alone on the tower's output (does it already carry the glyphs?); `tuned` trains
tower and head together (can it learn to?). Scored on the held-out chunks: characters right (of the text's, spaces
included) and whole texts right. A chunk may show part of a note (the view pans), so 100 % is out of reach.
What it measured on the embedded default is in models/default/README.md ("What limits it", "Reading notes").
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

ALPHABET = " ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:"  # every character a note (synth.world.note_text) uses
POSITIONS = 14  # the longest note text is 13 characters ("MEETING 12:45")
TRAIN_SEED0, HELD_SEED0 = 30000, 39000
WORLD_SECONDS = 240.0


def note_chunks(seed0: int, n_worlds: int, frame_size: int) -> tuple[np.ndarray, list[str]]:
    """(chunks (n, 2, h, w, 3) uint8 RGB, their note texts) of the note shots of worlds seed0..seed0+n_worlds-1."""
    import cv2

    from edge_agent.capture.segmenter import prepare
    from edge_agent.synth.render import VIEW_H, VIEW_W, Renderer
    from edge_agent.synth.world import build_script, build_world

    chunks, texts = [], []
    for seed in range(seed0, seed0 + n_worlds):
        rng = np.random.default_rng([seed, 0])
        world = build_world(rng)
        script = build_script(world, WORLD_SECONDS, rng)
        signs = [s for s in script.shots if s.kind == "sign" and s.text]
        shown = [(i, bgr) for t, bgr in Renderer(world, script, 2.0).frames()
                 for i, s in enumerate(signs) if s.t0 <= t < s.t1]
        if not shown:
            continue
        with tempfile.TemporaryDirectory() as d:  # the codec round trip capture's frames have been through
            path = str(Path(d) / "notes.mp4")
            out = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 2.0, (VIEW_W, VIEW_H))
            for _, bgr in shown:
                out.write(bgr)
            out.release()
            cap = cv2.VideoCapture(path)
            back = []
            while (got := cap.read())[0]:
                back.append(prepare(got[1], frame_size))
            cap.release()
        by_shot: dict[int, list[np.ndarray]] = {}
        for (i, _), rgb in zip(shown, back):
            by_shot.setdefault(i, []).append(rgb)
        for i, frames in by_shot.items():
            for j in range(0, len(frames) - 1, 2):
                chunks.append(np.stack(frames[j:j + 2]))
                texts.append(signs[i].text)
    return np.stack(chunks), texts


def encode(texts: list[str]):
    import torch

    return torch.tensor([[ALPHABET.index(c) for c in t.ljust(POSITIONS)] for t in texts])


def decode(classes) -> list[str]:
    return ["".join(ALPHABET[i] for i in row).rstrip() for row in classes.tolist()]


class NoteReader:
    """The model's vision tower and a note-text head over its merger output."""

    def __init__(self, hf_dir: Path, n_tokens: int):
        import torch
        from transformers import AutoModelForImageTextToText

        self.model = AutoModelForImageTextToText.from_pretrained(str(hf_dir), dtype=torch.float32)
        hidden = self.model.config.vision_config.out_hidden_size
        self.head = torch.nn.Sequential(torch.nn.Linear(n_tokens * hidden, 512), torch.nn.GELU(),
                                        torch.nn.Linear(512, POSITIONS * len(ALPHABET)))

    def features(self, chunks: np.ndarray):
        import torch

        from edge_agent.types import ImagePart
        from edge_agent.vlm.prompt import ImageChunk, pixel_inputs
        from train_default import image_features

        pix, grids = pixel_inputs([ImageChunk(tuple(ImagePart(f"f{j}", f) for j, f in enumerate(c))) for c in chunks])
        return image_features(self.model, torch.from_numpy(pix), torch.tensor(grids)).flatten(1)

    def logits(self, chunks: np.ndarray):
        return self.head(self.features(chunks)).view(len(chunks), POSITIONS, len(ALPHABET))

    def score(self, chunks: np.ndarray, texts: list[str]) -> dict:
        """Characters right (over the texts' own positions) and whole texts right, on held-out chunks."""
        import torch

        self.model.eval()
        with torch.no_grad():
            pred = torch.cat([self.logits(chunks[i:i + 128]).argmax(-1) for i in range(0, len(chunks), 128)])
        self.model.train()
        want = encode(texts)
        mask = torch.tensor([[k < len(t) for k in range(POSITIONS)] for t in texts])
        said = decode(pred)
        return {"chars": round(float(((pred == want) & mask).sum() / mask.sum()), 3),
                "exact": round(float(np.mean([a == b for a, b in zip(said, texts)])), 3),
                "examples": [f"{b} -> {a}" for a, b in list(zip(said, texts))[:: max(1, len(texts) // 5)][:5]]}


def train(reader: NoteReader, chunks: np.ndarray, texts: list[str], held: tuple[np.ndarray, list[str]], *,
          tower: bool, minutes: float, steps: int, batch: int = 32, seed: int = 0, every: int = 200) -> dict:
    """Train the head (and the tower when `tower`) for `steps` or `minutes`, whichever ends first; probe `every`."""
    import torch

    torch.manual_seed(seed)
    for p in reader.model.parameters():
        p.requires_grad_(False)
    groups = [{"params": reader.head.parameters(), "lr": 1e-3}]
    if tower:
        vis = reader.model.model.visual
        for p in vis.parameters():
            p.requires_grad_(True)
        groups.append({"params": vis.parameters(), "lr": 3e-4})
    opt = torch.optim.AdamW(groups, weight_decay=0.01)
    want = encode(texts)
    losses, probes, t0, step = [], [], time.time(), 0
    while step < steps and time.time() - t0 < minutes * 60:
        i = torch.randint(0, len(chunks), (batch,))
        loss = torch.nn.functional.cross_entropy(reader.logits(chunks[i.numpy()]).reshape(-1, len(ALPHABET)),
                                                 want[i].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % every == 0:
            probes.append({"step": step, "seconds": round(time.time() - t0), **reader.score(*held)})
            print(probes[-1], flush=True)
    return {"steps": step, "seconds": round(time.time() - t0), "losses": losses, "probes": probes,
            "held_out": reader.score(*held)}


def main(argv: list[str] | None = None) -> dict:
    import json

    import torch

    from edge_agent.vlm.prompt import image_tokens

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["frozen", "tuned"], help="train the head alone, or the tower with it")
    ap.add_argument("--from", dest="from_dir", type=Path, default=ROOT / "models" / "default" / "hf")
    ap.add_argument("--frame-size", type=int, default=128, help="keyframe longest side (capture.frame_size)")
    ap.add_argument("--worlds", type=int, default=700, help="training worlds (about 22 note chunks each)")
    ap.add_argument("--held-worlds", type=int, default=60)
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, help="JSON of the run (probes, held-out score)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    chunks, texts = note_chunks(TRAIN_SEED0, args.worlds, args.frame_size)
    held = note_chunks(HELD_SEED0, args.held_worlds, args.frame_size)
    print(f"{len(texts)} training chunks ({len(set(texts))} texts), {len(held[1])} held out", flush=True)
    reader = NoteReader(args.from_dir, image_tokens(*chunks.shape[2:4]))
    res = {"what": args.what, "from": str(args.from_dir), "frame_size": args.frame_size, "chunks": len(texts),
           "held_chunks": len(held[1]), "before": reader.score(*held) if args.what == "tuned" else None,
           **train(reader, chunks, texts, held, tower=args.what == "tuned", minutes=args.minutes, steps=args.steps)}
    res["losses"] = res["losses"][:: max(1, len(res["losses"]) // 100)]
    if args.out:
        args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("what", "frame_size", "steps", "seconds", "held_out")}))
    return res


if __name__ == "__main__":
    main()
