"""FTS5 search is bounded (store/memories.py, FTS_MATCHES): what is scored, never how long it takes."""

import pytest

from edge_agent.store import Store
from edge_agent.store import memories
from edge_agent.types import Segment


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "f.db")
    sid = s.get_or_create_stream("s", "fp", 0.0, "file")
    texts = ["I put my passport in the red cup"] + [f"I drink from the red cup number {i}" for i in range(10)]
    for i, t in enumerate(texts):
        s.commit_segment(sid, Segment(i, 10.0 * i, 10.0 * i + 10), memory=t, failure=None, writer_model="m",
                         adapter_id=None, n_tokens=2, latency_s=0.0)
    yield s
    s.close()


def unbounded(store, expr, k):
    rows = store.conn.execute(
        "SELECT m.id, bm25(memories_fts) AS r FROM memories_fts JOIN memories m ON m.id = memories_fts.rowid "
        "WHERE memories_fts MATCH ? ORDER BY r, m.id LIMIT ?", (expr, k)).fetchall()
    return [(i, -r) for i, r in rows]


def test_below_the_bound_it_is_plain_bm25(store):
    assert store.fts_search("where is my passport in the red cup?", 5) == unbounded(
        store, '"passport" OR "red" OR "cup"', 5)


def test_frequent_words_give_way_to_rare_ones(store, monkeypatch):
    monkeypatch.setattr(memories, "FTS_MATCHES", 3)
    ids = [r["id"] for r in store.memories()]
    # "red" and "cup" are in 11 memories (> 3): dropped; "passport" is rare: all its matches are scored.
    assert [i for i, _ in store.fts_search("passport red cup", 5)] == [ids[0]]


def test_only_frequent_words_score_the_newest_matches_in_range(store, monkeypatch):
    monkeypatch.setattr(memories, "FTS_MATCHES", 3)
    ids = [r["id"] for r in store.memories()]
    assert {i for i, _ in store.fts_search("red cup", 10)} == set(ids[-3:])
    # In range = ending by 60 s: the newest three of those.
    assert {i for i, _ in store.fts_search("red cup", 10, until=60.0)} == set(ids[3:6])


def test_a_word_in_no_memory_is_not_a_rare_word(store, monkeypatch):
    monkeypatch.setattr(memories, "FTS_MATCHES", 3)
    ids = [r["id"] for r in store.memories()]
    assert [i for i, _ in store.fts_search("passport red cup zebra", 5)] == [ids[0]]
    assert {i for i, _ in store.fts_search("zebra red cup", 10)} == set(ids[-3:])
