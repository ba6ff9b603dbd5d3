"""Shared helpers for the benchmark scripts: environment description and docs/benchmarks.md sections."""

from __future__ import annotations

import platform
import re
import sys
from pathlib import Path

import torch

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def machine_line(device: str = "cpu") -> str:
    """One line naming the hardware and library versions a table was measured with.

    :param device: the torch device the numbers were measured on ("cpu" or "cuda")
    :return: e.g. ``"cpu: x86_64, 2 threads, torch 2.13.0+cpu, Python 3.11.7"``
    """
    if device.startswith("cuda") and torch.cuda.is_available():
        where = torch.cuda.get_device_name(0)
    else:
        where = f"{platform.machine()}, {torch.get_num_threads()} threads"
    return f"{device}: {where}, torch {torch.__version__}, Python {sys.version.split()[0]}"


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """Render a GitHub Markdown table.

    :param headers: column titles
    :param rows: one list of cell strings per row, each as long as ``headers``
    :return: the table text, ending in a newline
    """
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> Path:
    """Replace (or append) the section ``name`` of docs/benchmarks.md, leaving the other benchmarks' sections alone.

    The section is delimited by ``<!-- BEGIN name -->`` and ``<!-- END name -->`` markers.

    :param name: section identifier, e.g. "encoders"
    :param body: Markdown text of the section (heading, command, table)
    :param path: the Markdown file to update
    :return: the path written
    """
    begin, end = f"<!-- BEGIN {name} -->", f"<!-- END {name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}\n"
    header = "# Benchmarks\n\nEvery table below was written by the command shown above it.\n\n"
    text = path.read_text() if path.exists() else header
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end) + r"\n?", re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
