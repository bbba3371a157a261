"""qa.colour_by_memory: an open "what colour was the X ...?" is answered with the word before X in the sentence, of
the latest memories naming X, most like the question; not by the reader."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.answer import BY_COLOUR, answer
from edge_agent.qa.colour import colour_said
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import CountingEmbedder, ten_second_memories

TEXTS = ["I put the green cup on the shelf in the living room.",       # 0-10 s
         "I picked up the red cup from the table in the kitchen.",     # 10-20 s
         "I walked into the kitchen. I put the cup on the counter.",   # 20-30 s
         "I put the blue bowl on the shelf in the living room."]       # 30-40 s


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


def test_the_colour_is_the_word_before_the_thing_in_the_sentence_most_like_the_question():
    memories = [{"id": i + 1, "text": t} for i, t in enumerate(TEXTS)]
    emb = CountingEmbedder()
    word, memory = colour_said("What colour was the cup I put on the shelf in the living room?", memories, emb)
    assert (word, memory["id"]) == ("green", 1)
    word, memory = colour_said("What colour was the cup I picked up from the table?", memories, emb)
    assert (word, memory["id"]) == ("red", 2)
    # "the cup" has no word before it but an article: not a colour; nothing else names a mug
    assert colour_said("What colour was the cup I put on the counter?", memories[2:3], emb) is None
    assert colour_said("What colour was the mug?", memories, emb) is None
    assert colour_said("Where did I leave the cup?", memories, emb) is None


def test_an_open_colour_question_is_answered_from_the_memories_when_on_and_by_the_model_otherwise(store):
    on = QAConfig(top_k=8, colour_k=3, colour_by_memory=True)
    q = "What colour was the cup I picked up from the table in the kitchen?"
    got = answer(store, ScriptedBackend([]), q, None, asked_at=100.0, cfg=on, embedder=CountingEmbedder())
    assert got["text"] == "red" and got["reason"] == BY_COLOUR and [c["t_start"] for c in got["citations"]] == [10.0]
    reply = json.dumps({"answer": "green", "citations": []})
    off = answer(store, ScriptedBackend([reply]), q, None, asked_at=100.0, cfg=QAConfig(top_k=8, colour_k=3),
                 embedder=CountingEmbedder())
    mc = answer(store, ScriptedBackend([json.dumps({"answer": "B", "citations": []})]), q, ["green", "red"],
                asked_at=100.0, cfg=on, embedder=CountingEmbedder())
    no_minilm = answer(store, ScriptedBackend([reply]), q, None, asked_at=100.0,
                       cfg=QAConfig(top_k=8, colour_k=3, colour_by_memory=True, use_embeddings=False))
    assert off["text"] == "green" and mc["choice"] == "B" and no_minilm["text"] == "green"
    assert BY_COLOUR not in (off["reason"], mc["reason"], no_minilm["reason"])
