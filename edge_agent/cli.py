"""The `edge-agent` command line: a thin Typer layer over the library; user errors become one-line messages."""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from edge_agent.config import ENV_HOME, Config, load_config
from edge_agent.errors import ConfigError, EdgeAgentError, ModelError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="On-device memory for a wearable camera: watch, remember, answer, learn from feedback.")
models_app = typer.Typer(no_args_is_help=True, help="Model catalog, download, export and quantization.")
adapter_app = typer.Typer(no_args_is_help=True, help="Phase Two steering-vector adapters.")
config_app = typer.Typer(no_args_is_help=True, help="The effective settings.")
app.add_typer(models_app, name="models")
app.add_typer(adapter_app, name="adapter")
app.add_typer(config_app, name="config")

out = Console()
err = Console(stderr=True)

Home = Annotated[Optional[Path], typer.Option("--home", envvar=ENV_HOME, help="Data folder (default ~/.edge-agent).")]
ConfigFile = Annotated[Optional[Path], typer.Option("--config", help="TOML file overriding <home>/config.toml.")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
AdapterId = Annotated[str, typer.Argument(help="An adapter id (`edge-agent adapter list`).")]


def _config(home: Path | None, config_file: Path | None = None) -> Config:
    return load_config(home, config_file)


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
            return time.time() - float(v[:-1]) * units[v[-1]]
        return float(v)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(v)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected epoch seconds, an ISO time or a duration like 10m") from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time, as a wearer would type it
    return dt.timestamp()


def _clock(t: float) -> str:
    from edge_agent.qa.answer import clock  # the same clock the answerer shows the model

    return clock(t)


# ---------------------------------------------------------------------------------------------------------------
# The main job
# ---------------------------------------------------------------------------------------------------------------
@app.command()
def run(source: Annotated[str, typer.Argument(help="Camera index (0), video file, or rtsp:// / http:// URL.")],
        until: Annotated[Optional[float], typer.Option(help="Stop at this many seconds of stream time.")] = None,
        home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Watch a source and write memories into the store until it ends (or --until, or Ctrl-C)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edge_agent.capture import open_source
    from edge_agent.runtime import run_source

    cfg = _config(home, config)
    video = open_source(source, cfg.capture)  # a wrong path fails here, before any progress bar or model load
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[info]}"),
                  TimeElapsedColumn(), console=err, disable=json_out) as progress:
        task = progress.add_task("remembering", total=None, info="")

        def tick(seg, report):
            progress.update(task, advance=1, info=f"t={seg.t_end:.0f}s written={report.segments_written} "
                                                  f"failed={report.segments_failed} dropped={report.frames_dropped}")

        report = run_source(cfg, source, until=until, video=video, on_segment=tick)
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
        until: Annotated[Optional[str], typer.Option(help="Only memories before this time.")] = None,
        home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Answer from the stored memories only, citing them; says "not in memory" when they don't hold it."""
    from edge_agent.qa.answer import answer
    from edge_agent.qa.embed import open_embedder
    from edge_agent.store import Store
    from edge_agent.vlm.factory import open_backend

    cfg = _config(home, config)
    store = Store.open(cfg.db_path)
    backend = open_backend(cfg, with_vision=False)
    result = answer(store, backend, question, option or [], asked_at=time.time(), cfg=cfg.qa,
                    since=parse_time(since, "--since"), until=parse_time(until, "--until"),
                    embedder=open_embedder(cfg))
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
             limit: Annotated[Optional[int], typer.Option(min=1, help="At most this many, newest first.")] = None,
             home: Home = None, json_out: Json = False) -> None:
    """List stored memories."""
    from edge_agent.store import Store

    cfg = _config(home)
    rows = Store.open(cfg.db_path).memories(since=parse_time(since, "--since"), until=parse_time(until, "--until"),
                                            search=search, limit=limit)
    if json_out:
        _print_json(rows)
        return
    for r in rows:
        out.print(f"[dim]#{r['id']} {_clock(r['t_start'])}[/dim] {r['text']}")
    if not rows:
        err.print("no memories")


@app.command()
def feedback(answer_id: Annotated[int, typer.Argument(help="The id `ask` printed.")],
             correct: Annotated[Optional[bool], typer.Option("--correct/--wrong", help="Was the answer right?")] = None,
             answer_text: Annotated[Optional[str], typer.Option("--answer", help="The right answer, if it was wrong.")] = None,
             delete: Annotated[bool, typer.Option("--delete", help="Take back the feedback given on this answer "
                                                                     "(and the training pairs made from it).")] = False,
             home: Home = None, json_out: Json = False) -> None:
    """Tell the device whether an answer was right; Phase Two learns from this."""
    from edge_agent.store import Store

    cfg = _config(home)
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
           all_: Annotated[bool, typer.Option("--all", help="Forget everything.")] = False,
           home: Home = None, json_out: Json = False) -> None:
    """Delete memories (and what was derived from them) in a time range."""
    from edge_agent.store import Store

    if since is None and until is None and not all_:
        raise ConfigError("forget: give --since and/or --until, or --all")
    cfg = _config(home)
    counts = Store.open(cfg.db_path).forget(since=parse_time(since, "--since"), until=parse_time(until, "--until"))
    if json_out:
        _print_json(counts)
    else:
        out.print(", ".join(f"{v} {k}" for k, v in counts.items()) + " deleted")


@app.command()
def synth(seed: Annotated[int, typer.Option(help="World seed.")] = 0,
          minutes: Annotated[float, typer.Option(help="Clip length, 1 to 60 minutes.")] = 1.0,
          out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("synth"),
          json_out: Json = False) -> None:
    """Render a synthetic egocentric clip with its event log and questions."""
    from edge_agent.synth import generate

    paths = generate(seed=seed, minutes=minutes, out_dir=out_dir)
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
    result = run_demo(cfg, minutes=minutes, seed=seed, console=None if json_out else out)
    if json_out:
        _print_json(result)


@app.command()
def doctor(home: Home = None, json_out: Json = False) -> None:
    """Check the installation: libraries, model files, store, embedder."""
    from edge_agent.doctor import run_checks

    checks = run_checks(_config(home))
    if json_out:
        _print_json(checks)
    else:
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
          max_questions: Annotated[Optional[int], typer.Option(min=1, help="Evaluate at most this many questions.")] = None,
          judge_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible endpoint for grading open answers.")] = None,
          judge_model: Annotated[Optional[str], typer.Option(help="Model name at --judge-url.")] = None,
          judge_key_env: Annotated[Optional[str], typer.Option(help="Environment variable holding the API key.")] = None,
          report: Annotated[Optional[Path], typer.Option(help="Write report.md, results.json and charts here.")] = None,
          home: Home = None, settings: ConfigFile = None, json_out: Json = False) -> None:
    """Replay a benchmark through the runtime and score memory-only answers (Acc, Cov, Prec)."""
    from edge_agent.eval.benchmark_run import run_benchmark

    results = run_benchmark(_config(home, settings), bench, data=data, seed=seed, minutes=minutes,
                       configs=compare or ["baseline"], max_questions=max_questions, judge_url=judge_url,
                       judge_model=judge_model, judge_key_env=judge_key_env, report_dir=report,
                       console=err, progress=True)
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
    from edge_agent.vlm.factory import open_backend

    cfg = _config(home, config)
    model = resolve(cfg.model.name, cfg.home)
    if model.hf_dir is None or not model.hf_dir.is_dir():
        raise ModelError(f"model {model.name!r}: Phase Two trains against the full-precision Hugging Face "
                         f"checkpoint, and none is installed beside {model.model_path}")
    with Store.open(cfg.db_path) as store, open_backend(cfg) as backend, err.status("adapting ...") as status:
        summary = run_adapt_job(store, cfg, model.hf_dir, backend, open_embedder(cfg),
                                progress=lambda stage, info: status.update(f"adapt: {stage} {info}"))
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
    with AdapterRegistry.open(cfg) as registry:
        registry.activate(adapter_id)
    out.print(f"adapter {adapter_id} active")


@adapter_app.command("rollback")
def adapter_rollback(home: Home = None) -> None:
    """Return to the adapter that was active before the current one (or to none)."""
    from edge_agent.adapt.registry import AdapterRegistry

    cfg = _config(home)
    with AdapterRegistry.open(cfg) as registry:
        row = registry.rollback()
    out.print(f"adapter {row['id']} active" if row else "no adapter active (base model)")


@adapter_app.command("export")
def adapter_export(adapter_id: AdapterId, out_file: Annotated[Path, typer.Option("--out", help=".gguf (llama.cpp control "
                                                                         "vector) or .safetensors")],
                   home: Home = None) -> None:
    """Write an adapter as a llama.cpp control vector (.gguf, for llama-cli --control-vector) or safetensors."""
    from edge_agent.adapt.registry import AdapterRegistry

    cfg = _config(home)
    with AdapterRegistry.open(cfg) as registry:
        path = registry.export(adapter_id, out_file)
    out.print(f"wrote {path}")


@app.command()
def bench(quick: Annotated[bool, typer.Option(help="Small sizes: about a minute on the tiny model.")] = False,
          home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Measure speed and memory on this device, as ratios within one run (frame cache, merging, ingest, ask)."""
    from rich.progress import Progress
    from rich.table import Table

    from edge_agent.bench import STAGES, run_bench, summary_rows

    with Progress(console=err, disable=json_out) as progress:
        task = progress.add_task("bench", total=len(STAGES))
        result = run_bench(_config(home, config), quick=quick,
                           progress=lambda stage: progress.update(task, description=f"bench: {stage}",
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
def config_show(home: Home = None, config: ConfigFile = None, json_out: Json = False) -> None:
    """Every setting with its effective value, where that value came from, and what it does."""
    from rich.table import Table

    from edge_agent.config import describe

    cfg = _config(home, config)
    rows = describe(cfg)
    if json_out:
        _print_json({"home": str(cfg.home), "settings": rows})
        return
    table = Table("setting", "value", "source", "help", title=f"home {cfg.home}")
    for r in rows:
        table.add_row(r["name"], repr(r["value"]), r["source"], r["help"])
    out.print(table)


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
                home: Home = None) -> None:
    """Download a catalog model (the only command that uses the network), verifying checksums."""
    from edge_agent.models import pull

    model = pull(name, _config(home).home)
    out.print(f"{name} -> {model.model_path.parent}")


@models_app.command("make-tiny")
def models_make_tiny(out_dir: Annotated[Path, typer.Option("--out", help="Folder to write hf/, model.gguf, mmproj.gguf.")],
                     seed: Annotated[int, typer.Option(help="Weight and tokenizer seed.")] = 0) -> None:
    """Build a seeded tiny Qwen3-VL (transformers) and export it to GGUF: for tests and experiments."""
    from edge_agent.export import make_tiny

    paths = make_tiny(out_dir, seed=seed)
    out.print(f"tiny model in {out_dir} ({', '.join(Path(p).name for p in paths)})")


@models_app.command("export")
def models_export(hf_dir: Annotated[Path, typer.Argument(help="A Hugging Face Qwen3-VL checkpoint folder.")],
                  out_dir: Annotated[Path, typer.Option("--out", help="Folder for model.gguf + mmproj.gguf.")],
                  outtype: Annotated[str, typer.Option(help="f32, f16 or q8_0")] = "f16") -> None:
    """Export a Hugging Face Qwen3-VL checkpoint to model.gguf + mmproj.gguf."""
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

    quantize(src, dst, type_, imatrix=imatrix)
    out.print(f"wrote {dst}")


def main() -> None:
    # OpenCV/FFmpeg warn on stderr about every broken input; our own errors say what matters.
    os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")  # FFmpeg's own log: panics only
    try:
        app()
    except EdgeAgentError as e:
        err.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
