"""Answering from memory only, with a scripted model: choices, citations, abstention, bad input, bad output."""

import json

import pytest

from edge_agent.config import QAConfig
from edge_agent.errors import QuestionError
from edge_agent.qa.answer import ANSWER_PREFIX, answer, answer_likelihood, parse_options, parse_reply
from edge_agent.vlm.fake import ScriptedBackend
from test_qa_retrieve import ten_second_memories


CFG = QAConfig(top_k=4, use_embeddings=False)  # FTS5 alone keeps these tests fast; retrieval has its own tests

TEXTS = [
    "I put the red cup on the kitchen table.",
    "<face_1> hands me a blue book near the shelf.",
    "I wash the red cup at the sink.",
    "I leave the red cup on the shelf.",
]


@pytest.fixture
def store(tmp_path):
    s = ten_second_memories(tmp_path, TEXTS)
    yield s
    s.close()


def mem_id(store, text):
    return next(m["id"] for m in store.memories() if m["text"] == text)


def test_multiple_choice_cites_only_shown_memories(store):
    sink = mem_id(store, TEXTS[2])
    backend = ScriptedBackend([json.dumps({"answer": "B", "citations": [sink, 9999, sink]})])
    res = answer(store, backend, "Where did I wash the red cup?", ["A. at the table", "B. at the sink"],
                 asked_at=100.0, cfg=CFG)
    assert res["choice"] == "B" and res["text"] == "at the sink" and res["abstained"] is False
    assert res["citations"] == [{"id": sink, "t_start": 20.0, "t_end": 30.0, "text": TEXTS[2]}]
    call = backend.calls[0]
    assert call.json_schema["properties"]["answer"]["enum"] == ["A", "B", "E"]
    assert sorted(call.json_schema["properties"]["citations"]["items"]["enum"]) == sorted(res["shown"])
    assert call.sampling.temperature == 0.0
    assert f"[{sink}] 00:00:20-00:00:30 {TEXTS[2]}" in call.prompt
    assert "E. not in memory" in call.prompt and "A. at the table" in call.prompt
    stored = store.get_answer(res["answer_id"])
    assert stored["question"] == "Where did I wash the red cup?"
    assert stored["options"] == ["at the table", "at the sink"]
    assert stored["choice"] == "B" and [c["id"] for c in stored["citations"]] == [sink]
    assert stored["shown"] == res["shown"] and stored["model"] == backend.model_name


def test_plain_options_and_abstention_letter(store):
    backend = ScriptedBackend([json.dumps({"answer": "E", "citations": [mem_id(store, TEXTS[0])]})])
    res = answer(store, backend, "What colour was the cup?", ["red", "green", "blue", "white"],
                 asked_at=100.0, cfg=CFG)
    assert res["choice"] == "E" and res["abstained"] is True and res["text"] == "not in memory"
    assert res["citations"] == []
    assert backend.calls[0].json_schema["properties"]["answer"]["enum"] == ["A", "B", "C", "D", "E"]


def test_open_question(store):
    shelf = mem_id(store, TEXTS[3])
    backend = ScriptedBackend([json.dumps({"answer": "On the shelf.", "citations": [shelf]}),
                               json.dumps({"answer": "Not in memory.", "citations": []})])
    res = answer(store, backend, "where is the red cup now", [], asked_at=100.0, cfg=CFG)
    assert res["choice"] is None and res["text"] == "On the shelf." and not res["abstained"]
    assert [c["id"] for c in res["citations"]] == [shelf]
    assert backend.calls[0].json_schema["properties"]["answer"] == {"type": "string"}
    res2 = answer(store, backend, "who gave me the blue book", None, asked_at=100.0, cfg=CFG)
    assert res2["abstained"] is True and res2["text"] == "not in memory"


def test_no_memories_abstains_without_the_model(store):
    backend = ScriptedBackend([])  # any call would fail: no reply scripted
    res = answer(store, backend, "Where is the red cup?", ["A. table", "B. sink"], asked_at=5.0, cfg=CFG,
                 until=5.0)
    assert res["abstained"] is True and res["choice"] == "E" and backend.calls == []
    assert res["reason"] == "no memories match the question"
    assert store.get_answer(res["answer_id"])["abstained"] is True
    res = answer(store, backend, "zebra giraffe", [], asked_at=50.0, cfg=CFG)  # nothing matches
    assert res["abstained"] is True and res["choice"] is None and backend.calls == []


def test_until_hides_the_future_from_the_prompt(store):
    backend = ScriptedBackend([json.dumps({"answer": "A", "citations": []})])
    answer(store, backend, "where is the red cup", ["A. sink", "B. shelf"], asked_at=30.0, cfg=CFG, until=30.0)
    prompt = backend.calls[0].prompt
    assert TEXTS[2] in prompt and TEXTS[3] not in prompt  # the shelf memory ends at 40 s, after the question


@pytest.mark.parametrize("reply, reason", [
    ("this is not json", "not JSON"),
    ("", "not JSON"),
    ('{"answer": "B"', "not JSON"),  # cut off by max_tokens
    ("[1, 2]", "no 'answer'"),
    ('{"answer": 2, "citations": []}', "not text"),
    ('{"answer": "Z", "citations": []}', "not one of the options"),
    ('{"answer": "C", "citations": []}', "not one of the options"),  # only A and B exist
])
def test_malformed_output_is_a_recorded_abstention(store, reply, reason):
    backend = ScriptedBackend([reply])
    res = answer(store, backend, "Where did I wash the red cup?", ["table", "sink"], asked_at=100.0, cfg=CFG)
    assert res["abstained"] is True and res["choice"] == "E" and res["citations"] == []
    assert reason in res["reason"]
    stored = store.get_answer(res["answer_id"])
    assert stored["abstained"] is True and reason in stored["reason"]


def test_lenient_reading_of_answers():
    opts = ["at the table", "at the sink"]
    assert parse_reply('{"answer": "b) at the sink", "citations": ["3", true, 4]}', opts, [3])["choice"] == "B"
    assert parse_reply('{"answer": "b) at the sink", "citations": ["3", true, 4]}', opts, [3])["cited"] == [3]
    assert parse_reply('{"answer": "At the sink", "citations": 5}', opts, [])["choice"] == "B"
    assert parse_reply('{"answer": "not in memory", "citations": []}', opts, [])["choice"] == "E"
    assert parse_reply('{"answer": "   ", "citations": []}', [], [])["abstained"] is True


@pytest.mark.parametrize("question, options, match", [
    ("", [], "empty"),
    ("   \n\t", [], "empty"),
    ("where?", ["a", "b", "c", "d", "e"], "5 given, at most 4"),
    ("where?", ["B. sink", "A. table"], "labelled 'B', expected 'A'"),
    ("where?", ["A. table", "E. nowhere"], "labelled 'E', expected 'B'"),
    ("where?", ["A. ", "B. sink"], "option A: empty"),
    ("where?", "A. table", "one string"),
    ("x" * 1001, [], "at most 1000"),
])
def test_bad_questions(store, question, options, match):
    with pytest.raises(QuestionError, match=match):
        answer(store, ScriptedBackend([]), question, options, asked_at=1.0, cfg=CFG)
    assert store.counts()["questions"] == 0  # nothing stored for a rejected question


def test_parse_options_forms():
    assert parse_options(["A. table", "B) sink", "(C) shelf", "D: door"]) == ["table", "sink", "shelf", "door"]
    assert parse_options(["A red cup", "a blue cup"]) == ["A red cup", "a blue cup"]  # no label punctuation
    assert parse_options(None) == [] and parse_options([]) == []


def test_hostile_question_text(store):
    backend = ScriptedBackend([json.dumps({"answer": "A", "citations": []})] * 3)
    for q in ['where is "the red cup" AND NOT (table*', "cup\udcff\udcfe NEAR(sink", "text: cup OR *"]:
        res = answer(store, backend, q, ["table", "sink"], asked_at=100.0, cfg=CFG)
        assert res["choice"] == "A"
    assert store.counts()["answers"] == 3


# --- qa.choice = "score": options ranked by the model's likelihood of each as the open answer ----------------


def word_logprobs(favoured: str):
    """A scripted scorer: the reply's words, each -0.1 if it is in `favoured`, else -3 (so the option made of
    favoured words wins, whatever its length)."""
    def f(messages, text):
        assert text.startswith(ANSWER_PREFIX) and text.endswith('"')
        pieces = [ANSWER_PREFIX[:-2], ANSWER_PREFIX[-2:]] + [w + " " for w in text[len(ANSWER_PREFIX):-1].split()]
        pieces[-1] = pieces[-1].rstrip() + '"'
        return [(p, 0.0 if p == ' "' else -0.1 if p.strip(' "') in favoured.split() else -3.0) for p in pieces]
    return f


def test_score_mode_picks_the_likeliest_option_and_the_model_cites_it(store):
    sink = mem_id(store, TEXTS[2])
    backend = ScriptedBackend([json.dumps({"answer": "at the sink", "citations": [sink, 9999]})],
                              logprobs=word_logprobs("at the sink"))
    cfg = QAConfig(top_k=4, use_embeddings=False, choice="score")
    res = answer(store, backend, "Where did I wash the red cup?", ["at the table", "at the sink"],
                 asked_at=100.0, cfg=cfg)
    assert res["choice"] == "B" and res["text"] == "at the sink" and not res["abstained"]
    assert [c["id"] for c in res["citations"]] == [sink]
    # one generation: the citations, with the chosen answer fixed by the schema, over the open prompt
    (call,) = backend.calls
    assert call.json_schema["properties"]["answer"]["enum"] == ["at the sink"]
    assert "Options:" not in call.prompt and "Question: Where did I wash the red cup?" in call.prompt
    assert store.get_answer(res["answer_id"])["choice"] == "B"


def test_score_mode_abstains_when_not_in_memory_is_likeliest(store):
    backend = ScriptedBackend([], logprobs=word_logprobs("not in memory"))  # no generation may happen
    cfg = QAConfig(top_k=4, use_embeddings=False, choice="score")
    res = answer(store, backend, "What colour was the cup?", ["red", "green"], asked_at=100.0, cfg=cfg)
    assert res["choice"] == "E" and res["abstained"] and res["citations"] == []
    # P("not in memory") = exp(-0.3) = 0.74: below a 0.9 threshold the likeliest option is chosen instead
    backend.queue(json.dumps({"answer": "red", "citations": []}))
    strict = QAConfig(top_k=4, use_embeddings=False, choice="score", abstain_probability=0.9)
    assert answer(store, backend, "What colour was the cup?", ["red", "green"], asked_at=100.0,
                  cfg=strict)["choice"] in ("A", "B")


def test_answer_likelihood_is_the_mean_over_the_answer_tokens_and_escapes_quotes():
    seen = []

    def f(messages, text):
        seen.append(text)
        return [('{"answer', -9.0), ('":', -9.0), (' "', -2.0), ("on", -1.0), (" the", -2.0), (' shelf"', -3.0)]

    # from the opening quote's token on: the key's tokens are not the answer's
    assert answer_likelihood(ScriptedBackend(logprobs=f), [], "on the shelf") == pytest.approx(-2.0)
    answer_likelihood(ScriptedBackend(logprobs=f), [], 'the note that said "HI"')
    assert seen[-1] == ANSWER_PREFIX + 'the note that said \\"HI\\""'


def test_the_opening_quote_decides_between_answers_the_tokenizer_starts_differently(store):
    """The shipped tokenizer writes ' "' before "not in memory" and ' "<' before "<face_1>": a model sure of the
    face gives ' "' a low probability, and that token must count, or P("not in memory") is the probability of
    its other tokens alone (~0.95: every person question was abstained on)."""
    def f(messages, text):
        body = text[len(ANSWER_PREFIX) - 1:]  # from the opening quote
        if body.startswith('"<'):
            return [('{"answer":', 0.0), (' "<', -0.02), ("face", 0.0), ("_", 0.0), (body[7], -0.05 if body[7] == "1"
                    else -4.0), ('>"', 0.0)]
        return [('{"answer":', 0.0), (' "', -4.0)] + [(w, -0.01) for w in body[1:].split()]

    backend = ScriptedBackend([json.dumps({"answer": "<face_1>", "citations": []})], logprobs=f)
    cfg = QAConfig(top_k=4, use_embeddings=False, choice="score")
    res = answer(store, backend, "Who did I meet in the kitchen?", ["<face_2>", "<face_1>"], asked_at=100.0, cfg=cfg)
    assert res["choice"] == "B" and not res["abstained"]


def test_score_mode_without_a_scorer_generates_the_letter(store):
    class Remote:  # a chat endpoint: generate only
        model_name = "remote"

        def __init__(self):
            self.inner = ScriptedBackend([json.dumps({"answer": "A", "citations": []})])

        def generate(self, *a, **k):
            return self.inner.generate(*a, **k)

    r = Remote()
    cfg = QAConfig(top_k=4, use_embeddings=False, choice="score")
    res = answer(store, r, "Where did I wash the red cup?", ["at the table", "at the sink"], asked_at=100.0, cfg=cfg)
    assert res["choice"] == "A" and r.inner.calls[0].json_schema["properties"]["answer"]["enum"] == ["A", "B", "E"]
