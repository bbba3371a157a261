"""Open questions answered from the memories, not the reader's words: what the wearer was doing at a time
(qa.doing_at_moment: the memory of that moment) and what they did right after something (qa.next_by_memories: the
sentence after that event's, qa/after.py)."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.qa.after import after_asked, next_sentence
from edge_agent.qa.answer import BY_MOMENT, BY_NEXT, answer
from edge_agent.qa.when import doing_asked
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import CountingEmbedder, ten_second_memories

TEXTS = ["I was cooking at the counter in the kitchen.",                            # 0-10 s
         "I was cooking at the counter in the kitchen.",                            # 10-20 s
         "I read a note at the fridge. I walked into the living room.",             # 20-30 s
         "I put the red cup on the table in the living room.",                      # 30-40 s
         "I was watching tv in the living room."]                                   # 40-50 s


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


@pytest.mark.parametrize("question,event", [
    ("What did I do right after I read the note?", "read the note"),
    ("what did I do just after I walked into the living room", "walked into the living room"),
    ("What did I do after I put the red cup on the table?", "put the red cup on the table"),
    ("What did I do first?", None), ("Which of these did I do right after I read the note?", None)])
def test_the_right_after_questions_it_reads(question, event):
    assert after_asked(question) == event


def test_the_doing_questions_it_reads():
    assert doing_asked("What was I doing at 7:07 into the recording?") and doing_asked("what did I do at 3 pm?")
    assert not doing_asked("Where was I at 7:07 into the recording?")
    assert not doing_asked("What did I do right after I read the note?")


def test_what_came_next_is_the_next_sentence_in_the_same_memory_else_the_next_memory_not_telling_it_again(store):
    emb = CountingEmbedder()
    assert next_sentence(store, "read a note at the fridge", emb, None, None)[0] == "I walked into the living room."
    sentence, memory = next_sentence(store, "walked into the living room", emb, None, None)
    assert sentence == "I put the red cup on the table in the living room." and memory["t_start"] == 30.0
    # cooking is written over two segments: what followed it is the note, not the same cooking again
    assert next_sentence(store, "cooking at the counter", emb, None, None)[0] == "I read a note at the fridge."
    # nothing follows the last memory in range (`until`)
    assert next_sentence(store, "put the red cup on the table", emb, None, 40.0) is None


def test_open_questions_are_answered_by_the_memories_when_on_and_by_the_model_when_off(store):
    on = QAConfig(top_k=8, moment_k=3, doing_at_moment=True, next_by_memories=True)
    emb = CountingEmbedder()
    nxt = answer(store, ScriptedBackend([]), "What did I do right after I read the note?", None, asked_at=100.0,
                 cfg=on, embedder=emb)  # no model call: the script is empty
    assert nxt["text"] == "I walked into the living room." and nxt["reason"] == BY_NEXT and nxt["choice"] is None
    assert [c["t_start"] for c in nxt["citations"]] == [20.0]
    doing = answer(store, ScriptedBackend([]), "What was I doing at 0:35 into the recording?", None, asked_at=100.0,
                   cfg=on, embedder=emb)
    assert doing["text"] == TEXTS[3] and doing["reason"] == BY_MOMENT
    assert [c["t_start"] for c in doing["citations"]] == [30.0]
    # off, with options (multiple choice), or without MiniLM for "right after": the model answers
    reply = json.dumps({"answer": "cooking", "citations": []})
    off = answer(store, ScriptedBackend([reply]), "What was I doing at 0:35 into the recording?", None,
                 asked_at=100.0, cfg=QAConfig(top_k=8, moment_k=3), embedder=emb)
    assert off["text"] == "cooking" and off["reason"] not in (BY_MOMENT, BY_NEXT)
    mc = answer(store, ScriptedBackend([json.dumps({"answer": "A", "citations": []})]),
                "What did I do right after I read the note?", ["walked", "cooked"], asked_at=100.0, cfg=on,
                embedder=emb)
    assert mc["choice"] == "A" and mc["reason"] != BY_NEXT
    no_minilm = answer(store, ScriptedBackend([reply]), "What did I do right after I read the note?", None,
                       asked_at=100.0, cfg=QAConfig(top_k=8, next_by_memories=True, use_embeddings=False))
    assert no_minilm["text"] == "cooking" and no_minilm["reason"] != BY_NEXT
