"""Memory format rules: JSON shape, sentences, <face_N> tags, token cap."""

import pytest

from edge_agent.memory.validate import validate_memory


def words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("raw, ok, why", [
    ('{"description": "I put the red cup on the shelf."}', True, None),
    ('{"description": "I met <face_2> at the door. We talked"}', True, None),
    ('not json at all', False, "not JSON"),
    ('{"description": "x", "extra": 1}', False, "expected exactly"),
    ('["description"]', False, "expected exactly"),
    ('{"description": 3}', False, "not a string"),
    ('{"description": "   "}', False, "empty"),
    ('{"description": "One. Two. Three."}', False, "3 sentences"),
    ('{"description": "I met <Bob> today."}', False, "<face_N>"),
    ('{"description": "I sat in the kitchen. I sat in the kitchen."}', False, "repeats its sentence"),
    ('{"description": "I sat in the kitchen.  i sat in the Kitchen"}', False, "repeats its sentence"),
    ('{"description": "I sat in the kitchen. I sat in the office."}', True, None),
    ('{"description": "I met face_3 in the kitchen."}', False, "'face_3'"),
    ('{"description": "I met <face 3> in the kitchen."}', False, "<face_N>"),
    ('{"description": "not in memory"}', False, "says nothing of the segment"),  # the answerer's phrase
    ('{"description": "(none)"}', False, "says nothing of the segment"),  # the prompt's placeholder
    ('{"description": "Nothing."}', False, "says nothing of the segment"),
    ('{"description": "I found nothing in the drawer."}', True, None),
])
def test_validate_memory_rules(raw, ok, why):
    v = validate_memory(raw, words, max_tokens=150)
    assert v.ok is ok
    if why:
        assert why in v.failure


def test_a_repeated_sentence_is_invalid_and_offered_once():
    v = validate_memory('{"description": "I sat in the kitchen.  i sat in the Kitchen"}', words, max_tokens=150)
    assert not v.ok and v.said_once.ok and v.said_once.description == "I sat in the kitchen."
    assert validate_memory('{"description": "I met <Bob>. I met <Bob>."}', words, max_tokens=150).said_once is None
    assert validate_memory('{"description": "I sat. I sat."}', words, max_tokens=1).said_once is None  # over the cap


def test_token_cap_counts_what_the_counter_counts():
    raw = '{"description": "' + "word " * 20 + 'end."}'
    assert validate_memory(raw, words, max_tokens=21).ok
    v = validate_memory(raw, words, max_tokens=20)
    assert not v.ok and "21 tokens (cap 20)" in v.failure


def test_token_cap_counts_with_the_models_tokenizer(tiny_backend):
    """The writer passes the model's own tokenizer: the cap is in model tokens, not words."""
    from edge_agent.config import WriterConfig
    from edge_agent.memory.writer import MemoryWriter
    from edge_agent.types import Message
    from edge_agent.vlm.fake import ScriptedBackend

    text = "I put the red cup on the shelf, beside 3 blue bowls and a photograph."
    n_model, n_words = tiny_backend.count_tokens(text), words(text)
    assert n_model != n_words  # else this test could not tell the two counters apart
    raw = '{"description": "' + text + '"}'
    assert validate_memory(raw, tiny_backend.count_tokens, max_tokens=n_model).ok
    v = validate_memory(raw, tiny_backend.count_tokens, max_tokens=n_model - 1)
    assert not v.ok and f"{n_model} tokens (cap {n_model - 1})" in v.failure

    class ModelTokens(ScriptedBackend):  # scripted replies, the tiny model's tokenizer
        def count_tokens(self, t):
            return tiny_backend.count_tokens(t)

    writer = MemoryWriter(ModelTokens([raw]), WriterConfig(max_memory_tokens=n_model - 1, max_retries=0))
    check = writer.greedy_check([Message("user", ["Write the memory."])])
    assert not check.ok and f"{n_model} tokens (cap {n_model - 1})" in check.failure
