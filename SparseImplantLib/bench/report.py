"""Writing benchmark results: JSON for machines, a Markdown table for people, printed as well."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Dict, List, Sequence

import torch

from ..outputs import atomic_write


def machine() -> Dict[str, object]:
    import os

    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "cuda": torch.cuda.is_available(), "processor": platform.processor() or platform.machine()}


def markdown_table(headers: Sequence[str], rows: List[Sequence[object]]) -> str:
    def cell(value: object) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(output_dir: Path, name: str, data: dict, table: str, notes: str = "") -> None:
    output_dir = Path(output_dir)
    data = {"machine": machine(), **data}
    atomic_write(output_dir / f"{name}.json", lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))
    text = f"# Benchmark: {name}\n\n{table}\n\n{notes}".rstrip() + "\n"
    atomic_write(output_dir / f"{name}.md", lambda tmp: tmp.write_text(text))
    print(table)
    if notes:
        print(notes)
    print(f"\nwritten: {output_dir / (name + '.json')}, {output_dir / (name + '.md')}")
