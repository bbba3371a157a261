"""Can a text model learn to read its memories? Two small tasks trained from given weights, scored on held-out rows.

    .venv/bin/python tools/reading_probe.py copy --from models/default/hf --minutes 5
    .venv/bin/python tools/reading_probe.py lookup --from models/default/hf --minutes 60 --save /tmp/lookup
    .venv/bin/python tools/reading_probe.py lookup --from models/default/hf --device cuda --minutes 30

  copy    a random sequence of plain tokens, then the same sequence again; scored on the repeat. It needs the
          copy (induction) mechanism only: attend to where the current token occurred before and emit what
          followed it.
  lookup  2-N memories (train_default's recall rows: facts at random, so no prior over worlds can answer) and an
          open question; the reply is the answerer's JSON. Scored on the answer and on the citation, each token
          for token: both need the lookup (match the question to one memory line) before anything is copied.
          `--format short` drops the system message and instructions (a ~120-token row, ~4x cheaper a step);
          `--format product` is the prompt the runtime builds (~500 tokens).

It separates the two halves of reading so a training recipe can tell which one is missing. What it measured on
the embedded default is in models/default/README.md ("What limits it").
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

import train_default as T  # noqa: E402

FIRST_SPECIAL = "<|endoftext|>"  # plain tokens are the ids below the first added (special) token
HF_SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json")


def copy_batch(gen, rows: int, length: int, n_plain: int, head: int):
    """(rows, 1 + 2 * length) token ids: a head token, a random plain sequence, the same sequence again."""
    import torch

    x = torch.randint(0, n_plain, (rows, length), generator=gen)
    return torch.cat([torch.full((rows, 1), head), x, x], 1)


def score_copy(model, gen, n_plain: int, head: int, length: int, device) -> float:
    """Share of repeat tokens predicted right (arg-max) on 64 held-out sequences; chance is 1 / n_plain."""
    import torch

    model.eval()
    with torch.no_grad():
        x = copy_batch(gen, 64, length, n_plain, head).to(device)
        pred = model(input_ids=x).logits[:, length + 1:-1].argmax(-1)
    model.train()
    return round((pred == x[:, length + 2:]).float().mean().item(), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("task", choices=["copy", "lookup"])
    ap.add_argument("--from", dest="src", type=Path, default=ROOT / "models/default/hf", help="hf checkpoint folder")
    ap.add_argument("--minutes", type=float, default=10.0, help="wall-clock budget of the training")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=16, help="copy: tokens in the sequence that is repeated")
    ap.add_argument("--top", type=int, default=2, help="lookup: most memories shown (2..top)")
    ap.add_argument("--format", default="short", choices=["short", "product"], help="lookup: the row's prompt")
    ap.add_argument("--score-every", type=int, default=100, help="steps between held-out scores")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--save", type=Path, default=None, help="write the trained weights here (hf folder)")
    args = ap.parse_args()
    if not (args.src / "config.json").is_file() or not (args.src / "tokenizer.json").is_file():
        raise SystemExit(f"reading_probe: --from {args.src}: not an hf checkpoint folder (config.json, tokenizer.json)")
    if args.top < 2:
        raise SystemExit(f"reading_probe: --top {args.top}: a lookup row shows at least 2 memories")

    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok, penc = T.tokenizer_from(args.src)
    n_plain, head = tok.token_to_id(FIRST_SPECIAL), tok.token_to_id("<|im_start|>")
    model = T.load_model(args.src, args.device)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    rng, gen = random.Random(args.seed + 1), torch.Generator().manual_seed(args.seed + 1)

    def score():
        if args.task == "copy":
            return score_copy(model, torch.Generator().manual_seed(12345), n_plain, head, args.length, args.device)
        return T.probe_lookup(model, tok, penc, args.top, args.format, args.device)

    print(f"{args.task} from {args.src}: step 0 held-out {score()}", flush=True)
    t0, step = time.time(), 0
    while time.time() - t0 < args.minutes * 60:
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / 20)
        if args.task == "copy":
            x = copy_batch(gen, args.batch, args.length, n_plain, head).to(args.device)
            w = torch.zeros_like(x, dtype=torch.float)
            w[:, args.length + 2:] = 1  # the repeat, from its second token (the first cannot be known)
        else:
            x, w = T.padded([T.lookup_row(tok, penc, rng, args.top, args.format) for _ in range(args.batch)],
                            tok.token_to_id(FIRST_SPECIAL), args.device)
        opt.zero_grad(set_to_none=True)
        loss = T.ids_step(model, x, w)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.score_every == 0:
            print(f"step {step} ({time.time() - t0:.0f}s) loss {loss:.3f} held-out {score()}", flush=True)
    print(f"{args.task}: {step} steps in {time.time() - t0:.0f}s, held-out {score()}", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        for name in HF_SIDE_FILES:  # so the folder is itself a --from (and a train_default --from-dir)
            if (args.src / name).is_file():
                shutil.copy2(args.src / name, args.save / name)


if __name__ == "__main__":
    main()
