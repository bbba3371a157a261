"""The vector index (sign-bit codes in RAM + exact re-scoring, store/memories.py) against the exact scan.

What the speed-up relies on, never its timing: the index returns the exact scan's top results within the
recall target, it sees every write and delete of other connections, transactions and `forget` cover it,
and the lazy embedder's watermark never skips a memory.
"""

import sqlite3

import numpy as np
import pytest

from edge_agent.qa.retrieve import ensure_embeddings, exact_ranking, recall_at
from edge_agent.store import Store
from edge_agent.store import migrations
from edge_agent.store.memories import sign_bits
from edge_agent.types import Segment

DIM = 384


def clustered(n: int, seed: int = 0, centers: int = 64, noise: float = 0.35) -> np.ndarray:
    """Unit vectors around a few shared directions plus a common offset, like sentence embeddings of
    templated text (MiniLM vectors all share a mean direction, which sign bits must cope with)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, DIM)).astype(np.float32)
    offset = 0.8 * rng.standard_normal(DIM).astype(np.float32)
    v = c[rng.integers(centers, size=n)] + offset + noise * rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store: Store, n: int, start: float = 0.0) -> list[int]:
    sid = store.get_or_create_stream(f"s{start}", f"fp{start}", 0.0, "synthetic")
    for i in range(n):
        store.commit_segment(sid, Segment(i, start + 10.0 * i, start + 10.0 * i + 10), memory=f"memory {i}",
                             failure=None, writer_model="m", adapter_id=None, n_tokens=2, latency_s=0.0)
    return [r["id"] for r in store.memories() if r["t_start"] >= start]


@pytest.fixture
def store(tmp_path):
    s = Store.open(tmp_path / "v.db")
    yield s
    s.close()


def test_sign_bits_packing():
    v = np.array([[1.0, -1.0, 0.0, 2.0] + [0.0] * 60 + [3.0]], np.float32)  # 65 dims -> 2 words
    bits = sign_bits(v)
    assert bits.shape == (1, 16) and bits[0, 0] == 0b10010000 and bits[0, 8] == 0b10000000


def test_index_recall_against_exact_scan(store):
    """A fixed set where the index is really approximate (2,000 memories, 100 re-scored per query)."""
    both = clustered(2040, seed=1)  # queries from the same clusters as the memories, none stored
    vecs, queries = both[:2000], both[2000:]
    ids = fill(store, len(vecs))
    store.put_embeddings("m", ids, vecs)
    recalls, exact_hits = [], 0
    for q in queries:
        found = store.vector_search("m", q, 8, rescore=100)
        exact = exact_ranking(store, q, "m", 8)
        recalls.append(recall_at(found, exact, 8))
        exact_hits += [i for i, _ in found] == [i for i, _ in exact]
        assert [s for _, s in found] == sorted((s for _, s in found), reverse=True)
    assert np.mean(recalls) >= 0.98
    assert exact_hits >= 30  # most queries give the very same list
    # With at least as many candidates as memories the index is the exact scan, ties ordered by id.
    for q in queries[:5]:
        assert store.vector_search("m", q, 8, rescore=5000) == exact_ranking(store, q, "m", 8)


def test_time_filters_match_exact_scan(store):
    vecs = clustered(300, seed=3)
    ids = fill(store, len(vecs))
    store.put_embeddings("m", ids, vecs)
    q = clustered(1, seed=4)[0]
    for since, until in ((None, 500.0), (1000.0, None), (200.0, 900.0), (5000.0, None)):
        got = store.vector_search("m", q, 10, since=since, until=until, rescore=1000)
        assert got == exact_ranking(store, q, "m", 10, since=since, until=until)
        mem = {r["id"]: r for r in store.memories()}
        assert all((since is None or mem[i]["t_end"] > since) and (until is None or mem[i]["t_end"] <= until)
                   for i, _ in got)


def test_other_connections_see_writes_replacements_and_forget(tmp_path):
    a, b = Store.open(tmp_path / "v.db"), Store.open(tmp_path / "v.db")
    try:
        vecs = clustered(50, seed=5)
        ids = fill(a, 50)
        a.put_embeddings("m", ids[:30], vecs[:30])
        q = vecs[40]
        assert b.vector_search("m", q, 50)  # b loads the 30 codes
        assert {i for i, _ in b.vector_search("m", q, 50)} == set(ids[:30])
        a.put_embeddings("m", ids[30:], vecs[30:])  # appended: b picks up only the new rows
        assert b.vector_search("m", q, 1)[0][0] == ids[40]
        assert b.vector_index_stats("m")["vectors"] == 50
        a.put_embeddings("m", [ids[40]], -vecs[40:41])  # replaced: b reloads
        assert b.vector_search("m", q, 1)[0][0] != ids[40]
        assert b.vector_search("m", -q, 1)[0][0] == ids[40]
        a.forget(until=200.0)  # memories ending <= 200 s: ids[:20]
        left = {i for i, _ in b.vector_search("m", q, 50)}
        assert left == set(ids[20:]) and b.vector_index_stats("m")["vectors"] == 30
        n_rows = a.conn.execute("SELECT COUNT(*) FROM memory_vectors").fetchone()[0]
        assert n_rows == 30
    finally:
        a.close()
        b.close()


def test_rolled_back_transaction_leaves_no_vectors(store):
    ids = fill(store, 5)
    with pytest.raises(RuntimeError):
        with store._tx():
            store.put_embeddings("m", ids, clustered(5, seed=6))
            raise RuntimeError("crash mid-transaction")
    assert store.conn.execute("SELECT COUNT(*) FROM memory_vectors").fetchone()[0] == 0
    assert store.vector_search("m", clustered(1, seed=6)[0], 5) == []
    assert len(store.memories_without_embedding("m")) == 5


class Recorder:
    name = "rec"

    def __init__(self):
        self.seen = []

    def encode(self, texts):
        self.seen += list(texts)
        return clustered(len(texts), seed=len(self.seen))


def test_watermark_never_skips_a_memory(store):
    emb = Recorder()
    ids = fill(store, 6)
    assert ensure_embeddings(store, emb) == 6
    assert store.embedding_watermark("rec") == ids[-1]
    assert ensure_embeddings(store, emb) == 0
    # Forget the newest memory: SQLite may hand its id to the next one, which must still be embedded.
    store.forget(since=50.0)
    assert store.embedding_watermark("rec") < ids[-1]
    sid = store.get_or_create_stream("s0.0", "fp0.0", 0.0, "synthetic")
    store.commit_segment(sid, Segment(99, 990.0, 1000.0), memory="new memory", failure=None, writer_model="m",
                         adapter_id=None, n_tokens=2, latency_s=0.0)
    emb.seen.clear()
    assert ensure_embeddings(store, emb) == 1 and emb.seen == ["new memory"]
    # A range-limited call leaves a gap; the watermark stays below it and a later call fills it.
    fill(store, 3, start=5000.0)
    assert ensure_embeddings(store, emb, until=5025.0) == 2
    assert ensure_embeddings(store, emb) == 1
    assert store.memories_without_embedding("rec") == []


def test_migration_codes_existing_embeddings(tmp_path):
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrations.migrate(conn, migrations.MIGRATIONS[:1])  # a database from before the index
    conn.close()
    store = Store.open(path)  # needs every migration to open; simulate old rows by removing the codes
    try:
        ids = fill(store, 20)
        vecs = clustered(20, seed=7)
        store.put_embeddings("m", ids, vecs)
        codes = dict(store.conn.execute("SELECT memory_id, bits FROM memory_vectors"))
        with store._tx() as c:
            c.execute("DELETE FROM memory_vectors")
            c.execute("DELETE FROM _migrations WHERE name = 'm002_vector_index_issue14'")
            c.execute("DROP TRIGGER memory_vectors_ad")
            c.execute("DROP TRIGGER memory_embeddings_ad")
            c.execute("DROP TABLE memory_vectors")
            c.execute("DROP TABLE vector_index_state")
    finally:
        store.close()
    store = Store.open(path)  # m002 runs again on the old-style file
    try:
        assert dict(store.conn.execute("SELECT memory_id, bits FROM memory_vectors")) == codes
        assert store.vector_search("m", vecs[3], 1)[0][0] == ids[3]
    finally:
        store.close()
