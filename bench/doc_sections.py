"""Writing one benchmark's section of docs/BENCHMARKS.md between its markers, leaving every other section alone."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TITLE = "# Benchmarks\n"


def replace_section(path: Path, start: str, end: str, body: str) -> None:
    """Put ``start``, ``body`` and ``end`` where the markers are (or at the end), re-reading the file just before:
    other benchmarks write their own sections. Written to a temporary file and renamed, so a reader never sees half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = path.read_text() if path.exists() else TITLE
    block = f"{start}\n{body.strip(chr(10))}\n{end}"
    first, last = text.find(start), text.find(end)
    if first != -1 and last > first:
        text = text[:first] + block + text[last + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
