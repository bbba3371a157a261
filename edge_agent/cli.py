"""The `edge-agent` command line: a thin Typer layer over the library; user errors become one-line messages."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from edge_agent.config import ENV_HOME, Config, load_config
from edge_agent.errors import ConfigError, EdgeAgentError, ModelError
from edge_agent.store.forget import WHAT_ALL_KEEPS

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="On-device memory for a wearable camera: watch, remember, answer, learn from feedback.")
models_app = typer.Typer(no_args_is_help=True, help="Model catalog, download, export and quantization.")
adapter_app = typer.Typer(no_args_is_help=True, help="Phase Two steering-vector adapters.")
config_app = typer.Typer(no_args_is_help=True, help="The effective settings.")
train_app = typer.Typer(no_args_is_help=True, help="Offline training on GPUs (Phase One); `accelerate launch` for many.")
app.add_typer(models_app, name="models")
app.add_typer(adapter_app, name="adapter")
app.add_typer(config_app, name="config")
app.add_typer(train_app, name="train")
service_app = typer.Typer(no_args_is_help=True, help="Run `edge-agent run` at boot under systemd; its health.")
app.add_typer(service_app, name="service")

out = Console()
err = Console(stderr=True)

Home = Annotated[Optional[Path], typer.Option("--home", envvar=ENV_HOME, help="Data folder (default ~/.edge-agent).")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML file overriding <home>/config.toml.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AdapterId = Annotated[str, typer.Argument(help="An adapter id (`edge-agent adapter list`).")]
Sets = Annotated[Optional[list[str]], typer.Option("--set", help="Override a setting for this run, e.g. "
                                                   "capture.frame_size=256 (repeatable; beats config and env).")]
MAX_ID = 2**63 - 1  # SQLite integers are 64-bit: larger ids and limits are refused as values, not tracebacks


def _positive_id(value: int | None) -> int | None:
    """An id or a count: 1 to 2**63-1 (SQLite's integers), the value named when it is not."""
    if value is not None and not 1 <= value <= MAX_ID:
        raise typer.BadParameter(f"{value} is not in [1, {MAX_ID}]")
    return value


def _sets(values: list[str] | None) -> dict[str, str]:
    """`--set section.name=value` options -> overrides for load_config (the command line's layer)."""
    out = {}
    for item in values or []:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--set {item!r}: expected SECTION.NAME=VALUE, e.g. capture.frame_size=256")
        out[key.strip()] = value.strip()
    return out


def _config(home: Path | None, config_file: Path | None = None, sets: list[str] | None = None) -> Config:
    from edge_agent.store.db import private_home

    cfg = load_config(home, config_file, overrides=_sets(sets))
    private_home(cfg.home)  # an existing home with wider modes is tightened (0700), one of another user refused
    return cfg


def _check_home(cfg: Config, *subfolders: str) -> None:
    """Refuse, naming it, a data folder (or one of its subfolders) that is a file or cannot be written."""
    home = cfg.home
    if home.exists() and not home.is_dir():
        raise ConfigError(f"home {str(home)!r}: exists and is not a folder")
    if home.is_dir() and not os.access(home, os.W_OK | os.X_OK):
        raise ConfigError(f"home {str(home)!r}: not writable by this user (edge-agent keeps its database there); "
                          f"fix its permissions or choose another --home")
    for name in ("frames", "cache", "adapters", "models", "demo", *subfolders):
        sub = home / name
        if sub.exists() and not sub.is_dir():
            raise ConfigError(f"{name} folder {str(sub)!r}: exists and is not a folder; move it away")


def _writable_out(path: Path, option: str = "--out", *, folder: bool = True) -> None:
    """Refuse, before any work, an output that cannot be written: a file where a folder is wanted (or the
    reverse), or a place this user may not write to."""
    path = Path(path).expanduser()
    if path.exists():
        if folder and not path.is_dir():
            raise ConfigError(f"{option} {str(path)!r}: exists and is not a folder")
        if not folder and path.is_dir():
            raise ConfigError(f"{option} {str(path)!r}: is a folder; name the file to write")
    probe = path if folder and path.is_dir() else path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{option} {str(path)!r}: {str(probe)!r} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {str(path)!r}: {str(probe)!r} is not writable by this user; choose another place")


def _require(*modules: str, what: str, install: str) -> None:
    """One line naming what to install when a command's heavy libraries are missing (a runtime-only install)."""
    import importlib

    missing = []
    for m in modules:
        try:
            importlib.import_module(m)
        except ImportError:
            missing.append(m)
    if missing:
        raise ModelError(f"{what} needs {' + '.join(modules)} ({', '.join(missing)} not installed); install: {install}")


def _is_loopback(url: str) -> bool:
    """True for an http(s) URL on this machine (localhost, 127.0.0.0/8, ::1)."""
    import ipaddress
    from urllib.parse import urlparse

    host = (urlparse(url).hostname or "").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def parse_time(value: str | None, name: str) -> float | None:
    """Accept epoch seconds, an ISO date/time, or a duration back from now such as 90s, 10m, 2h, 1d."""
    if value is None:
        return None
    v = value.strip()
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if v and v[-1] in units and v[:-1].replace(".", "", 1).isdigit():
            t = time.time() - float(v[:-1]) * units[v[-1]]
        else:
            t = float(v)
        if not math.isfinite(t):
            raise ConfigError(f"{name}={value!r}: must be a finite time")
        return t
    except (ValueError, OverflowError):
        pass
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected epoch seconds, an ISO time or a duration like 10m") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time, as a wearer would type it
    return dt.timestamp()


def parse_range(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """--since/--until as absolute seconds; refuses a range that ends before it starts."""
    lo, hi = parse_time(since, "--since"), parse_time(until, "--until")
    if lo is not None and hi is not None and lo > hi:
        raise ConfigError(f"--since={since!r} is after --until={until!r}: the range would be empty")
    return lo, hi


def _clock(t: float) -> str:
    from edge_agent.qa.answer import clock  # the same clock the answerer shows the model

    return clock(t)


# ---------------------------------------------------------------------------------------------------------------
# The main job
# ---------------------------------------------------------------------------------------------------------------
@app.command()
def run(source: Annotated[str, typer.Argument(help="Camera index (0), video file, rtsp:// / http:// URL, or "
                                                 "gst:PIPELINE (a CSI camera; `doctor --device` prints one).")],
        until: Annotated[Optional[float], typer.Option(help="Stop at this many seconds of stream time.")] = None,
        start: Annotated[Optional[str], typer.Option(
            help="When a video file began (epoch, ISO or 2h = two hours ago); default: the file's recorded "
                 "creation time, else its modification time minus its length.")] = None,
        home: Home = None, config: ConfigFile = None, sets: Sets = None, json_out: Json = False) -> None:
    """Watch a source and write memories into the store until it ends (or --until, or Ctrl-C)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edge_agent.capture.source import file_start_time
    from edge_agent.device.csi import open_video

    from edge_agent.runtime import run_source

    if until is not None and not (math.isfinite(until) and until > 0):
        raise ConfigError(f"--until={until!r}: must be a positive number of seconds of stream time")
    origin = parse_time(start, "--start")
    cfg = _config(home, config, sets)
    _check_home(cfg)
    # also a CSI camera's GStreamer pipeline; a wrong path fails here, before any progress bar or model load
    video = open_video(source, cfg.capture)
    if origin is None and video.kind == "file":
        origin, _ = file_start_time(video.target, video.duration)  # memories get wall-clock times, not 1970
    elif origin is not None and video.kind != "file":
        video.close()
        raise ConfigError(f"--start={start!r}: only for video files (a camera or stream is stamped as it runs)")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err, disable=json_out, transient=True) as progress:
        task = progress.add_task("remembering", total=None, info="")

        stop = _StopOnCtrlC()

        def tick(seg, report):
            level = f" keep-up level {report.keepup['level']}" if report.keepup and report.keepup["level"] else ""
            progress.update(task, advance=1, info=f"t={seg.t_end:.0f}s written={report.segments_written} "
                                                  f"failed={report.segments_failed} dropped={report.frames_dropped}"
                                                  + level)
            stop.check()

        with stop:
            report = run_source(cfg, source, until=until, video=video, on_segment=tick, origin=origin)
    if json_out:
        _print_json(report.as_dict())
    else:
        out.print(f"stream {report.stream_id}: {report.segments_written} memories written, "
                  f"{report.segments_failed} segments unwritten, {report.segments_skipped} already done, "
                  f"{report.frames_dropped} frames dropped")
    if report.note:
        err.print(f"note: {report.note}", markup=False)
    if report.error:
        raise EdgeAgentError(f"source {source!r} stopped: {report.error} (memories written so far are kept)")


@app.command()
def ask(question: Annotated[str, typer.Argument(help="The question, in plain words.")],
        option: Annotated[Optional[list[str]], typer.Option("--option", "-o",
                                                             help='A choice, e.g. "A. on the shelf". Repeat up to 4.')] = None,
        since: Annotated[Optional[str], typer.Option(help="Only memories after this time.")] = None,
        until: Annotated[Optional[str], typer.Option(
            help="Only memories before this time; the question is asked as of it (so \"an hour ago\" counts back "
                 "from it, and a question over the same memories gets the same answer whenever it is asked).")] = None,
        home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Answer from the stored memories only, citing them; says "not in memory" when they don't hold it."""
    from edge_agent.qa.answer import answer
    from edge_agent.qa.embed import open_embedder
    from edge_agent.store import Store
    from edge_agent.vlm.factory import open_answerer

    cfg = _config(home, config)
    lo, hi = parse_range(since, until)  # before the model loads: a bad range fails at once
    _check_home(cfg)
    store = Store.open(cfg.db_path)
    backend = open_answerer(cfg)
    # The prompt tells the answerer when it is asked: as of --until, not the wall clock, when there is one
    asked_at = time.time() if hi is None else min(hi, time.time())
    result = answer(store, backend, question, option or [], asked_at=asked_at, cfg=cfg.qa,
                    since=lo, until=hi, embedder=open_embedder(cfg))
    backend.close()
    if json_out:
        _print_json(result)
        return
    out.print(f"[bold]{result['text']}[/bold]" + ("  (not in memory)" if result["abstained"] else ""))
    for c in result["citations"]:
        out.print(f"  [dim]#{c['id']} {_clock(c['t_start'])}[/dim] {c['text']}")
    out.print(f"[dim]answer {result['answer_id']}: `edge-agent feedback {result['answer_id']} --correct|--wrong`[/dim]")


@app.command()
def memories(since: Annotated[Optional[str], typer.Option(help="From this time (epoch, ISO, or 10m).")] = None,
             until: Annotated[Optional[str], typer.Option(help="Up to this time.")] = None,
             search: Annotated[Optional[str], typer.Option(help="Full-text search.")] = None,
             limit: Annotated[Optional[int], typer.Option(callback=_positive_id,
                                                          help="At most this many, newest first.")] = None,
             home: Home = None, json_out: Json = False) -> None:
    """List stored memories."""
    from edge_agent.store import Store

    cfg = _config(home)
    _check_home(cfg)
    lo, hi = parse_range(since, until)
    store = Store.open(cfg.db_path)
    rows = store.memories(since=lo, until=hi, search=search, limit=limit)
    if json_out:
        from edge_agent.device.events import annotate_memories

        _print_json(annotate_memories(store, rows))  # "degradation": the reduced settings, or null
        return
    for r in rows:
        out.print(f"[dim]#{r['id']} {_clock(r['t_start'])}[/dim] {r['text']}")
    if not rows:
        err.print("no memories")


@app.command()
def feedback(answer_id: Annotated[int, typer.Argument(callback=_positive_id, help="The id `ask` printed.")],
             correct: Annotated[Optional[bool], typer.Option("--correct/--wrong", help="Was the answer right?")] = None,
             answer_text: Annotated[Optional[str], typer.Option("--answer", help="The right answer, if it was wrong.")] = None,
             delete: Annotated[bool, typer.Option("--delete", help="Take back the feedback given on this answer "
                                                                     "(and the training pairs made from it).")] = False,
             home: Home = None, json_out: Json = False) -> None:
    """Tell the device whether an answer was right; Phase Two learns from this."""
    from edge_agent.store import Store

    cfg = _config(home)
    _check_home(cfg)
    if delete:
        with Store.open(cfg.db_path) as store:
            counts = store.delete_answer_feedback(answer_id)
        if json_out:
            _print_json({"answer_id": answer_id, **counts})
        else:
            out.print(f"deleted {counts['feedback']} feedback and {counts['pairs']} training pairs of answer {answer_id}")
        return
    if correct is None:
        raise ConfigError("feedback: say --correct or --wrong (or --delete)")
    fid = Store.open(cfg.db_path).add_feedback(answer_id, correct, answer_text)
    if json_out:
        _print_json({"feedback_id": fid, "answer_id": answer_id, "correct": correct})
    else:
        out.print(f"feedback {fid} recorded for answer {answer_id}")


@app.command()
def forget(since: Annotated[Optional[str], typer.Option(help="From this time.")] = None,
           until: Annotated[Optional[str], typer.Option(help="Up to this time.")] = None,
           all_: Annotated[bool, typer.Option("--all", help=(
               "Forget everything: memories, kept frames, candidates, every question, answer and feedback "
               "(with its history), training pair and the face registry's people. What stays: "
               + WHAT_ALL_KEEPS + "."))] = False,
           home: Home = None, json_out: Json = False) -> None:
    """Delete memories (and what was derived from them) in a time range, then scrub them from the file."""
    from edge_agent.store import Store

    if since is None and until is None and not all_:
        raise ConfigError("forget: give --since and/or --until, or --all")
    if all_ and (since is not None or until is not None):
        raise ConfigError("forget: --all forgets everything; give it without --since/--until")
    cfg = _config(home)
    _check_home(cfg)
    lo, hi = parse_range(since, until)
    with Store.open(cfg.db_path) as store:
        counts = store.forget(since=lo, until=hi, everything=all_,
                              on_wait=lambda msg: err.print(f"forget: {msg}", markup=False))
    pending = counts.pop("scrub_pending", 0)
    if json_out:
        _print_json({**counts, "scrubbed": not pending})
    else:
        out.print(", ".join(f"{v} {k}" for k, v in counts.items()) + " deleted")
    if pending:
        err.print("forget: deleted, but another process still holds a read snapshot with the old text in the "
                  "write-ahead log; the scrub finishes the next time edge-agent opens the database", markup=False)


@app.command("export")
def export_(out_file: Annotated[Optional[Path], typer.Option("--out", help="Write the JSON here (owner-only) "
                                                                          "instead of printing it.")] = None,
            home: Home = None, json_out: Json = False) -> None:
    """Everything the wearer owns, to keep: memories, questions with answers and feedback, adapters."""
    from edge_agent.store import Store
    from edge_agent.store.dump import export_all

    cfg = _config(home)
    _check_home(cfg)
    with Store.open(cfg.db_path) as store:
        dump = export_all(store)
    if out_file is not None:
        if out_file.is_dir():
            raise ConfigError(f"--out {str(out_file)!r}: is a folder; name the file to write")
        fd = os.open(out_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(dump, f, indent=2, default=str)
        err.print(f"wrote {out_file}: {len(dump['memories'])} memories, {len(dump['questions'])} questions, "
                  f"{len(dump['adapters'])} adapters", markup=False)
        return
    if json_out:
        _print_json(dump)
        return
    for m in dump["memories"]:
        out.print(f"#{m['id']} {_clock(m['t_start'])} {m['text']}", markup=False, highlight=False)
    for q in dump["questions"]:
        out.print(f"Q{q['id']} {_clock(q['asked_at'])} {q['text']}", markup=False, highlight=False)
        for a in q["answers"]:
            verdict = "; ".join(("right" if f["correct"] else "wrong") + (f": {f['corrected']}" if f["corrected"] else "")
                                for f in a["feedback"])
            out.print(f"  A{a['id']} {a['text']}" + (f" [{verdict}]" if verdict else ""), markup=False, highlight=False)
    for a in dump["adapters"]:
        out.print(f"adapter {a['id']} {a['status']} {a.get('path') or ''}", markup=False, highlight=False)


@app.command()
def synth(seed: Annotated[int, typer.Option(help="World seed.")] = 0,
          minutes: Annotated[float, typer.Option(help="Clip length, 1 to 60 minutes.")] = 1.0,
          out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("synth"),
          questions_per_minute: Annotated[float, typer.Option(
              help="Questions asked per minute of clip (fewer when the world runs out of distinct ones).")] = 3.0,
          json_out: Json = False) -> None:
    """Render a synthetic egocentric clip with its event log and questions."""
    from edge_agent.synth import generate

    _writable_out(out_dir)
    paths = generate(seed=seed, minutes=minutes, out_dir=out_dir, questions_per_minute=questions_per_minute)
    if json_out:
        _print_json({k: str(v) for k, v in paths.items()})
    else:
        for k, v in paths.items():
            out.print(f"{k}: {v}")


@app.command()
def demo(home: Home = None, minutes: Annotated[float, typer.Option(help="Length of the synthetic clip.")] = 1.0,
         seed: Annotated[int, typer.Option(help="Synthetic world seed.")] = 0, json_out: Json = False) -> None:
    """End to end, offline: a synthetic clip -> memories -> questions answered from memory."""
    from edge_agent.demo import run_demo

    cfg = _config(home)
    _check_home(cfg)
    result = run_demo(cfg, minutes=minutes, seed=seed, console=None if json_out else out)
    if json_out:
        _print_json(result)


@app.command()
def doctor(device: Annotated[bool, typer.Option("--device", help="Also the device: GPU offload and layers, RAM and "
                                                "disk against the model profile, cameras, thermal, power.")] = False,
           home: Home = None, config: ConfigFile = None, sets: Sets = None, json_out: Json = False) -> None:
    """Check the installation: libraries, model files, store, embedder (and with --device the device itself)."""
    from edge_agent.doctor import device_report, run_checks

    cfg = _config(home, config, sets)
    report = device_report(cfg) if device else None
    checks = report["checks"] if report else run_checks(cfg)
    if json_out:
        _print_json(report if report else checks)  # --device: every fact, "not present" where none, + "checks"
    else:
        if report:
            from edge_agent.device.facts import summary_lines

            for ok, name, detail in summary_lines(report):
                mark = {True: "[green]ok[/green]", False: "[red]!![/red]", None: "[dim]--[/dim]"}[ok]
                out.print(f"{mark} {name}: ", end="")
                out.print(detail, markup=False, highlight=False)
        for c in checks:
            mark = "[green]ok[/green]" if c["ok"] else "[red]!![/red]"
            out.print(f"{mark} {c['name']}: {c['detail']}")
    if not all(c["ok"] for c in checks if c.get("required", True)):
        raise typer.Exit(1)


@app.command("eval")
def eval_(bench: Annotated[str, typer.Option(help="synthetic, videomme, egolife or egotempo.")] = "synthetic",
          data: Annotated[Optional[Path], typer.Option(help="Benchmark data folder (synthetic: rendered if absent).")] = None,
          seed: Annotated[int, typer.Option(help="Synthetic world seed; also the bootstrap seed.")] = 0,
          minutes: Annotated[float, typer.Option(help="Synthetic clip length.")] = 2.0,
          compare: Annotated[Optional[list[str]], typer.Option(
              help="A writer config to evaluate: baseline, ADAPTER_ID or NAME=ADAPTER_ID. Repeat to compare.")] = None,
          max_questions: Annotated[Optional[int], typer.Option(callback=_positive_id,
                                                               help="Evaluate at most this many questions.")] = None,
          judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint for grading open answers.")] = None,
          judge_model: Annotated[Optional[str], typer.Option(help="Model name at --judge-url.")] = None,
          judge_key_env: Annotated[Optional[str], typer.Option(help="Environment variable holding the API key.")] = None,
          answerer_url: Annotated[Optional[str], typer.Option(
              help="Answer with this OpenAI-compatible endpoint instead of the device's model (sends questions "
                   "and memories off the device).")] = None,
          answerer_model: Annotated[Optional[str], typer.Option(help="Model name at --answerer-url.")] = None,
          answerer_key_env: Annotated[Optional[str], typer.Option(
              help="Environment variable holding the answerer's API key.")] = None,
          send_off_device: Annotated[bool, typer.Option(
              "--send-off-device", help="Allow --judge-url / --answerer-url on another machine: questions, "
                                        "answers and memories then leave this device.")] = False,
          workers: Annotated[int, typer.Option(min=1, help="Shard the streams over this many local Ray workers.")] = 1,
          ray_address: Annotated[Optional[str], typer.Option(help="Shard over this Ray cluster instead.")] = None,
          report: Annotated[Optional[Path], typer.Option(help="Write report.md, results.json and charts here.")] = None,
          home: Home = None, settings: ConfigFile = None, json_out: Json = False) -> None:
    """Replay a benchmark through the runtime and score memory-only answers (Acc, Cov, Prec)."""
    from edge_agent.eval.benchmark_run import run_benchmark

    for option, url in (("--judge-url", judge_url), ("--answerer-url", answerer_url)):
        if url and not _is_loopback(url) and not send_off_device:
            raise ConfigError(f"{option} {url!r}: sends the benchmark's questions, answers and memories off this "
                              "device; add --send-off-device to allow it (a server on 127.0.0.1 needs no flag)")
    results = run_benchmark(_config(home, settings), bench, data=data, seed=seed, minutes=minutes,
                       configs=compare or ["baseline"], max_questions=max_questions, judge_url=judge_url,
                       judge_model=judge_model, judge_key_env=judge_key_env, report_dir=report,
                       console=err, progress=True, workers=workers, ray_address=ray_address,
                       answerer_url=answerer_url, answerer_model=answerer_model,
                       answerer_key_env=answerer_key_env)
    if json_out:
        _print_json(results)
        return
    from edge_agent.eval.report import markdown_report

    out.print(markdown_report(results), markup=False, highlight=False, soft_wrap=True)


@app.command()
def adapt(home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Phase Two: learn from feedback which memories matter (DPO on the layer-22 steering vector)."""
    from edge_agent.adapt.job import run_adapt_job
    from edge_agent.models import resolve
    from edge_agent.qa.embed import open_embedder
    from edge_agent.store import Store
    from edge_agent.vlm.factory import open_backend, open_judge

    cfg = _config(home, config)
    _check_home(cfg)
    model = resolve(cfg.model.name, cfg.home)
    if model.hf_dir is None or not model.hf_dir.is_dir():
        hint = f"; run: edge-agent models pull {model.name} --with-checkpoint" if model.hf_repo else ""
        raise ModelError(f"model {model.name!r}: Phase Two trains against the full-precision Hugging Face "
                         f"checkpoint, and none is installed in {str(model.model_path.parent / 'hf')!r}{hint}")
    from edge_agent.adapt.identity import check_checkpoint
    from edge_agent.adapt.job import check_ready

    embedder = open_embedder(cfg)
    check_ready(cfg, embedder)  # torch, transformers, MiniLM: one-line errors before anything loads
    identity = check_checkpoint(model.model_path, model.hf_dir, model.expected_hash, cache_dir=cfg.cache_dir)
    with ExitStack() as stack:
        store = stack.enter_context(Store.open(cfg.db_path))
        backend = stack.enter_context(open_backend(cfg))
        # a model that ships a judge (or a reader) judges with it: trained on the judge prompt, the writer not
        judge = open_judge(cfg)
        if judge is not None:
            stack.callback(judge.close)
        status = stack.enter_context(err.status("adapting ..."))
        # the llama.cpp model is closed while the checkpoint trains, and reopened for the compliance check
        summary = run_adapt_job(store, cfg, model.hf_dir, backend, embedder,
                                progress=lambda stage, info: status.update(f"adapt: {stage} {info}"),
                                reopen=lambda: open_backend(cfg), judge=judge)
    summary["checkpoint_identity"] = identity["method"]
    rw = summary.get("reward") or {}
    if rw.get("judge_fallback"):
        valid = rw["judge_consistent"] + rw["judge_disagreed"] + rw["judge_ties"]
        err.print(f"note: the local judge named the same memory in both orderings in {rw['judge_consistent']} of "
                  f"{valid} comparisons; pairs were decided by embedding relevance (adapt.reward.rule = auto)")
    if json_out:
        _print_json(summary)
    else:
        out.print(f"{summary['status']}: {summary['reason']}" +
                  (f" (adapter {summary['adapter_id']})" if summary.get("adapter_id") else ""))


@adapter_app.command("list")
def adapter_list(home: Home = None, json_out: Json = False) -> None:
    """Adapters with their status, metrics and provenance."""
    from edge_agent.adapt.registry import AdapterRegistry

    cfg = _config(home)
    _check_home(cfg)
    with AdapterRegistry.open(cfg) as registry:
        rows = registry.list()
    if json_out:
        _print_json(rows)
        return
    for r in rows:
        out.print(f"{r['id']} {r['status']:<11} {r.get('reason') or ''}", markup=False)
    if not rows:
        err.print("no adapters yet: give feedback on answers, then run `edge-agent adapt`")


@adapter_app.command("import")
def adapter_import(file: Annotated[Path, typer.Argument(help="A steering vector: .safetensors or a llama.cpp "
                                                          "control-vector .gguf")],
                   activate: Annotated[bool, typer.Option(help="Make it the active adapter.")] = False,
                   home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Register a steering vector made elsewhere, after checking it fits the configured model."""
    from edge_agent.adapt.registry import AdapterRegistry
    from edge_agent.vlm.factory import open_backend

    cfg = _config(home, config)
    _check_home(cfg)
    with open_backend(cfg, with_vision=False) as backend, AdapterRegistry.open(cfg) as registry:
        row = registry.import_vector(file, backend, activate=activate)
    if json_out:
        _print_json(row)
    else:
        out.print(f"adapter {row['id']} registered ({row['status']})")


@adapter_app.command("activate")
def adapter_activate(adapter_id: AdapterId, home: Home = None) -> None:
    """Make an adapter the one the writer uses (picked up between segments, no restart)."""
    from edge_agent.adapt.registry import AdapterRegistry

    cfg = _config(home)
    _check_home(cfg)
    with AdapterRegistry.open(cfg) as registry:
        registry.activate(adapter_id)
    out.print(f"adapter {adapter_id} active")


@adapter_app.command("rollback")
def adapter_rollback(home: Home = None) -> None:
    """Return to the adapter that was active before the current one (or to none)."""
    from edge_agent.adapt.registry import AdapterRegistry

    cfg = _config(home)
    _check_home(cfg)
    with AdapterRegistry.open(cfg) as registry:
        row = registry.rollback()
    out.print(f"adapter {row['id']} active" if row else "no adapter active (base model)")


@adapter_app.command("export")
def adapter_export(adapter_id: AdapterId, out_file: Annotated[Path, typer.Option("--out", help=".gguf (llama.cpp control "
                                                                         "vector) or .safetensors")],
                   home: Home = None) -> None:
    """Write an adapter as a llama.cpp control vector (.gguf, for llama-cli --control-vector) or safetensors."""
    from edge_agent.adapt.registry import AdapterRegistry

    if out_file.is_dir():
        raise ConfigError(f"--out {str(out_file)!r}: is a folder; name the file to write (.gguf or .safetensors)")
    if out_file.parent.exists() and not out_file.parent.is_dir():
        raise ConfigError(f"--out {str(out_file)!r}: {str(out_file.parent)!r} is not a folder")
    cfg = _config(home)
    _check_home(cfg)
    with AdapterRegistry.open(cfg) as registry:
        path = registry.export(adapter_id, out_file)
    out.print(f"wrote {path}")


@app.command()
def bench(quick: Annotated[bool, typer.Option(help="Small sizes: about a minute on the tiny model.")] = False,
          shape: Annotated[Optional[str], typer.Option(
              help="Instead: a random-weight model of this real shape (qwen3-vl-2b) at its shipped capture "
                   "settings; built once into <home>/bench/shapes/ (minutes of CPU), then measured.")] = None,
          home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Measure speed and memory on this device, as ratios within one run (frame cache, merging, ingest, ask)."""
    from rich.progress import Progress
    from rich.table import Table

    cfg = _config(home, config)
    if shape is not None:
        if quick:
            raise ConfigError("--shape is a bench of its own (it builds a full-size model); drop --quick")
        from edge_agent.bench_shape import SHAPE_STAGES as STAGES
        from edge_agent.bench_shape import run_shape_bench
        from edge_agent.bench_shape import shape_summary_rows as summary_rows

        def runner(progress):
            return run_shape_bench(cfg, shape, progress=progress)
    else:
        from edge_agent.bench import STAGES, run_bench, summary_rows

        def runner(progress):
            return run_bench(cfg, quick=quick, progress=progress)

    name = "bench --shape" if shape else "bench"
    with Progress(console=err, disable=json_out) as progress:
        task = progress.add_task(name, total=len(STAGES))
        result = runner(lambda stage: progress.update(task, description=f"{name}: {stage}",
                                                      completed=STAGES.index(stage)))
        progress.update(task, completed=len(STAGES))
    if json_out:
        _print_json(result)
        return
    table = Table("measure", "raw", "ratio")
    for row in summary_rows(result):
        table.add_row(*(str(x) for x in row))
    out.print(table)


@config_app.command("show")
def config_show(home: Home = None, config: ConfigFile = None, sets: Sets = None, json_out: Json = False) -> None:
    """Every setting with its effective value, where that value came from, and what it does."""
    from rich.table import Table

    from edge_agent.config import describe

    cfg = _config(home, config, sets)
    rows = describe(cfg)
    if json_out:
        _print_json({"home": str(cfg.home), "settings": rows})
        return
    table = Table("setting", "value", "source", "help", title=f"home {cfg.home}")
    for r in rows:
        table.add_row(r["name"], repr(r["value"]), r["source"], r["help"])
    out.print(table)


# ---------------------------------------------------------------------------------------------------------------
# Service (edge_agent/device/service.py)
# ---------------------------------------------------------------------------------------------------------------
UserUnit = Annotated[bool, typer.Option("--user", help="A user service (~/.config/systemd/user) instead of a "
                                                       "system one (/etc/systemd/system, needs root).")]


@service_app.command("install")
def service_install(user: UserUnit = False,
                    no_start: Annotated[bool, typer.Option("--no-start", help="Enable for boot, do not start now.")] = False,
                    print_only: Annotated[bool, typer.Option("--print", help="Print the unit files, change nothing.")] = False,
                    home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Write and enable the systemd units: `run` on service.source at boot, and the idle-time adapt timer."""
    from edge_agent.device import service

    cfg = _config(home, config)
    if print_only:
        units = service.render_units(cfg, user=user, systemd=service.systemd_version())
        if json_out:
            _print_json(units)
        else:
            for name, text in units.items():
                sys.stdout.write(f"# {name}\n{text}\n")  # verbatim: a console would wrap long lines
        return
    result = service.install(cfg, user=user, start=not no_start)
    if json_out:
        _print_json(result)
        return
    out.print(f"installed {', '.join(result['installed'])}" + ("" if no_start else "; started"), markup=False)
    for note in result["notes"]:
        err.print(f"note: {note}", markup=False)


@service_app.command("uninstall")
def service_uninstall(user: UserUnit = False, home: Home = None, json_out: Json = False) -> None:
    """Stop and disable the service and timer, and remove their unit files (the data folder stays)."""
    from edge_agent.device import service

    result = service.uninstall(_config(home), user=user)
    if json_out:
        _print_json(result)
    else:
        out.print(f"removed {', '.join(result['removed']) or 'nothing (not installed)'}", markup=False)


@service_app.command("status")
def service_status(user: UserUnit = False, home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Running or not, segments behind, drops and degradations in the last hour, last memory, adapter, disk."""
    from edge_agent.device import service

    st = service.status(_config(home, config), user=user)
    if json_out:
        _print_json(st)
        return
    hour = st.get("last_hour") or {}
    disk = st.get("disk") or {}
    last = st.get("last_memory_at")
    lines = [
        f"service: {'running' if st['running'] else 'not running'} ({st['units'][service.RUN_UNIT]['active']}, "
        f"{st['units'][service.RUN_UNIT]['enabled']}); adapt timer {st['units'][service.ADAPT_TIMER]['active']}",
        f"segments behind: {st['segments_behind'] if st['segments_behind'] is not None else 'unknown'}"
        f" (keep-up level {st['keepup_level'] if st['keepup_level'] is not None else '-'})",
        f"last hour: {hour.get('dropped_segments', 0)} segments dropped, {hour.get('degradations', 0)} degradations "
        f"({hour.get('degraded_segments', 0)} segments degraded), {hour.get('recoveries', 0)} recoveries",
        f"last memory: {_clock(last) if last else 'none'}",
        f"active adapter: {st.get('active_adapter') or 'none (base model)'}",
        f"disk: {disk.get('used_bytes', 0) / 2**20:.1f} MiB used of "
        + (f"{disk['max_bytes'] / 2**20:.1f} MiB budget" if disk.get("max_bytes") else "no budget (storage.max_bytes)"),
    ]
    for line in lines:
        out.print(line, markup=False, highlight=False)


@service_app.command("logs")
def service_logs(user: UserUnit = False,
                 lines: Annotated[int, typer.Option("--lines", "-n", min=1, help="How many lines.")] = 100,
                 follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new lines.")] = False) -> None:
    """The service's and the adapt job's journal (journalctl)."""
    from edge_agent.device import service

    code = service.logs(user=user, lines=lines, follow=follow)
    if code:
        raise typer.Exit(code)


@service_app.command("adapt-if-idle", hidden=True)
def service_adapt_if_idle(home: Home = None, config: ConfigFile = None) -> None:
    """The adapt timer's job: `edge-agent adapt` when idle and on AC power; prints what it decided (JSON)."""
    from edge_agent.device import service

    result = service.adapt_if_idle(_config(home, config))
    _print_json(result)
    if result["ran"] and result["returncode"]:
        raise typer.Exit(result["returncode"])


@train_app.command("phase-one")
def train_phase_one(config: Annotated[Path, typer.Option("--config", help="Phase One TOML (configs/phase_one/).")],
                    output: Annotated[Optional[Path], typer.Option(
                        "--output", help="Run folder; re-running continues from its checkpoints.")] = None,
                    json_out: Json = False) -> None:
    """GSPO on the memory writer with the paper's rewards (TRL + accelerate), then export to GGUF for the device."""
    from rich.progress import Progress

    from edge_agent.train.phase_one import run_phase_one

    with Progress(console=err, disable=json_out) as bar:
        task = bar.add_task("phase one", total=None)
        summary = run_phase_one(config, output, progress=lambda stage, done, total: bar.update(
            task, description=f"phase one: {stage}", completed=done, total=total))
    if json_out:
        _print_json(summary)
    else:
        out.print(json.dumps(summary, indent=2, default=str), markup=False, highlight=False)


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------
@models_app.command("list")
def models_list(home: Home = None, json_out: Json = False) -> None:
    """Known models and whether they are installed."""
    from edge_agent.models import list_models

    rows = list_models(_config(home).home)
    if json_out:
        _print_json(rows)
        return
    for r in rows:
        out.print(f"{'[green]installed[/green]' if r['installed'] else '[dim]missing[/dim]  '} {r['name']}: "
                  f"{r.get('description', '')}")


@models_app.command("pull")
def models_pull(name: Annotated[str, typer.Argument(help="A catalog name (`edge-agent models list`).")],
                with_checkpoint: Annotated[bool, typer.Option(
                    "--with-checkpoint", help="Also download the full-precision checkpoint into <home>/models/"
                                              "NAME/hf (what Phase Two, `edge-agent adapt`, trains against).")] = False,
                accept_sha: Annotated[Optional[list[str]], typer.Option(
                    "--accept-sha", help="Accept a file whose sha256 differs from the catalog's (the value the "
                                         "mismatch error printed). Repeat for each file.")] = None,
                home: Home = None) -> None:
    """Download a catalog model (the only command that uses the network), verifying checksums."""
    from edge_agent.models import pull

    model = pull(name, _config(home).home, with_checkpoint=with_checkpoint, accept_sha=tuple(accept_sha or ()))
    out.print(f"{name} -> {model.model_path.parent}" + (f" (checkpoint {model.hf_dir})" if model.hf_dir else ""))


@models_app.command("make-tiny")
def models_make_tiny(out_dir: Annotated[Path, typer.Option("--out", help="Folder to write hf/, model.gguf, mmproj.gguf.")],
                     seed: Annotated[int, typer.Option(help="Weight and tokenizer seed.")] = 0) -> None:
    """Build a seeded tiny Qwen3-VL (transformers) and export it to GGUF: for tests and experiments."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {str(out_dir)!r}: exists and is not a folder")
    _writable_out(out_dir)
    _require("torch", "transformers", what="models make-tiny", install="pip install 'edge-agent[adapt]'")
    from edge_agent.export import make_tiny

    paths = make_tiny(out_dir, seed=seed)
    out.print(f"tiny model in {out_dir} ({', '.join(Path(p).name for p in paths)})")


@models_app.command("export")
def models_export(hf_dir: Annotated[Path, typer.Argument(help="A Hugging Face Qwen3-VL checkpoint folder.")],
                  out_dir: Annotated[Path, typer.Option("--out", help="Folder for model.gguf + mmproj.gguf.")],
                  outtype: Annotated[str, typer.Option(help="f32, f16 or q8_0")] = "f16") -> None:
    """Export a Hugging Face Qwen3-VL checkpoint to model.gguf + mmproj.gguf."""
    _writable_out(out_dir)
    from edge_agent.export import export_hf

    model, mmproj = export_hf(hf_dir, out_dir, outtype)
    out.print(f"wrote {model} and {mmproj}")


@models_app.command("quantize")
def models_quantize(src: Annotated[Path, typer.Argument(help="The GGUF to quantize (f32/f16).")],
                    dst: Annotated[Path, typer.Argument(help="Where to write the quantized GGUF.")],
                    type_: Annotated[str, typer.Option("--type", help="Q4_K_M, Q5_K_M or Q8_0.")] = "Q4_K_M",
                    imatrix: Annotated[Optional[Path], typer.Option(help="Importance matrix (llama-imatrix GGUF).")] = None
                    ) -> None:
    """Quantize a GGUF (Q4_K_M, Q5_K_M, Q8_0) through llama.cpp."""
    from edge_agent.export import quantize

    _writable_out(dst, "OUT.gguf", folder=False)
    quantize(src, dst, type_, imatrix=imatrix)
    out.print(f"wrote {dst}")


def duplicate_option(args: list[str]) -> str | None:
    """Why the command line gives one option twice (`--since 1 --since 2`, `--correct --wrong`), else None.

    Click silently keeps the last value; a wearer who typed two values meant something, so we refuse. Options
    declared repeatable (`--option`, `--compare`) may repeat. Walks the tokens with the command's own option
    table, so a value that looks like an option (`--answer --wrong`) is read as the value it is.
    """
    cmd = typer.main.get_command(app)
    i = 0
    while isinstance(getattr(cmd, "commands", None), dict):  # a group: descend into the named subcommand
        while i < len(args) and args[i].startswith("-"):
            i += 1  # the groups here take only --help-like flags
        if i >= len(args) or args[i] not in cmd.commands:
            return None
        cmd, i = cmd.commands[args[i]], i + 1
    options = {name: p for p in cmd.params if getattr(p, "param_type_name", "") == "option"
               for name in (*p.opts, *p.secondary_opts)}
    seen: dict[str, tuple[str, str | None]] = {}
    while i < len(args):
        token = args[i]
        if token == "--":
            break
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        p = options.get(name)
        i += 1
        if p is None:
            continue
        value: str | None = None
        if not p.is_flag and not p.count:
            value = inline if eq else (args[i] if i < len(args) else None)
            i += 0 if eq else 1
        if p.multiple or p.count:
            continue
        if p.name in seen:
            first, first_value = seen[p.name]
            if value is None:
                return f"{first} and {name} both given; give one" if first != name else f"{name} given twice"
            return f"option {name} given twice ({first_value!r}, then {value!r}); give it once"
        seen[p.name] = (name, value)
    return None


class _StopOnCtrlC:
    """`run`'s Ctrl-C: the first stops ingest (KeyboardInterrupt, which run_source turns into a clean stop);
    a second, while the model and store close, quits at once with one line (all commits are durable).

    A KeyboardInterrupt raised inside a C callback (llama.cpp's log hook) would be printed as "Exception
    ignored" and lost, so there the first Ctrl-C only sets a flag, and the next segment boundary stops.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> "_StopOnCtrlC":
        import signal

        try:
            self._previous = signal.signal(signal.SIGINT, self._first)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        _exit_now_on_sigint()  # shutdown from here on: a Ctrl-C quits without a traceback

    def _first(self, signum, frame) -> None:
        import signal

        self.requested = True
        signal.signal(signal.SIGINT, self._again)
        while frame is not None:
            if frame.f_code.co_name == "_cb" and frame.f_code.co_filename.endswith("llama_cpp.py"):
                return  # inside the C log callback: stop at the segment boundary instead
            frame = frame.f_back
        raise KeyboardInterrupt

    @staticmethod
    def _again(signum, frame) -> None:
        err.print("error: interrupted again while stopping; everything committed so far is kept", markup=False)
        os._exit(130)

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


def _exit_now_on_sigint() -> None:
    """From here on a Ctrl-C ends the process at once (exit 130), without an "Exception ignored" traceback:
    everything is committed, only interpreter shutdown (thread joins, finalizers) is left."""
    import signal

    try:
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    except ValueError:  # not the main thread (an embedding application): leave signals alone
        pass


def _click_exception() -> type[Exception]:
    """The base of click's usage errors, in the click typer runs on (typer >= 0.29 vendors `typer._click`)."""
    try:
        from typer._click.exceptions import ClickException
    except ImportError:  # older typer: the click package itself
        from click.exceptions import ClickException
    return ClickException


def main() -> None:
    # Everything edge-agent writes is owner-only (0700 folders, 0600 files), whoever creates the home first
    # (`demo`, `synth`, `models pull`, the eval judge cache): it is the wearer's life.
    os.umask(0o077)
    # OpenCV/FFmpeg warn on stderr about every broken input; our own errors say what matters.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")  # FFmpeg's own log: panics only

    def fail(message: str, code: int) -> None:
        err.print(f"error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)
        _exit_now_on_sigint()
        sys.exit(code)

    code = 0
    try:
        dup = duplicate_option(sys.argv[1:])
        if dup:
            raise ConfigError(dup)
        code = app(standalone_mode=False)
    except EdgeAgentError as e:
        fail(str(e), e.exit_code)
    except _click_exception() as e:
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare group: its help, as in standalone mode
            e.show()
            code = e.exit_code
        else:  # a bad option value, an unknown option or command: one line naming it
            fail(e.format_message(), e.exit_code)
    except typer.Abort:
        fail("interrupted", 130)
    except OSError as e:  # the system refused (disk full, read-only folder, a file where a folder belongs)
        what = f"{e.filename!r}: " if e.filename else ""
        fail(f"{what}{e.strerror or e}", 1)
    _exit_now_on_sigint()
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
