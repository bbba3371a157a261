"""Benchmark loaders: VideoMME, EgoLife(QA), EgoTempo and the synthetic world, each read in its own published format.

Every loader returns a `Benchmark` of `BenchItem` streams whose questions follow `BenchQuestion`. What each
benchmark means by "when is the question asked":

- VideoMME: after the whole video. `asked_at` is the video's length read with OpenCV (frames / fps), or `inf`
  ("after the whole stream") when the file cannot be probed.
- EgoLife: at `query_time`, over the wearer's day. Videos are 30 s pieces named `DAY1_A1_JAKE_11100000.mp4`
  (HHMMSSFF, FF = frame at 20 fps). A stream is one person's day (or, with group="person", the whole week);
  stream time is wall-clock seconds since the stream's first piece, so gaps between recordings stay gaps and
  memories keep the time they were seen. Query and target times are converted the same way.
- EgoTempo: open-ended, after the whole clip (OpenCV length, else the span encoded in the clip id, else `inf`).
- synthetic: at the question's own `asked_at` (the synth module's questions.json next to video.mp4).

A missing folder, annotation file or video raises `DataError` with one line naming the path and what is missing.
`skip_missing=True` instead drops the questions whose videos are absent and lists them in `Benchmark.skipped`.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable

from edge_agent.errors import DataError, QuestionError
from edge_agent.eval.schema import LETTERS, Benchmark, BenchItem, BenchQuestion, VideoPiece

VIDEO_EXTENSIONS = (".mp4", ".MP4", ".mkv", ".webm", ".avi", ".mov")
EGOLIFE_PIECE_SECONDS = 30.0  # EgoLife's videos are cut in 30 s pieces
EGOLIFE_FPS = 20  # the FF field of HHMMSSFF counts frames 00..19
_EGOLIFE_NAME = re.compile(r"^DAY(\d+)_(A\d+)_([A-Za-z]+)_(\d{8})$")
_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Ea-e])\s*[\.\):：]\s*")

BENCHMARKS = ("synthetic", "videomme", "egolife", "egotempo")


# ---------------------------------------------------------------------------------------------------- helpers


def probe_duration(path: Path) -> float | None:
    """Length of a video file in seconds (frame count / fps, read by OpenCV), or None when it cannot be read."""
    import cv2  # heavy: imported only when a loader probes a file

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        frames = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        fps = cap.get(cv2.CAP_PROP_FPS)
        if frames > 0 and fps > 0:
            return float(frames) / float(fps)
        return None
    finally:
        cap.release()


def _require_dir(bench: str, root: Path | str) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{bench} data {str(root)!r}: folder not found")
    return root


def _index_videos(root: Path) -> dict[str, Path]:
    """Every video file under `root` by file stem (the first in sorted order wins when a stem repeats)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in VIDEO_EXTENSIONS and path.is_file():
            found.setdefault(path.stem, path)
    return found


def _read_json(bench: str, path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{bench} data {str(path)!r}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{bench} data {str(path)!r}: not valid JSON ({e})") from None


def _require_fields(bench: str, path: Path, row: dict, names: Iterable[str], where: str) -> None:
    if not isinstance(row, dict):
        raise DataError(f"{bench} data {str(path)!r}: {where} is {type(row).__name__}, expected an object")
    missing = [n for n in names if n not in row]
    if missing:
        raise DataError(f"{bench} data {str(path)!r}: {where} has no field(s) {', '.join(missing)}")


def _strip_option(text: Any, letter: str) -> str:
    """'A. Apples.' -> 'Apples.' (VideoMME and some synthetic files carry the letter inside the option text)."""
    s = str(text).strip()
    m = _OPTION_PREFIX.match(s)
    if m and m.group(1).upper() == letter:
        return s[m.end():].strip()
    return s


def _question(bench: str, path: Path, **kw: Any) -> BenchQuestion:
    """Build a BenchQuestion, turning a schema violation into a DataError that names the file."""
    try:
        return BenchQuestion(benchmark=bench, **kw)
    except QuestionError as e:
        raise DataError(f"{bench} data {str(path)!r}: {e}") from None


def _missing(bench: str, root: Path, skip_missing: bool, skipped: list[str], what: str) -> None:
    if not skip_missing:
        raise DataError(f"{bench} data {str(root)!r}: {what} (pass skip_missing to leave it out)")
    skipped.append(what)


def _finish(bench: str, root: Path, items: list[BenchItem], skipped: list[str]) -> Benchmark:
    if not items:
        raise DataError(f"{bench} data {str(root)!r}: no question has its video ({len(skipped)} left out)")
    return Benchmark(bench, items, root, skipped)


# ---------------------------------------------------------------------------------------------------- VideoMME

VIDEOMME_COLUMNS = ("video_id", "duration", "domain", "sub_category", "videoID", "question_id", "task_type",
                    "question", "options", "answer")


def _find_videomme_parquet(root: Path) -> Path:
    for folder in (root / "videomme", root):
        files = sorted(folder.glob("*.parquet"))
        if files:
            return files[0]
    raise DataError(f"videomme data {str(root)!r}: no parquet file (expected videomme/test-00000-of-00001.parquet)")


def load_videomme(root: Path | str, *, parquet: Path | str | None = None, probe: bool = True,
                  skip_missing: bool = False) -> Benchmark:
    """VideoMME as published (lmms-lab/Video-MME): a parquet of questions and `<videoID>.mp4` files under data/.

    One stream per video, in the parquet's order; every question is asked after the whole video.
    Category = `task_type`; `duration` (short/medium/long), `domain`, `sub_category` are kept in `meta`.
    """
    root = _require_dir("videomme", root)
    path = Path(parquet) if parquet else _find_videomme_parquet(root)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"videomme data {str(path)!r}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"videomme data {str(path)!r}: file not found") from None
    except Exception as e:  # pyarrow raises ArrowInvalid & co. for a file that is not parquet
        if type(e).__module__.startswith("pyarrow"):
            raise DataError(f"videomme data {str(path)!r}: not a readable parquet file ({e})") from None
        raise
    missing = [c for c in VIDEOMME_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"videomme data {str(path)!r}: no column(s) {', '.join(missing)}")

    videos = _index_videos(root)
    by_video: dict[str, list[dict]] = {}
    for row in table.to_pylist():
        by_video.setdefault(str(row["videoID"]), []).append(row)

    items, skipped = [], []
    for vid, rows in by_video.items():
        video = videos.get(vid)
        if video is None:
            _missing("videomme", root, skip_missing, skipped, f"video {vid}.mp4 not found under data/")
            continue
        length = probe_duration(video) if probe else None
        asked_at = length if length is not None else math.inf
        questions = []
        for row in rows:
            options = list(row["options"] or [])
            if len(options) != 4:
                raise DataError(f"videomme data {str(path)!r}: question {row['question_id']} has "
                                f"{len(options)} options, expected 4")
            questions.append(_question(
                "videomme", path, id=str(row["question_id"]), video=f"videomme/{vid}", asked_at=asked_at,
                question=str(row["question"]), options=tuple(_strip_option(o, L) for o, L in zip(options, LETTERS)),
                answer=str(row["answer"]).strip().upper(), category=str(row["task_type"]),
                meta={"duration": row["duration"], "domain": row["domain"], "sub_category": row["sub_category"],
                      "video_id": row["video_id"]}))
        items.append(BenchItem(f"videomme/{vid}", [VideoPiece(video, 0.0)], questions, length,
                               {"videoID": vid, "duration": rows[0]["duration"], "domain": rows[0]["domain"]}))
    return _finish("videomme", root, items, skipped)


# ---------------------------------------------------------------------------------------------------- EgoLife

EGOLIFE_FIELDS = ("ID", "query_time", "type", "question", "choice_a", "choice_b", "choice_c", "choice_d", "answer")


def egolife_clock(day: str, time: str) -> float:
    """EgoLife's (date "DAY3", time "HHMMSSFF") as seconds since midnight of DAY1: (day-1)*86400 + time of day.

    FF counts frames at 20 fps (00..19); like the EgoLife reference code, a frame field above 19 is read as 0.
    """
    m = re.fullmatch(r"DAY(\d+)", str(day).strip(), flags=re.IGNORECASE)
    t = str(time).strip()
    if not m or not re.fullmatch(r"\d{6}(\d{2})?", t):
        raise ValueError(f"EgoLife time ({day!r}, {time!r}): expected ('DAYn', 'HHMMSSFF')")
    hh, mm, ss = int(t[0:2]), int(t[2:4]), int(t[4:6])
    ff = int(t[6:8]) if len(t) == 8 else 0
    if hh > 23 or mm > 59 or ss > 59:
        raise ValueError(f"EgoLife time ({day!r}, {time!r}): not a time of day")
    frame = ff / EGOLIFE_FPS if ff < EGOLIFE_FPS else 0.0
    return (int(m.group(1)) - 1) * 86400.0 + hh * 3600 + mm * 60 + ss + frame


def _egolife_person(row: dict, qa_path: Path, persons: list[str]) -> str | None:
    """Whose stream a question is about: a field of the row, else the QA file's name, else the only person."""
    for key in ("identity", "person", "owner", "name"):
        value = row.get(key)
        if isinstance(value, str) and re.match(r"A\d+", value):
            return _match_person(value, persons)
    m = re.search(r"(A\d+)_([A-Za-z]+)", qa_path.stem)
    if m:
        return _match_person(m.group(0), persons) or m.group(0).upper()
    return persons[0] if len(persons) == 1 else None


def _match_person(value: str, persons: list[str]) -> str | None:
    code = value.split("_")[0].upper()
    return next((p for p in persons if p.split("_")[0] == code), None)


def _egolife_qa_files(root: Path, qa: Path | str | None) -> list[Path]:
    if qa is not None:
        qa = Path(qa)
        files = sorted(qa.glob("*.json")) if qa.is_dir() else [qa]
    else:
        files = sorted(root.glob("*.json")) + sorted((root / "EgoLifeQA").glob("*.json"))
    if not files:
        raise DataError(f"egolife data {str(qa or root)!r}: no QA json file (expected EgoLifeQA/*.json)")
    return files


def load_egolife(root: Path | str, *, qa: Path | str | None = None, group: str = "day",
                 skip_missing: bool = False) -> Benchmark:
    """EgoLife / EgoLifeQA: JSON lists of questions (ID, query_time {date, time}, type, question, choice_a..d,
    answer, target_time, ...) and the wearers' 30 s video pieces `A1_JAKE/DAY1/DAY1_A1_JAKE_11100000.mp4`.

    `group="day"` makes one stream per person and day (the default: a day is what a wearer's device holds before
    a night's break), `group="person"` one stream per person over all days (questions about earlier days become
    answerable). Stream time 0 is the first piece of the stream.
    """
    if group not in ("day", "person"):
        raise DataError(f"egolife group={group!r}: expected 'day' or 'person'")
    root = _require_dir("egolife", root)

    # person -> list of (clock seconds since DAY1 midnight, day number, path)
    pieces: dict[str, list[tuple[float, int, Path]]] = defaultdict(list)
    for path in sorted(root.rglob("DAY*_A*_*.mp4")):
        m = _EGOLIFE_NAME.match(path.stem)
        if m:
            day, code, name, hhmmssff = m.groups()
            person = f"{code}_{name.upper()}"
            pieces[person].append((egolife_clock(f"DAY{day}", hhmmssff), int(day), path))
    persons = sorted(pieces)

    def stream_of(person: str, day: int) -> str:
        return f"egolife/{person}/DAY{day}" if group == "day" else f"egolife/{person}"

    streams: dict[str, list[tuple[float, Path]]] = defaultdict(list)
    for person, plist in pieces.items():
        for clock, day, path in plist:
            streams[stream_of(person, day)].append((clock, path))
    zero = {key: min(c for c, _ in plist) for key, plist in streams.items()}

    questions: dict[str, list[BenchQuestion]] = defaultdict(list)
    skipped: list[str] = []
    for qa_path in _egolife_qa_files(root, qa):
        rows = _read_json("egolife", qa_path)
        if not isinstance(rows, list):
            raise DataError(f"egolife data {str(qa_path)!r}: expected a JSON list of questions")
        for i, row in enumerate(rows):
            _require_fields("egolife", qa_path, row, EGOLIFE_FIELDS, f"item {i}")
            qt = row["query_time"]
            _require_fields("egolife", qa_path, qt, ("date", "time"), f"item {i} query_time")
            person = _egolife_person(row, qa_path, persons)
            if person is None:
                raise DataError(f"egolife data {str(qa_path)!r}: item {i} does not say whose video it is about "
                                f"(no identity field, no A<n>_<NAME> in the file name, videos of {len(persons)} people)")
            try:
                query_clock = egolife_clock(qt["date"], qt["time"])
            except ValueError as e:
                raise DataError(f"egolife data {str(qa_path)!r}: item {i}: {e}") from None
            day = int(query_clock // 86400) + 1
            key = stream_of(person, day)
            if key not in streams:
                _missing("egolife", root, skip_missing, skipped,
                         f"no videos for {person} DAY{day} (question {row['ID']} of {qa_path.name})")
                continue
            t0 = zero[key]
            # A question asked before the stream's first piece sees no memory: it is asked at stream time 0.
            asked_at = max(0.0, query_clock - t0)
            evidence = None
            target = row.get("target_time")
            if isinstance(target, dict) and "date" in target and "time" in target:
                try:
                    t = egolife_clock(target["date"], target["time"]) - t0
                except ValueError:
                    t = -1.0
                if t >= 0:  # a target on an earlier day than a day stream lies outside the stream
                    evidence = (t, t)  # EgoLife marks one moment where the answer was seen
            questions[key].append(_question(
                "egolife", qa_path, id=f"{person}/{row['ID']}", video=key, asked_at=asked_at,
                question=str(row["question"]),
                options=tuple(str(row[f"choice_{c}"]) for c in "abcd"), answer=str(row["answer"]).strip().upper(),
                category=str(row["type"]), evidence=evidence,
                meta={"query_time": qt, "target_time": target, "person": person,
                      **{k: row[k] for k in ("need_audio", "need_name", "last_time", "keywords") if k in row}}))

    items = []
    for key in sorted(questions, key=_egolife_order):
        plist = sorted(streams[key])
        t0 = zero[key]
        item_pieces = [VideoPiece(path, clock - t0) for clock, path in plist]
        duration = item_pieces[-1].offset + EGOLIFE_PIECE_SECONDS
        items.append(BenchItem(key, item_pieces, questions[key], duration,
                               {"origin_clock": t0, "piece_seconds": EGOLIFE_PIECE_SECONDS}))
    return _finish("egolife", root, items, skipped)


def _egolife_order(key: str) -> tuple:
    parts = key.split("/")
    day = int(parts[2][3:]) if len(parts) > 2 else 0
    return (parts[1], day)


# ---------------------------------------------------------------------------------------------------- EgoTempo

EGOTEMPO_FIELDS = ("question_id", "clip_id", "question_type", "question", "answer")


def _clip_span(clip_id: str) -> float | None:
    """EgoTempo clip ids are {video_uid}_{start}_{end} in seconds of the Ego4D video: their difference is the length."""
    parts = clip_id.rsplit("_", 2)
    try:
        span = float(parts[2]) - float(parts[1])
    except (IndexError, ValueError):
        return None
    return span if span > 0 else None


def load_egotempo(root: Path | str, *, annotations: Path | str | None = None, probe: bool = True,
                  skip_missing: bool = False) -> Benchmark:
    """EgoTempo: `egotempo_openQA.json` ({"info": ..., "annotations": [{question_id, clip_id, question_type,
    question, answer}]}) and one video per clip named `<clip_id>.mp4` anywhere under `root`.

    Open-ended: answers are graded by a judge. Questions are asked after the whole clip.
    """
    root = _require_dir("egotempo", root)
    path = Path(annotations) if annotations else root / "egotempo_openQA.json"
    data = _read_json("egotempo", path)
    rows = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise DataError(f"egotempo data {str(path)!r}: no 'annotations' list")

    videos = _index_videos(root)
    by_clip: dict[str, list[dict]] = {}
    for i, row in enumerate(rows):
        _require_fields("egotempo", path, row, EGOTEMPO_FIELDS, f"annotation {i}")
        by_clip.setdefault(str(row["clip_id"]), []).append(row)

    items, skipped = [], []
    for clip, clip_rows in by_clip.items():
        video = videos.get(clip)
        if video is None:
            _missing("egotempo", root, skip_missing, skipped, f"clip video {clip}.mp4 not found")
            continue
        length = (probe_duration(video) if probe else None) or _clip_span(clip)
        asked_at = length if length is not None else math.inf
        questions = [_question("egotempo", path, id=str(r["question_id"]), video=f"egotempo/{clip}",
                               asked_at=asked_at, question=str(r["question"]), options=None,
                               answer=str(r["answer"]), category=str(r["question_type"]))
                     for r in clip_rows]
        items.append(BenchItem(f"egotempo/{clip}", [VideoPiece(video, 0.0)], questions, length, {"clip_id": clip}))
    return _finish("egotempo", root, items, skipped)


# ---------------------------------------------------------------------------------------------------- synthetic

SYNTH_FIELDS = ("id", "category", "question", "options", "answer", "asked_at")


def _evidence_span(value: Any) -> tuple[float, float] | None:
    """The synthetic world's evidence as a (t_start, t_end) span: accepts {t_start, t_end}, [a, b], or a list of either."""
    def span(v: Any) -> tuple[float, float] | None:
        if isinstance(v, dict) and "t_start" in v and "t_end" in v:
            return float(v["t_start"]), float(v["t_end"])
        if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
            return float(v[0]), float(v[1])
        return None

    one = span(value)
    if one is not None or not isinstance(value, list):
        return one
    spans = [s for s in (span(v) for v in value) if s is not None]
    return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None


def load_synthetic(root: Path | str) -> Benchmark:
    """A clip of the synthetic world (`edge-agent synth --out DIR`): DIR/video.mp4 and DIR/questions.json.

    questions.json is a list of questions (or {"questions": [...]}) with id, category, question, options (4),
    answer (letter), asked_at (stream seconds), and optionally open_answer and evidence.
    """
    root = _require_dir("synthetic", root)
    path = root / "questions.json"
    data = _read_json("synthetic", path)
    rows = data.get("questions") if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise DataError(f"synthetic data {str(path)!r}: expected a list of questions")
    video = root / "video.mp4"
    if not video.is_file():
        raise DataError(f"synthetic data {str(root)!r}: video.mp4 not found")
    key = f"synthetic/{root.name}"
    questions = []
    for i, row in enumerate(rows):
        _require_fields("synthetic", path, row, SYNTH_FIELDS, f"question {i}")
        options = row["options"]
        if not isinstance(options, list):
            raise DataError(f"synthetic data {str(path)!r}: question {i} options is not a list")
        try:
            asked_at = float(row["asked_at"])
        except (TypeError, ValueError):
            raise DataError(f"synthetic data {str(path)!r}: question {i} asked_at={row['asked_at']!r} "
                            "is not a number of seconds") from None
        meta = {k: row[k] for k in ("open_answer", "evidence") if k in row}
        if len(options) != 4:
            raise DataError(f"synthetic data {str(path)!r}: question {i} has {len(options)} options, expected 4")
        questions.append(_question(
            "synthetic", path, id=str(row["id"]), video=key, asked_at=asked_at,
            question=str(row["question"]), options=tuple(_strip_option(o, L) for o, L in zip(options, LETTERS)),
            answer=str(row["answer"]).strip().upper(), category=str(row["category"]),
            evidence=_evidence_span(row.get("evidence")), meta=meta))
    length = probe_duration(video)
    if not questions:
        raise DataError(f"synthetic data {str(path)!r}: no questions")
    return Benchmark("synthetic", [BenchItem(key, [VideoPiece(video, 0.0)], questions, length)], root)


# ---------------------------------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., Benchmark]] = {
    "synthetic": load_synthetic,
    "videomme": load_videomme,
    "egolife": load_egolife,
    "egotempo": load_egotempo,
}


def load_benchmark(name: str, root: Path | str, **options: Any) -> Benchmark:
    """Load a benchmark by name (synthetic, videomme, egolife, egotempo) from its data folder."""
    loader = LOADERS.get(name)
    if loader is None:
        raise DataError(f"benchmark {name!r}: unknown (known: {', '.join(BENCHMARKS)})")
    return loader(root, **options)
