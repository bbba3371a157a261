"""Store schema: migrating an empty database gives exactly the snapshot below; opening is safe and strict.

The snapshot is the contract that shipped migrations never change: a schema change is a new migration
function AND a new snapshot line, both reviewed together.
"""

import os
import sqlite3
import stat
import subprocess
import sys
import textwrap

import pytest

from edge_agent.errors import StoreError
from edge_agent.store import Store
from edge_agent.store import migrations

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (type, name, sql with whitespace collapsed) for every schema object except SQLite's own and FTS5's shadow
# tables (whose SQL belongs to the SQLite version, not to us).
EXPECTED_SCHEMA = [
    ('index', 'adapters_one_active',
     "CREATE UNIQUE INDEX adapters_one_active ON adapters(status) WHERE status = 'active'"),
    ('index', 'answer_citations_memory',
     'CREATE INDEX answer_citations_memory ON answer_citations(memory_id)'),
    ('index', 'answers_question',
     'CREATE INDEX answers_question ON answers(question_id)'),
    ('index', 'candidates_segment',
     'CREATE INDEX candidates_segment ON candidates(segment_id)'),
    ('index', 'device_events_created',
     'CREATE INDEX device_events_created ON device_events(created_at)'),
    ('index', 'device_events_segment',
     'CREATE INDEX device_events_segment ON device_events(segment_id)'),
    ('index', 'feedback_answer',
     'CREATE INDEX feedback_answer ON feedback(answer_id)'),
    ('index', 'feedback_history_answer',
     'CREATE INDEX feedback_history_answer ON feedback_history(answer_id)'),
    ('index', 'kept_frames_expires',
     'CREATE INDEX kept_frames_expires ON kept_frames(expires_at)'),
    ('index', 'kept_frames_segment',
     'CREATE INDEX kept_frames_segment ON kept_frames(segment_id)'),
    ('index', 'memories_t_end',
     'CREATE INDEX memories_t_end ON memories(t_end)'),
    ('index', 'memories_t_start',
     'CREATE INDEX memories_t_start ON memories(t_start)'),
    ('index', 'pair_feedback_feedback',
     'CREATE INDEX pair_feedback_feedback ON pair_feedback(feedback_id)'),
    ('index', 'pairs_chosen',
     'CREATE INDEX pairs_chosen ON pairs(chosen_candidate_id)'),
    ('index', 'pairs_rejected',
     'CREATE INDEX pairs_rejected ON pairs(rejected_candidate_id)'),
    ('table', '_migrations',
     'CREATE TABLE _migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at REAL NOT NULL)'),
    ('table', 'adapters',
     "CREATE TABLE adapters ( id TEXT PRIMARY KEY, status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'inactive', 'rejected', 'rolled_back', 'failed')), reason TEXT, path TEXT, gguf_path TEXT, layer INTEGER, scale REAL, hidden_size INTEGER, base_model_hash TEXT, pair_ids TEXT NOT NULL DEFAULT '[]', feedback_ids TEXT NOT NULL DEFAULT '[]', metrics TEXT NOT NULL DEFAULT '{}', extra TEXT NOT NULL DEFAULT '{}', previous_id TEXT, created_at REAL NOT NULL, activated_at REAL )"),
    ('table', 'answer_citations',
     'CREATE TABLE answer_citations ( answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE, memory_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE, rank INTEGER NOT NULL, cited INTEGER NOT NULL CHECK (cited IN (0, 1)), PRIMARY KEY (answer_id, memory_id) )'),
    ('table', 'answers',
     'CREATE TABLE answers ( id INTEGER PRIMARY KEY, question_id INTEGER NOT NULL REFERENCES questions(id) ON DELETE CASCADE, choice TEXT, text TEXT NOT NULL, abstained INTEGER NOT NULL CHECK (abstained IN (0, 1)), reason TEXT, model TEXT NOT NULL, adapter_id TEXT, created_at REAL NOT NULL )'),
    ('table', 'candidates',
     "CREATE TABLE candidates ( id INTEGER PRIMARY KEY, segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE, text TEXT NOT NULL, valid INTEGER NOT NULL CHECK (valid IN (0, 1)), failure TEXT, sampling TEXT NOT NULL DEFAULT '{}', source TEXT NOT NULL, created_at REAL NOT NULL )"),
    ('table', 'device_events',
     "CREATE TABLE device_events ( id INTEGER PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('degraded', 'recovered', 'dropped', 'budget')), stream_id INTEGER REFERENCES streams(id) ON DELETE CASCADE, segment_id INTEGER REFERENCES segments(id) ON DELETE SET NULL, segment_index INTEGER, level INTEGER NOT NULL DEFAULT 0, detail TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL )"),
    ('table', 'faces',
     'CREATE TABLE faces ( id INTEGER PRIMARY KEY, number INTEGER NOT NULL UNIQUE, tag TEXT NOT NULL UNIQUE, vector BLOB NOT NULL, n_frames INTEGER NOT NULL, first_seen REAL NOT NULL, last_seen REAL NOT NULL, created_at REAL NOT NULL )'),
    ('table', 'feedback',
     'CREATE TABLE feedback ( id INTEGER PRIMARY KEY, answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE, correct INTEGER NOT NULL CHECK (correct IN (0, 1)), corrected TEXT, created_at REAL NOT NULL )'),
    ('table', 'feedback_history',
     'CREATE TABLE feedback_history ( id INTEGER PRIMARY KEY, feedback_id INTEGER NOT NULL, answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE, correct INTEGER NOT NULL CHECK (correct IN (0, 1)), corrected TEXT, created_at REAL NOT NULL, replaced_at REAL NOT NULL, replaced_by INTEGER )'),
    ('table', 'kept_frames',
     'CREATE TABLE kept_frames ( id INTEGER PRIMARY KEY, segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE, path TEXT NOT NULL, expires_at REAL NOT NULL, created_at REAL NOT NULL )'),
    ('table', 'memories',
     'CREATE TABLE memories ( id INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE, segment_id INTEGER NOT NULL UNIQUE REFERENCES segments(id) ON DELETE CASCADE, text TEXT NOT NULL, t_start REAL NOT NULL, t_end REAL NOT NULL, writer_model TEXT, adapter_id TEXT, n_tokens INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL )'),
    ('table', 'memories_fts',
     "CREATE VIRTUAL TABLE memories_fts USING fts5( text, content='memories', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2' )"),
    ('table', 'memory_embeddings',
     'CREATE TABLE memory_embeddings ( memory_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE, model TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL, PRIMARY KEY (memory_id, model) )'),
    ('table', 'memory_vectors',
     'CREATE TABLE memory_vectors ( seq INTEGER PRIMARY KEY AUTOINCREMENT, memory_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE, model TEXT NOT NULL, t_end REAL NOT NULL, bits BLOB NOT NULL, list INTEGER NOT NULL DEFAULT 0, scale REAL NOT NULL DEFAULT 0, UNIQUE (memory_id, model) )'),
    ('table', 'pair_feedback',
     'CREATE TABLE pair_feedback ( pair_id INTEGER NOT NULL REFERENCES pairs(id) ON DELETE CASCADE, feedback_id INTEGER NOT NULL REFERENCES feedback(id) ON DELETE CASCADE, PRIMARY KEY (pair_id, feedback_id) )'),
    ('table', 'pairs',
     "CREATE TABLE pairs ( id INTEGER PRIMARY KEY, chosen_candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE, rejected_candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE, score REAL NOT NULL, split TEXT NOT NULL CHECK (split IN ('train', 'holdout')), created_at REAL NOT NULL, CHECK (chosen_candidate_id != rejected_candidate_id) )"),
    ('table', 'questions',
     "CREATE TABLE questions ( id INTEGER PRIMARY KEY, text TEXT NOT NULL, options TEXT NOT NULL DEFAULT '[]', asked_at REAL NOT NULL, created_at REAL NOT NULL )"),
    ('table', 'segments',
     "CREATE TABLE segments ( id INTEGER PRIMARY KEY, stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE, idx INTEGER NOT NULL, t_start REAL NOT NULL, t_end REAL NOT NULL, status TEXT NOT NULL CHECK (status IN ('written', 'failed', 'forgotten')), failure TEXT, n_keyframes INTEGER NOT NULL DEFAULT 0, frames_seen INTEGER NOT NULL DEFAULT 0, frames_merged INTEGER NOT NULL DEFAULT 0, frames_dropped INTEGER NOT NULL DEFAULT 0, writer_model TEXT, adapter_id TEXT, n_tokens INTEGER NOT NULL DEFAULT 0, latency_s REAL NOT NULL DEFAULT 0, created_at REAL NOT NULL, people TEXT, UNIQUE (stream_id, idx) )"),
    ('table', 'streams',
     'CREATE TABLE streams ( id INTEGER PRIMARY KEY, source TEXT NOT NULL, fingerprint TEXT NOT NULL UNIQUE, origin REAL NOT NULL, kind TEXT NOT NULL, created_at REAL NOT NULL )'),
    ('table', 'vector_index_state',
     'CREATE TABLE vector_index_state ( model TEXT PRIMARY KEY, generation INTEGER NOT NULL DEFAULT 0, watermark INTEGER NOT NULL DEFAULT 0, center BLOB , centroids BLOB, trained_on INTEGER NOT NULL DEFAULT 0)'),
    ('trigger', 'feedback_bd_pairs',
     'CREATE TRIGGER feedback_bd_pairs BEFORE DELETE ON feedback BEGIN DELETE FROM pairs WHERE id IN (SELECT pair_id FROM pair_feedback WHERE feedback_id = old.id); END'),
    ('trigger', 'memories_fts_ad',
     "CREATE TRIGGER memories_fts_ad AFTER DELETE ON memories BEGIN INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text); END"),
    ('trigger', 'memories_fts_ai',
     'CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories BEGIN INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text); END'),
    ('trigger', 'memories_fts_au',
     "CREATE TRIGGER memories_fts_au AFTER UPDATE OF text ON memories BEGIN INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text); INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text); END"),
    ('trigger', 'memory_embeddings_ad',
     'CREATE TRIGGER memory_embeddings_ad AFTER DELETE ON memory_embeddings BEGIN DELETE FROM memory_vectors WHERE memory_id = old.memory_id AND model = old.model; END'),
    ('trigger', 'memory_vectors_ad',
     'CREATE TRIGGER memory_vectors_ad AFTER DELETE ON memory_vectors BEGIN INSERT INTO vector_index_state (model, generation, watermark) VALUES (old.model, 1, 0) ON CONFLICT (model) DO UPDATE SET generation = generation + 1, watermark = min(watermark, old.memory_id - 1); END'),
]

SCHEMA_QUERY = (
    "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
    "AND NOT (type = 'table' AND name LIKE 'memories\\_fts\\_%' ESCAPE '\\') ORDER BY type, name"
)


def schema(conn):
    return [(t, n, " ".join(sql.split())) for t, n, sql in conn.execute(SCHEMA_QUERY)]


def test_empty_database_migrates_to_snapshot(tmp_path):
    store = Store.open(tmp_path / "m.db")
    assert schema(store.conn) == EXPECTED_SCHEMA
    assert migrations.applied(store.conn) == [m.__name__ for m in migrations.MIGRATIONS]
    assert migrations.applied(store.conn)[0] == "m001_initial"
    store.close()


def test_migrations_run_once(tmp_path):
    path = tmp_path / "m.db"
    Store.open(path).close()
    store = Store.open(path)  # second open: nothing pending, nothing re-run
    assert store.conn.execute("SELECT COUNT(*) FROM _migrations").fetchone()[0] == len(migrations.MIGRATIONS)
    assert migrations.migrate(store.conn) == []
    assert schema(store.conn) == EXPECTED_SCHEMA
    store.close()


def test_migration_names_are_unique_and_ordered():
    names = [m.__name__ for m in migrations.MIGRATIONS]
    assert len(names) == len(set(names))
    assert names == sorted(names)  # m001_, m002_, ...: the list order is the name order


def test_pragmas_wal_foreign_keys_busy_timeout(tmp_path):
    store = Store.open(tmp_path / "m.db", busy_timeout=7)
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert store.conn.execute("PRAGMA busy_timeout").fetchone()[0] == 7000
    store.close()


def test_files_owner_only(tmp_path):
    folder = tmp_path / "home" / "data"
    store = Store.open(folder / "memory.db")
    sid = store.get_or_create_stream("x", "fp", 0.0, "file")  # a write, so -wal and -shm exist
    assert sid == 1
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "home").stat().st_mode) == 0o700
    for name in ("memory.db", "memory.db-wal", "memory.db-shm"):
        assert (folder / name).exists(), name
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    store.close()


def test_existing_loose_file_is_tightened(tmp_path):
    path = tmp_path / "m.db"
    Store.open(path).close()
    os.chmod(path, 0o644)
    Store.open(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_open_errors_are_one_line_store_errors(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not an SQLite database"):
        Store.open(junk)

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        Store.open(afile / "m.db")
    with pytest.raises(StoreError, match="cannot create"):
        Store.open(afile / "sub" / "m.db")

    (tmp_path / "adir.db").mkdir()
    with pytest.raises(StoreError, match="not a file"):
        Store.open(tmp_path / "adir.db")

    other = tmp_path / "other.db"
    c = sqlite3.connect(other)
    c.execute("CREATE TABLE photos (id INTEGER)")
    c.commit()
    c.close()
    with pytest.raises(StoreError, match="something else") as e:
        Store.open(other)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    try:
        with pytest.raises(StoreError):
            Store.open(ro / "m.db")
    finally:
        os.chmod(ro, 0o700)


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "m.db"
    store = Store.open(path)
    store.conn.execute("INSERT INTO _migrations (name, applied_at) VALUES ('m999_from_the_future', 0)")
    store.close()
    with pytest.raises(StoreError, match="newer than this edge-agent.*m999_from_the_future"):
        Store.open(path)


def test_failed_migration_rolls_back(tmp_path):
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)

    def m002_broken(c):
        c.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        migrations.migrate(conn, [migrations.m001_initial, m002_broken])
    assert migrations.applied(conn) == ["m001_initial"]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None


def test_concurrent_first_open_applies_each_migration_once(tmp_path):
    """Runner and `ask` starting together on a fresh home: both open fine, migrations recorded once."""
    path = tmp_path / "m.db"
    code = textwrap.dedent(f"""
        from edge_agent.store import Store
        s = Store.open({str(path)!r})
        s.get_or_create_stream("src", "same-fingerprint", 0.0, "file")
        s.close()
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    store = Store.open(path)
    assert [r[0] for r in store.conn.execute("SELECT name FROM _migrations")] == [
        m.__name__ for m in migrations.MIGRATIONS]
    assert store.conn.execute("SELECT COUNT(*) FROM streams").fetchone()[0] == 1
    store.close()
