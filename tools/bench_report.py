"""Print the table of an `edge-agent bench --json` result: python tools/bench_report.py RESULT.json (or - for stdin).

Ratios are the numbers to compare between machines and versions; absolute times are context for this run only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edge_agent.bench import summary_rows


def format_table(result: dict) -> str:
    env = result.get("environment", {})
    head = (f"model {env.get('model_name', '?')} ({str(env.get('model_hash', ''))[:12]}), "
            f"{env.get('cpu_count', '?')} CPUs, {env.get('n_threads', '?')} threads, llama-cpp-python "
            f"{env.get('llama_cpp_python', '?')}, GPU offload {'yes' if env.get('gpu_offload_supported') else 'no'}, "
            f"{'quick' if env.get('quick') else 'full'} run in {result.get('seconds', '?')} s")
    rows = [("measure", "raw", "ratio")] + summary_rows(result)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [head, ""]
    for n, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        return 2
    text = sys.stdin.read() if argv[0] == "-" else Path(argv[0]).read_text(encoding="utf-8")
    print(format_table(json.loads(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
