"""What the demo prints: lines in all, lines genray wrote, and lines at warning or error level.

    .venv/bin/python benchmarks/console_lines.py              # the demo up to the champion (--no-serve)
    .venv/bin/python benchmarks/console_lines.py --verbose    # the same with everything shown

Runs `python -m genray.pipelines.demo --no-serve` in a fresh project home, captures stdout and
stderr together, and sorts every line: genray's own (its step headers, run lines, progress bars,
eval lines, trial lines and summaries, which all come from genray's code) against everything
else (Ray's and the workers' prefixed lines, library log records, Python warnings). Writes
docs/console_lines.json.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Output that is not genray's: Ray's per-process prefixes, log records with a level, warnings.
FOREIGN = re.compile(r"^\s*\((\w+ )?pid=|^\s*\(\w+(Worker|Actor|Controller|Proxy)|^\d{4}-\d\d-\d\d[ T]\d\d:\d\d|"
                     r"^(INFO|WARNING|ERROR|DEBUG)\b|Warning:|^\s*warnings\.warn|Traceback|^\s+File \"|"
                     r"^\s*[╭│╰├┌└]|^View detailed results here|^To visualize your results")
LEVEL = re.compile(r"\b(WARNING|WARN|ERROR|CRITICAL|Traceback)\b|Warning:|\berror:", re.I)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the demo's)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "console_lines.json")
    args = p.parse_args()
    cmd = [sys.executable, "-m", "genray.pipelines.demo", "--no-serve"] + (["--verbose"] if args.verbose else []) \
        + (["--steps", str(args.steps)] if args.steps else [])
    with tempfile.TemporaryDirectory() as home:
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              env={**__import__("os").environ, "GENRAY_HOME": home})
        wall = time.perf_counter() - started
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    foreign = [line for line in lines if FOREIGN.search(line)]
    leveled = [line for line in lines if LEVEL.search(line)]
    result = {"command": " ".join(["python", *cmd[1:]]), "exit_code": proc.returncode, "wall_s": round(wall, 1),
              "lines": len(lines), "genray_lines": len(lines) - len(foreign),
              "genray_share": round((len(lines) - len(foreign)) / max(1, len(lines)), 3),
              "warning_or_error_lines": len(leveled), "examples_foreign": foreign[:10], "examples_leveled": leveled[:10]}
    print(json.dumps(result, indent=2))
    if not args.verbose:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
