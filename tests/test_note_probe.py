"""tools/note_probe.py: note chunks as capture cuts them, and a note-text head that learns on the shipped tower."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import load_tool

DEFAULT_HF = Path(__file__).resolve().parents[1] / "models" / "default" / "hf"


@pytest.fixture(scope="module")
def probe():
    return load_tool("note_probe")


@pytest.fixture(scope="module")
def notes(probe):
    return probe.note_chunks(probe.TRAIN_SEED0, 3, 128)


def test_note_chunks_are_capture_sized_frame_pairs_with_their_note(probe, notes):
    chunks, texts = notes
    assert chunks.shape[1:] == (2, 96, 128, 3) and chunks.dtype == np.uint8 and len(chunks) == len(texts) > 10
    assert all(0 < len(t) < probe.POSITIONS and set(t) <= set(probe.ALPHABET) for t in texts)
    assert len(set(texts)) >= 3
    assert probe.decode(probe.encode(texts)) == texts
    # a note is dark text on a light paper: the frames are not blank
    assert chunks.std() > 20


def test_the_head_learns_and_tuning_moves_the_tower(probe, notes):
    import torch

    chunks, texts = notes
    reader = probe.NoteReader(DEFAULT_HF, 12)
    before = [p.detach().clone() for p in reader.model.model.visual.parameters()]
    run = probe.train(reader, chunks, texts, notes, tower=False, minutes=5, steps=40, every=1000)
    assert run["steps"] == 40
    assert np.mean(run["losses"][-5:]) < 0.6 * np.mean(run["losses"][:5])
    assert all(torch.equal(a, b) for a, b in zip(before, reader.model.model.visual.parameters()))  # frozen
    probe.train(reader, chunks, texts, notes, tower=True, minutes=5, steps=3, every=1000)
    assert any(not torch.equal(a, b) for a, b in zip(before, reader.model.model.visual.parameters()))
    score = reader.score(chunks[:8], texts[:8])
    assert 0.0 <= score["exact"] <= score["chars"] <= 1.0 and score["chars"] > 0.2  # on its own training chunks
