"""Train the face registry's network (`edge_agent/memory/faces.py`) on the synthetic world and write `faces.npz`.

Frames are the runtime's: synthetic clips rendered to mp4, decoded and cut by the capture path at the writer's frame
size (128 px), keyframes as the segmenter picks them. Labels come from the script: a person is in view during a
meeting once they have walked in (frames while they walk in or off are left out of the presence loss), and then
their skin, hair colour, hair style, glasses and shirt colour. Worlds 50000+ train; dev worlds 8000-8047 are
probed (never trained on); held-out worlds 9000+ are left to `tools/default_heldout.py`.

    .venv/bin/python tools/train_faces.py --clips 240 --steps 3000 --out models/default/faces.npz
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_agent.memory.faces import CONVS, POOL  # noqa: E402
from edge_agent.synth.world import GLASSES, HAIR, HAIR_STYLES, SKIN, COLOURS  # noqa: E402

TRAIN_SEED0 = 50000
DEV_SEEDS = range(8000, 8048)
FRAME_SIZE = 128
GROUPS = {"skin": list(SKIN), "hair": list(HAIR), "hair_style": list(HAIR_STYLES), "glasses": list(GLASSES),
          "shirt": list(COLOURS)}
# How far (in 256 px view pixels) a person still walking in or off may be from their place and count as in view;
# beyond OFF_VIEW they are out of the frame.
IN_VIEW, OFF_VIEW = 40.0, 200.0


def label(script, people: dict, t: float) -> tuple[int, list[int], str | None]:
    """(presence: 1, 0, or -1 for "left out"; attribute indices or -1s; the person's tag) of the frame at t."""
    shot = next((s for s in script.shots if s.t0 <= t < s.t1), script.shots[-1])
    if shot.kind != "meet" or not shot.person:
        return 0, [-1] * len(GROUPS), None
    slide = max(0.0, 1.0 - (t - shot.t0)) * 160 + max(0.0, 1.0 - (shot.t1 - t)) * 160  # as render.py draws it
    if slide >= OFF_VIEW:
        return 0, [-1] * len(GROUPS), None
    p = people[shot.person]
    attrs = [GROUPS[g].index(getattr(p, g)) for g in GROUPS]
    return (1 if slide < IN_VIEW else -1), attrs, shot.person


def clip_frames(seed: int, minutes: float = 4.0) -> list[dict]:
    """Every keyframe of a rendered clip with its labels and segment index."""
    from edge_agent.capture import open_source, segment_stream
    from edge_agent.config import CaptureConfig
    from edge_agent.synth import generate
    from edge_agent.synth.world import build_script, build_world

    rng = np.random.default_rng([seed, 0])
    world = build_world(rng)
    script = build_script(world, round(minutes * 60.0, 3), rng)
    people = {p.tag: p for p in world.people}
    out = []
    with tempfile.TemporaryDirectory() as d:
        paths = generate(seed=seed, minutes=minutes, out_dir=d)
        with open_source(str(paths.video)) as src:
            for s in segment_stream(src, CaptureConfig(frame_size=FRAME_SIZE)):
                for f in s.keyframes:
                    present, attrs, tag = label(script, people, f.t)
                    out.append({"seed": seed, "segment": s.index, "t": f.t, "image": f.image, "present": present,
                                "attrs": attrs, "tag": tag})
    return out


def frames_of(seeds, jobs: int) -> list[dict]:
    if jobs <= 1:
        return [f for s in seeds for f in clip_frames(s)]
    with ProcessPoolExecutor(jobs) as ex:
        return [f for fr in ex.map(clip_frames, seeds) for f in fr]


def build_net():
    import torch.nn as nn

    class FaceNet(nn.Module):
        """The torch twin of FaceModel: the same layers and parameter names, so the weights load as they are."""

        def __init__(self):
            super().__init__()
            chans = (3, 16, 32, 32)
            self.c1 = nn.Conv2d(chans[0], chans[1], 5, 2, 2)
            self.c2 = nn.Conv2d(chans[1], chans[2], 3, 2, 1)
            self.c3 = nn.Conv2d(chans[2], chans[3], 3, 2, 1)
            self.pool = nn.AdaptiveAvgPool2d(POOL)
            self.fc = nn.Linear(chans[3] * POOL[0] * POOL[1], 64)
            self.head = nn.Linear(64, 2 + sum(len(v) for v in GROUPS.values()))

        def forward(self, x):
            for name, _ in CONVS:
                x = getattr(self, name)(x).relu()
            return self.head(self.fc(self.pool(x).flatten(1)).relu())

    assert [s for _, s in CONVS] == [2, 2, 2]
    return FaceNet()


def to_tensor(frames: list[dict]):
    import torch

    x = np.stack([f["image"] for f in frames]).astype(np.float32).transpose(0, 3, 1, 2) / 255.0 - 0.5
    return (torch.from_numpy(x), torch.tensor([f["present"] for f in frames]),
            torch.tensor([f["attrs"] for f in frames]))


def loss_of(net, x, present, attrs):
    import torch.nn.functional as F

    out = net(x)
    loss = F.cross_entropy(out[:, :2], present.clamp(min=0), reduction="none")[present >= 0].mean()
    i = 2
    for g, (name, values) in enumerate(GROUPS.items()):
        y = attrs[:, g]
        if (y >= 0).any():
            loss = loss + F.cross_entropy(out[:, i:i + len(values)][y >= 0], y[y >= 0])
        i += len(values)
    return loss


def save_npz(net, path: Path, extra: dict) -> None:
    weights = {k: v.detach().cpu().numpy().astype(np.float32) for k, v in net.state_dict().items()}
    meta = {"groups": GROUPS, "size": [FRAME_SIZE, FRAME_SIZE * 3 // 4], **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, meta=np.array(json.dumps(meta)), **weights)
    tmp.replace(path)


def probe(model, frames: list[dict]) -> dict:
    """Presence accuracy on clear frames, attribute accuracy on frames with a person, on frames never trained on."""
    clear = [f for f in frames if f["present"] >= 0]
    p, idents = model([f["image"] for f in clear])
    pres = float(np.mean((p >= 0.5) == np.array([f["present"] == 1 for f in clear])))
    shown = [(f, v) for f, v in zip(clear, idents) if f["present"] == 1]
    acc = {}
    i = 0
    for g, (name, values) in enumerate(GROUPS.items()):
        acc[name] = round(float(np.mean([np.argmax(v[i:i + len(values)]) == f["attrs"][g] for f, v in shown])), 4)
        i += len(values)
    return {"presence": round(pres, 4), "n_clear": len(clear), "n_person": len(shown), **acc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=240, help="training worlds (4-minute clips) from seed 50000")
    ap.add_argument("--dev-clips", type=int, default=16, help="dev worlds from 8000 for the probe")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import torch

    from edge_agent.memory.faces import FaceModel

    torch.manual_seed(args.seed)
    t0 = time.time()
    train = frames_of(range(TRAIN_SEED0, TRAIN_SEED0 + args.clips), args.jobs)
    dev = frames_of(list(DEV_SEEDS)[:args.dev_clips], args.jobs)
    print(f"frames: train {len(train)} ({sum(f['present'] == 1 for f in train)} with a person), "
          f"dev {len(dev)}, {time.time() - t0:.0f} s", flush=True)
    people = [f for f in train if f["present"] != 0]
    others = [f for f in train if f["present"] == 0]
    net = build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.steps, pct_start=0.1)
    rng = np.random.default_rng(args.seed)
    losses = []
    for step in range(args.steps):
        half = args.batch // 2  # half the batch shows a person: they are ~15 % of keyframes
        batch = [people[i] for i in rng.integers(len(people), size=half)] + \
                [others[i] for i in rng.integers(len(others), size=args.batch - half)]
        x, present, attrs = to_tensor(batch)
        if rng.random() < 0.5:
            x = x.flip(3)  # a person seen from the other side is the same person
        loss = loss_of(net, x, present, attrs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 250 == 0 or step + 1 == args.steps:
            save_npz(net, args.out, {})
            print(f"step {step + 1}: loss {np.mean(losses[-250:]):.4f}  dev {probe(FaceModel.load(args.out), dev)}"
                  f"  {time.time() - t0:.0f} s", flush=True)
    result = probe(FaceModel.load(args.out), dev)
    save_npz(net, args.out, {"recipe": vars(args) | {"out": str(args.out)}, "dev_probe": result,
                             "train_seeds": [TRAIN_SEED0, TRAIN_SEED0 + args.clips - 1],
                             "loss_first_last": [round(float(np.mean(losses[:50])), 4),
                                                 round(float(np.mean(losses[-50:])), 4)]})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
