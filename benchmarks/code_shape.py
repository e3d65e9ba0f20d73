"""The shape of the code: file count, the largest files, and import statements inside functions,
over pipelines/ and components/ of a tree (so two trees compare).

    git worktree add /tmp/old b290118
    .venv/bin/python benchmarks/code_shape.py /tmp/old
    .venv/bin/python benchmarks/code_shape.py .
"""
import ast
import sys
from pathlib import Path

root = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
files = [p for d in ("pipelines", "components") for p in (root / d).rglob("*.py")]
largest = sorted(((len(p.read_text().splitlines()), str(p.relative_to(root))) for p in files), reverse=True)[:3]
inner = 0
for p in files:
    seen = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)) and id(sub) not in seen:
                    seen.add(id(sub))
                    inner += 1
print(f"{len(files)} files; largest: {largest}; import statements inside functions: {inner}")
