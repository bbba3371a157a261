"""`edge-agent demo`: the whole product offline on the embedded default — synthetic clip, memories, answers."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from edge_agent.config import Config
from edge_agent.store import Store

_DEMO_QUESTIONS = 5


def run_demo(cfg: Config, minutes: float = 1.0, seed: int = 0, console: Console | None = None) -> dict:
    """Render a clip, remember it, answer a few of its questions from memory, and show it all."""
    from edge_agent.eval.loaders import load_synthetic
    from edge_agent.qa.answer import answer
    from edge_agent.qa.embed import open_embedder
    from edge_agent.runtime import ingest
    from edge_agent.vlm.factory import open_backend, open_reader
    from edge_agent.synth import generate

    say = console.print if console else (lambda *a, **k: None)
    demo_dir = cfg.home / "demo" / f"seed{seed}-{minutes:g}min"
    paths = generate(seed=seed, minutes=minutes, out_dir=demo_dir)
    say(f"[bold]1.[/bold] synthetic clip: {paths['video']}")

    store = Store.open(cfg.db_path)
    backend = open_backend(cfg)
    reader = None
    try:
        reader = open_reader(cfg)
        say(f"[bold]2.[/bold] writing memories with {backend.model_name} ...")
        report = ingest(str(paths["video"]), store, backend, cfg, origin=0.0)
        rows = [m for m in store.memories() if m["stream_id"] == report.stream_id]
        for m in rows[:8]:
            say(f"   [dim]#{m['id']} {m['t_start']:6.1f}s[/dim] {m['text']}")
        if len(rows) > 8:
            say(f"   ... {len(rows) - 8} more")

        questions = load_synthetic(demo_dir).questions[:_DEMO_QUESTIONS]
        say("[bold]3.[/bold] asking questions from memory only")
        embedder = open_embedder(cfg)
        table = Table("question", "answer", "truth", "cited")
        answers = []
        answerer = backend if reader is None else reader
        for q in questions:
            res = answer(store, answerer, q.question, q.lettered_options(), asked_at=q.asked_at, cfg=cfg.qa,
                         until=q.asked_at, embedder=embedder)
            answers.append({"question": q.question, "truth": q.answer, **res})
            truth = f"{q.answer}. {q.options['ABCD'.index(q.answer)]}"
            given = f"{res['choice']}. {res['text']}" if res["choice"] else res["text"]
            table.add_row(q.question, given, truth, ",".join(str(c["id"]) for c in res["citations"]))
        if console:
            console.print(table)
    finally:
        backend.close()
        if reader is not None:
            reader.close()
    correct = sum(a["choice"] == a["truth"] for a in answers)
    say(f"{report.segments_written} memories, {report.segments_failed} unwritten segments; "
        f"{correct}/{len(answers)} answers right. Try: edge-agent ask \"...\" --home {cfg.home}")
    return {"ingest": report.as_dict(), "answers": answers, "correct": correct, "asked": len(answers),
            "video": str(paths["video"])}
