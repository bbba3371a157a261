"""Schema migrations of the memory store: named functions applied once, in order, recorded in `_migrations`.

Rules (as in sqlite-utils / llm): a migration that has shipped is never edited. A schema change is a new
function appended to MIGRATIONS. tests/test_store_schema.py migrates an empty database and compares the
result with a snapshot, so an accidental edit shows up as a failing test.

Time model (docs/architecture.md, "Times"): segments keep stream seconds; memories keep absolute seconds
(stream origin + stream seconds).
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Callable

from edge_agent.store.queries import stored_path

Migration = Callable[[sqlite3.Connection], None]


def m001_initial(conn: sqlite3.Connection) -> None:
    """Everything of the runtime (streams ... answers, feedback) and of Phase Two (candidates ... adapters)."""
    statements = [
        # One row per video source. Re-running the same file (same fingerprint) resumes the same stream.
        """CREATE TABLE streams (
            id INTEGER PRIMARY KEY,
            source TEXT NOT NULL,
            fingerprint TEXT NOT NULL UNIQUE,
            origin REAL NOT NULL,
            kind TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        # One row per committed segment, written or failed. UNIQUE(stream_id, idx) makes commits idempotent.
        # status 'forgotten' = its memory was deleted by `forget`; the row stays so a re-run does not rewrite it.
        """CREATE TABLE segments (
            id INTEGER PRIMARY KEY,
            stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            t_start REAL NOT NULL,
            t_end REAL NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('written', 'failed', 'forgotten')),
            failure TEXT,
            n_keyframes INTEGER NOT NULL DEFAULT 0,
            frames_seen INTEGER NOT NULL DEFAULT 0,
            frames_merged INTEGER NOT NULL DEFAULT 0,
            frames_dropped INTEGER NOT NULL DEFAULT 0,
            writer_model TEXT,
            adapter_id TEXT,
            n_tokens INTEGER NOT NULL DEFAULT 0,
            latency_s REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            UNIQUE (stream_id, idx)
        )""",
        # At most one memory per segment; times are absolute seconds.
        """CREATE TABLE memories (
            id INTEGER PRIMARY KEY,
            stream_id INTEGER NOT NULL REFERENCES streams(id) ON DELETE CASCADE,
            segment_id INTEGER NOT NULL UNIQUE REFERENCES segments(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            t_start REAL NOT NULL,
            t_end REAL NOT NULL,
            writer_model TEXT,
            adapter_id TEXT,
            n_tokens INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX memories_t_start ON memories(t_start)",
        "CREATE INDEX memories_t_end ON memories(t_end)",
        # External-content FTS5 index over memories.text, kept in step by the three triggers below.
        # porter: "keys" finds "key"; remove_diacritics: "cafe" finds "café".
        """CREATE VIRTUAL TABLE memories_fts USING fts5(
            text, content='memories', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
        )""",
        """CREATE TRIGGER memories_fts_ai AFTER INSERT ON memories BEGIN
            INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
        END""",
        """CREATE TRIGGER memories_fts_ad AFTER DELETE ON memories BEGIN
            INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
        END""",
        """CREATE TRIGGER memories_fts_au AFTER UPDATE OF text ON memories BEGIN
            INSERT INTO memories_fts(memories_fts, rowid, text) VALUES ('delete', old.id, old.text);
            INSERT INTO memories_fts(rowid, text) VALUES (new.id, new.text);
        END""",
        # Sentence embeddings, one per (memory, embedding model); float32 little-endian bytes.
        """CREATE TABLE memory_embeddings (
            memory_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            PRIMARY KEY (memory_id, model)
        )""",
        # options: JSON list of option texts without their letters ([] = open question).
        """CREATE TABLE questions (
            id INTEGER PRIMARY KEY,
            text TEXT NOT NULL,
            options TEXT NOT NULL DEFAULT '[]',
            asked_at REAL NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE answers (
            id INTEGER PRIMARY KEY,
            question_id INTEGER NOT NULL REFERENCES questions(id) ON DELETE CASCADE,
            choice TEXT,
            text TEXT NOT NULL,
            abstained INTEGER NOT NULL CHECK (abstained IN (0, 1)),
            reason TEXT,
            model TEXT NOT NULL,
            adapter_id TEXT,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX answers_question ON answers(question_id)",
        # The memories shown to the answerer; cited = 1 for those the answer cites.
        """CREATE TABLE answer_citations (
            answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
            memory_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
            rank INTEGER NOT NULL,
            cited INTEGER NOT NULL CHECK (cited IN (0, 1)),
            PRIMARY KEY (answer_id, memory_id)
        )""",
        "CREATE INDEX answer_citations_memory ON answer_citations(memory_id)",
        """CREATE TABLE feedback (
            id INTEGER PRIMARY KEY,
            answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
            correct INTEGER NOT NULL CHECK (correct IN (0, 1)),
            corrected TEXT,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX feedback_answer ON feedback(answer_id)",
        # Phase Two: alternative memories sampled for a segment's window (and the one actually written).
        """CREATE TABLE candidates (
            id INTEGER PRIMARY KEY,
            segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
            text TEXT NOT NULL,
            valid INTEGER NOT NULL CHECK (valid IN (0, 1)),
            failure TEXT,
            sampling TEXT NOT NULL DEFAULT '{}',
            source TEXT NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX candidates_segment ON candidates(segment_id)",
        # Downscaled keyframes kept on disk for training, deleted after training or at expires_at.
        """CREATE TABLE kept_frames (
            id INTEGER PRIMARY KEY,
            segment_id INTEGER NOT NULL REFERENCES segments(id) ON DELETE CASCADE,
            path TEXT NOT NULL,
            expires_at REAL NOT NULL,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX kept_frames_segment ON kept_frames(segment_id)",
        "CREATE INDEX kept_frames_expires ON kept_frames(expires_at)",
        """CREATE TABLE pairs (
            id INTEGER PRIMARY KEY,
            chosen_candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
            rejected_candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
            score REAL NOT NULL,
            split TEXT NOT NULL CHECK (split IN ('train', 'holdout')),
            created_at REAL NOT NULL,
            CHECK (chosen_candidate_id != rejected_candidate_id)
        )""",
        "CREATE INDEX pairs_chosen ON pairs(chosen_candidate_id)",
        "CREATE INDEX pairs_rejected ON pairs(rejected_candidate_id)",
        # Which feedback produced a pair. Deleting feedback deletes the pairs derived from it (trigger below).
        """CREATE TABLE pair_feedback (
            pair_id INTEGER NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
            feedback_id INTEGER NOT NULL REFERENCES feedback(id) ON DELETE CASCADE,
            PRIMARY KEY (pair_id, feedback_id)
        )""",
        "CREATE INDEX pair_feedback_feedback ON pair_feedback(feedback_id)",
        # BEFORE: the links still exist when it runs (the FK cascade removes them afterwards).
        """CREATE TRIGGER feedback_bd_pairs BEFORE DELETE ON feedback BEGIN
            DELETE FROM pairs WHERE id IN (SELECT pair_id FROM pair_feedback WHERE feedback_id = old.id);
        END""",
        # Steering-vector adapters. JSON columns: pair_ids, feedback_ids, metrics, extra (unknown keys).
        # previous_id: the adapter that was active before this one was activated (for rollback).
        """CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'inactive', 'rejected', 'rolled_back')),
            reason TEXT,
            path TEXT,
            gguf_path TEXT,
            layer INTEGER,
            scale REAL,
            hidden_size INTEGER,
            base_model_hash TEXT,
            pair_ids TEXT NOT NULL DEFAULT '[]',
            feedback_ids TEXT NOT NULL DEFAULT '[]',
            metrics TEXT NOT NULL DEFAULT '{}',
            extra TEXT NOT NULL DEFAULT '{}',
            previous_id TEXT,
            created_at REAL NOT NULL,
            activated_at REAL
        )""",
        # At most one active adapter, enforced by the database even across processes.
        "CREATE UNIQUE INDEX adapters_one_active ON adapters(status) WHERE status = 'active'",
    ]
    for sql in statements:
        conn.execute(sql)


def m002_vector_index_issue14(conn: sqlite3.Connection) -> None:
    """Binary-quantized vector index beside memory_embeddings (issue 14): one sign-bit code per embedding.

    code = sign bits of (vector - center), packed. The center (the model's mean vector, float32) is set once
    a model has enough vectors (store/memories.py); sentence embeddings share a large common direction
    (|mean| ~ 0.7 for MiniLM) that would otherwise make most bits equal for every memory. Readers keep the
    codes of a model in RAM and scan them by Hamming distance, then re-score the best candidates exactly from
    memory_embeddings. `seq` grows with every insert so a reader appends only new rows; `generation` changes
    on every delete and re-centering so a reader reloads; `watermark` is an id up to which every memory has
    a vector (the lazy embedder looks only above it). Rows go with their memory (cascade) and with their
    float embedding (trigger), inside the same transaction. Embeddings written before this migration get
    uncentered codes here; the store centers and re-codes them the next time it maintains the index.
    """
    import numpy as np

    statements = [
        """CREATE TABLE memory_vectors (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            memory_id INTEGER NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
            model TEXT NOT NULL,
            t_end REAL NOT NULL,
            bits BLOB NOT NULL,
            UNIQUE (memory_id, model)
        )""",
        """CREATE TABLE vector_index_state (
            model TEXT PRIMARY KEY,
            generation INTEGER NOT NULL DEFAULT 0,
            watermark INTEGER NOT NULL DEFAULT 0,
            center BLOB
        )""",
        """CREATE TRIGGER memory_vectors_ad AFTER DELETE ON memory_vectors BEGIN
            INSERT INTO vector_index_state (model, generation, watermark) VALUES (old.model, 1, 0)
            ON CONFLICT (model) DO UPDATE SET generation = generation + 1,
                watermark = min(watermark, old.memory_id - 1);
        END""",
        """CREATE TRIGGER memory_embeddings_ad AFTER DELETE ON memory_embeddings BEGIN
            DELETE FROM memory_vectors WHERE memory_id = old.memory_id AND model = old.model;
        END""",
    ]
    for sql in statements:
        conn.execute(sql)
    # Sign bits packed big-endian per byte (np.packbits), zero-padded to a multiple of 8 bytes.
    rows = conn.execute("SELECT e.memory_id, e.model, e.vector, m.t_end FROM memory_embeddings e "
                        "JOIN memories m ON m.id = e.memory_id ORDER BY e.memory_id").fetchall()
    for mid, model, blob, t_end in rows:
        bits = np.packbits(np.frombuffer(blob, dtype="<f4") > 0)
        bits = np.concatenate([bits, np.zeros((-len(bits)) % 8, np.uint8)])
        conn.execute("INSERT INTO memory_vectors (memory_id, model, t_end, bits) VALUES (?, ?, ?, ?)",
                     (mid, model, t_end, bits.tobytes()))


def m003_device_events_issue15(conn: sqlite3.Connection) -> None:
    """What a long-running device did to keep up and stay in budget (issue 15, edge_agent/device/).

    kind 'degraded': a segment written with reduced settings (detail: level, keyframes, frame_size,
    window_segments, queue_age_s); 'recovered': the first segment back one step; 'dropped': segments the
    capture queue dropped before this one (detail: count); 'budget': a storage check that forgot memories
    (detail: used/max bytes, counts). A forgotten segment keeps its row, so segment_id stays valid; a
    deleted stream takes its events along.
    """
    conn.execute("""CREATE TABLE device_events (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('degraded', 'recovered', 'dropped', 'budget')),
        stream_id INTEGER REFERENCES streams(id) ON DELETE CASCADE,
        segment_id INTEGER REFERENCES segments(id) ON DELETE SET NULL,
        segment_index INTEGER,
        level INTEGER NOT NULL DEFAULT 0,
        detail TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL
    )""")
    conn.execute("CREATE INDEX device_events_created ON device_events(created_at)")
    conn.execute("CREATE INDEX device_events_segment ON device_events(segment_id)")


# Order matters; append only.
def m004_feedback_history_issue13(conn: sqlite3.Connection) -> None:
    """Feedback replaced by later feedback on the same answer: the audit trail (`feedback` keeps the current one)."""
    conn.execute("""CREATE TABLE feedback_history (
            id INTEGER PRIMARY KEY,
            feedback_id INTEGER NOT NULL,
            answer_id INTEGER NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
            correct INTEGER NOT NULL CHECK (correct IN (0, 1)),
            corrected TEXT,
            created_at REAL NOT NULL,
            replaced_at REAL NOT NULL,
            replaced_by INTEGER
        )""")
    conn.execute("CREATE INDEX feedback_history_answer ON feedback_history(answer_id)")


ADAPTER_COLUMNS_M005 = ("id", "status", "reason", "path", "gguf_path", "layer", "scale", "hidden_size",
                        "base_model_hash", "pair_ids", "feedback_ids", "metrics", "extra", "previous_id",
                        "created_at", "activated_at")


def m005_adapter_failed_issue10(conn: sqlite3.Connection) -> None:
    """Adapter status 'failed' (issue 10): an adapter the writer could not apply (its file does not load, or the
    model refuses it), with the reason in `reason`. A failed adapter is not the active one.

    SQLite cannot alter a CHECK constraint, so the table is rebuilt inside this migration's transaction: the
    old table is renamed aside (nothing references `adapters`: no foreign key, trigger or view), the new one
    created with the full CHECK, every row copied (rowid included, so the order is unchanged), the old one
    dropped and the one-active index recreated. Columns are unchanged.
    """
    cols = ", ".join(ADAPTER_COLUMNS_M005)
    conn.execute("DROP INDEX adapters_one_active")
    conn.execute("ALTER TABLE adapters RENAME TO _adapters_before_m005")
    conn.execute("""CREATE TABLE adapters (
            id TEXT PRIMARY KEY,
            status TEXT NOT NULL CHECK (status IN ('candidate', 'active', 'inactive', 'rejected', 'rolled_back',
                                                   'failed')),
            reason TEXT,
            path TEXT,
            gguf_path TEXT,
            layer INTEGER,
            scale REAL,
            hidden_size INTEGER,
            base_model_hash TEXT,
            pair_ids TEXT NOT NULL DEFAULT '[]',
            feedback_ids TEXT NOT NULL DEFAULT '[]',
            metrics TEXT NOT NULL DEFAULT '{}',
            extra TEXT NOT NULL DEFAULT '{}',
            previous_id TEXT,
            created_at REAL NOT NULL,
            activated_at REAL
        )""")
    conn.execute(f"INSERT INTO adapters (rowid, {cols}) SELECT rowid, {cols} FROM _adapters_before_m005")
    conn.execute("DROP TABLE _adapters_before_m005")
    conn.execute("CREATE UNIQUE INDEX adapters_one_active ON adapters(status) WHERE status = 'active'")


def m006_vector_partitions_issue14(conn: sqlite3.Connection) -> None:
    """A coarse partition for the vector index (issue 14; store/vectors.py): k-means centroids per model and,
    per code, its list and residual scale; `bits` become the sign bits of (vector - its list's centroid).

    vector_index_state.centroids: [lists, dim] float32 (NULL: one list centered at zero); trained_on: how many
    vectors the partition was trained with (the store re-partitions as the model grows); `center` (m002) is no
    longer read. memory_vectors.list: the code's list; scale: |r|^2 / |r|_1 of its residual r. Existing rows
    become one list around m002's center (or zero), with bits and scale recomputed from memory_embeddings;
    the store trains a real partition the next time the model is written or maintained.
    """
    import numpy as np

    conn.execute("ALTER TABLE memory_vectors ADD COLUMN list INTEGER NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE memory_vectors ADD COLUMN scale REAL NOT NULL DEFAULT 0")
    conn.execute("ALTER TABLE vector_index_state ADD COLUMN centroids BLOB")
    conn.execute("ALTER TABLE vector_index_state ADD COLUMN trained_on INTEGER NOT NULL DEFAULT 0")
    centers = {}
    for model, center in conn.execute("SELECT model, center FROM vector_index_state").fetchall():
        centers[model] = None if center is None else np.frombuffer(center, dtype="<f4")
        conn.execute("UPDATE vector_index_state SET centroids = ?, generation = generation + 1 WHERE model = ?",
                     (center, model))
    rows = conn.execute("SELECT v.memory_id, v.model, e.vector FROM memory_vectors v JOIN memory_embeddings e "
                        "ON e.memory_id = v.memory_id AND e.model = v.model").fetchall()
    for mid, model, blob in rows:
        r = np.frombuffer(blob, dtype="<f4")
        center = centers.get(model)
        if center is not None and center.shape == r.shape:
            r = r - center
        l1 = float(np.abs(r).sum())
        bits = np.packbits(r > 0)  # big-endian per byte (np.packbits), zero-padded to a multiple of 8 bytes
        bits = np.concatenate([bits, np.zeros((-len(bits)) % 8, np.uint8)])
        conn.execute("UPDATE memory_vectors SET bits = ?, scale = ? WHERE memory_id = ? AND model = ?",
                     (bits.tobytes(), float(r @ r) / l1 if l1 > 0 else 0.0, mid, model))


def m007_home_relative_paths(conn: sqlite3.Connection) -> None:
    """Files inside the home are recorded relative to the database's folder (`Queries._stored_path`): kept
    keyframes (kept_frames.path) and adapter files (adapters.path, gguf_path). Absolute paths pinned a home to
    the place it was first written: moved or restored elsewhere, its adapters failed to load and `forget` or the
    keyframes' expiry deleted nothing (the files stayed until the next start's sweep).

    Rows under this database's folder become relative. Rows of a home moved before this migration name the old
    place: one whose `frames/<stream>/<segment>/<frame>.png` or `adapters/<id>/<file>` exists under this folder
    becomes that; any other row keeps its absolute path. No schema change; a database with no file (":memory:")
    has nothing to move."""
    file = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not file:
        return
    home = Path(file).resolve().parent

    def relative(path: str | None, folder: str, depth: int) -> str | None:
        if path is None or not os.path.isabs(path):
            return path
        inside = stored_path(home, path)
        if not os.path.isabs(inside):
            return inside
        parts = Path(path).parts
        if len(parts) > depth and parts[-depth] == folder:
            here = home.joinpath(*parts[-depth:])
            if here.exists() or here.with_name(here.name + ".part").exists():
                return here.relative_to(home).as_posix()
        return path

    for rid, path in conn.execute("SELECT id, path FROM kept_frames").fetchall():
        conn.execute("UPDATE kept_frames SET path = ? WHERE id = ?", (relative(path, "frames", 4), rid))
    for aid, path, gguf in conn.execute("SELECT id, path, gguf_path FROM adapters").fetchall():
        conn.execute("UPDATE adapters SET path = ?, gguf_path = ? WHERE id = ?",
                     (relative(path, "adapters", 3), relative(gguf, "adapters", 3), aid))


def m008_faces(conn: sqlite3.Connection) -> None:
    """The face registry (edge_agent/memory/faces.py): one row per person met, `<face_N>` by `number`, in the
    order first seen; `vector` is the mean identity vector (float32) of the frames matched to them, `first_seen`
    and `last_seen` absolute seconds. `forget --all` empties it."""
    conn.execute("""CREATE TABLE faces (
        id INTEGER PRIMARY KEY,
        number INTEGER NOT NULL UNIQUE,
        tag TEXT NOT NULL UNIQUE,
        vector BLOB NOT NULL,
        n_frames INTEGER NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        created_at REAL NOT NULL
    )""")


def m009_segment_people(conn: sqlite3.Connection) -> None:
    """The people the face registry saw in each segment (`<face_N>` tags, space-separated, in the order they came
    into view; NULL when no registry ran or nobody was in view): what `adapt` retags the candidates it samples later
    with, as the written memory was retagged when the segment was written. `forget` clears it with the segment."""
    conn.execute("ALTER TABLE segments ADD COLUMN people TEXT")


MIGRATIONS: list[Migration] = [m001_initial, m002_vector_index_issue14, m003_device_events_issue15,
                               m004_feedback_history_issue13, m005_adapter_failed_issue10,
                               m006_vector_partitions_issue14, m007_home_relative_paths, m008_faces,
                               m009_segment_people]


def _ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations ("
        "id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, applied_at REAL NOT NULL)"
    )


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of migrations recorded in the database, in the order they were applied."""
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_migrations'").fetchone()
    if not exists:
        return []
    return [r[0] for r in conn.execute("SELECT name FROM _migrations ORDER BY id")]


def unknown(conn: sqlite3.Connection, migrations: list[Migration] = MIGRATIONS) -> list[str]:
    """Applied migrations this code does not know: the database was written by a newer edge-agent."""
    known = {m.__name__ for m in migrations}
    return [name for name in applied(conn) if name not in known]


def migrate(conn: sqlite3.Connection, migrations: list[Migration] = MIGRATIONS) -> list[str]:
    """Apply pending migrations, each in its own IMMEDIATE transaction; returns the names applied now.

    `conn` must be in autocommit mode (isolation_level=None). BEGIN IMMEDIATE takes the write lock before
    the check, so two processes opening a fresh database at once apply each migration exactly once.
    """
    done_now = []
    for fn in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            _ensure_table(conn)
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (fn.__name__,)).fetchone():
                conn.execute("COMMIT")
                continue
            fn(conn)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (fn.__name__, time.time()))
            conn.execute("COMMIT")
            done_now.append(fn.__name__)
        except BaseException:
            if conn.in_transaction:  # some errors end the transaction themselves
                conn.execute("ROLLBACK")
            raise
    return done_now
