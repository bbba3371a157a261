"""Memory format rules: JSON shape, sentences, <face_N> tags, token cap."""

import pytest

from edge_agent.memory.validate import count_sentences, validate_memory


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
    ('{"description": "I met face_3 in the kitchen."}', False, "'face_3'"),
    ('{"description": "I met <face 3> in the kitchen."}', False, "<face_N>"),
])
def test_validate_memory_rules(raw, ok, why):
    v = validate_memory(raw, words, max_tokens=150)
    assert v.ok is ok
    if why:
        assert why in v.failure


def test_token_cap_counts_with_the_models_tokenizer():
    raw = '{"description": "' + "word " * 20 + 'end."}'
    assert validate_memory(raw, words, max_tokens=21).ok
    v = validate_memory(raw, words, max_tokens=20)
    assert not v.ok and "21 tokens (cap 20)" in v.failure


def test_whitespace_is_normalised_and_tokens_reported():
    v = validate_memory('{"description": "  I  left the keys\\n on the desk. "}', words, 150)
    assert v.description == "I left the keys on the desk."
    assert v.n_tokens == 7


def test_count_sentences():
    assert count_sentences("One.") == 1
    assert count_sentences("One. Two") == 2
    assert count_sentences("Version 1.5 of it.") == 1
    assert count_sentences("Wow! Really? Yes.") == 3
