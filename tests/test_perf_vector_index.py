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
from edge_agent.store.vectors import PARTITION_FIRST, encode, lists_for, sign_bits
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


def _old_database(path, vecs: np.ndarray) -> None:
    """A database from before the vector index (m001 only) holding memories with float32 embeddings."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrations.migrate(conn, migrations.MIGRATIONS[:1])
    conn.execute("INSERT INTO streams VALUES (1, 's', 'fp', 0, 'file', 0)")
    for i, v in enumerate(vecs, start=1):
        conn.execute("INSERT INTO segments (id, stream_id, idx, t_start, t_end, status, created_at) "
                     "VALUES (?, 1, ?, ?, ?, 'written', 0)", (i, i, 10.0 * i, 10.0 * i + 10))
        conn.execute("INSERT INTO memories (id, stream_id, segment_id, text, t_start, t_end, created_at) "
                     "VALUES (?, 1, ?, ?, ?, ?, 0)", (i, i, f"memory {i}", 10.0 * i, 10.0 * i + 10))
        conn.execute("INSERT INTO memory_embeddings VALUES (?, 'm', ?, ?)", (i, DIM, v.astype("<f4").tobytes()))
    conn.close()


@pytest.mark.parametrize("n", [20, 300])
def test_migrations_code_existing_embeddings(tmp_path, n):
    """m002 codes old embeddings, m006 turns the codes into one list's residual codes; the store partitions
    the model when it maintains the index, and search then still finds the exact scan's results."""
    vecs = clustered(n, seed=7)
    _old_database(tmp_path / "old.db", vecs)
    store = Store.open(tmp_path / "old.db")
    try:
        lists, bits, scale = encode(vecs, None)
        rows = store.conn.execute("SELECT memory_id, list, bits, scale FROM memory_vectors ORDER BY memory_id")
        for (mid, lst, b, sc), want_b, want_sc in zip(rows, bits, scale):
            assert lst == 0 and b == want_b.tobytes() and sc == pytest.approx(float(want_sc), rel=1e-6)
        assert store.maintain_vector_index("m") == (n >= PARTITION_FIRST)
        assert store.vector_index_stats("m")["lists"] == (lists_for(n) if n >= PARTITION_FIRST else 1)
        for i in (3, n - 1):
            assert store.vector_search("m", vecs[i], 1, rescore=8, scan=16)[0][0] == i + 1
            assert store.vector_search("m", vecs[i], 5, rescore=n) == exact_ranking(store, vecs[i], "m", 5)
    finally:
        store.close()


def test_probing_a_few_lists_keeps_recall(store):
    """Most of the partition is never scanned (800 of 8,000 codes estimated, 80 re-scored), yet the index
    returns the exact scan's top 8 within the recall target on a fixed seeded set."""
    both = clustered(8040, seed=11, centers=200, noise=0.5)
    vecs, queries = both[:8000], both[8000:]
    ids = fill(store, len(vecs))
    store.put_embeddings("m", ids, vecs)
    assert store.vector_index_stats("m")["lists"] == lists_for(8000)
    recalls = [recall_at(store.vector_search("m", q, 8, rescore=80, scan=800), exact_ranking(store, q, "m", 8), 8)
               for q in queries]
    assert np.mean(recalls) >= 0.98
    # Time filters count only the memories in range when choosing lists; every result is in range.
    for q in queries[:10]:
        got = store.vector_search("m", q, 8, since=20_000.0, until=60_000.0, rescore=80, scan=800)
        exact = exact_ranking(store, q, "m", 8, since=20_000.0, until=60_000.0)
        assert recall_at(got, exact, 8) >= 0.875
        mem = {r["id"]: r for r in store.get_memories([i for i, _ in got])}
        assert all(20_000.0 < mem[i]["t_end"] <= 60_000.0 for i, _ in got)


def test_rows_written_after_the_list_order_are_searched(store):
    """Rows appended after the in-RAM order by list was built (the unordered tail) are probed too."""
    from edge_agent.bench import bulk_memories

    vecs = clustered(5100, seed=12)
    ids = bulk_memories(store, ["m"] * len(vecs))
    store.put_embeddings("m", ids[:5000], vecs[:5000])
    store.vector_search("m", vecs[0], 8, rescore=20, scan=300)  # builds the order by list
    store.put_embeddings("m", ids[5000:], vecs[5000:])  # 100 rows: below the re-ordering threshold
    index = store._vector_index("m")
    assert index.ordered_n == 5000 and index.n == 5100
    for i in (5000, 5050, 5099, 17):
        assert store.vector_search("m", vecs[i], 1, rescore=20, scan=300)[0][0] == ids[i]


def test_the_partition_grows_with_the_model_and_readers_follow(tmp_path):
    a, b = Store.open(tmp_path / "v.db"), Store.open(tmp_path / "v.db")
    try:
        vecs = clustered(1300, seed=13)
        ids = fill(a, 1300)
        a.put_embeddings("m", ids[:200], vecs[:200])
        assert b.vector_index_stats("m")["lists"] == 1  # below PARTITION_FIRST: one list around zero
        a.put_embeddings("m", ids[200:300], vecs[200:300])
        assert b.vector_index_stats("m")["lists"] == lists_for(300)
        a.put_embeddings("m", ids[300:], vecs[300:])  # 1,300 >= 4 x 300: partitioned again
        assert b.vector_index_stats("m")["lists"] == lists_for(1300)
        # Every stored code is the code of its vector under the current centroids.
        centroids = a._centroids(a.conn, "m")
        lists, bits, scale = encode(vecs, centroids)
        rows = a.conn.execute("SELECT memory_id, list, bits, scale FROM memory_vectors ORDER BY memory_id")
        for (mid, lst, code, sc), want_l, want_b, want_s in zip(rows, lists, bits, scale):
            assert (lst, code) == (want_l, want_b.tobytes()) and sc == pytest.approx(float(want_s), rel=1e-5)
        q = clustered(1, seed=14)[0]
        assert b.vector_search("m", q, 10, rescore=2000) == exact_ranking(a, q, "m", 10)
    finally:
        a.close()
        b.close()


@pytest.mark.slow
def test_recall_at_100k_with_the_default_settings(tmp_path):
    """The shipped defaults (scan_for, VECTOR_RESCORE) at 100,000 memories of mixed clustered vectors, the
    way the bench mixes MiniLM vectors, against the exact scan."""
    from edge_agent.bench import bulk_memories, mixed_vectors

    both = clustered(10_040, seed=15, centers=300, noise=0.5)
    vecs, _ = mixed_vectors(both[:10_000], 100_000)
    with Store.open(tmp_path / "big.db") as s:
        ids = bulk_memories(s, ["m"] * len(vecs))
        for i in range(0, len(vecs), 20_000):
            s.put_embeddings("m", ids[i:i + 20_000], vecs[i:i + 20_000])
        recalls = []
        for q in both[10_000:]:
            sims = vecs @ q
            top = np.argsort(-sims, kind="stable")[:8]
            recalls.append(recall_at(s.vector_search("m", q, 8), [(ids[i], float(sims[i])) for i in top], 8))
    assert np.mean(recalls) >= 0.98
