"""JSON-lines files: one object per line, with errors that name the file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

ErrorFactory = Callable[[Path, int, str], Exception]


def _value_error(path: Path, lineno: int, problem: str) -> Exception:
    return ValueError(f"{path}:{lineno}: {problem}")


def iter_jsonl(path: str | os.PathLike, *, comments: bool = False,
               error: ErrorFactory = _value_error) -> Iterator[tuple[int, dict]]:
    """Yield (line number, object) for every non-blank line of `path` (lines starting with '#' skipped if `comments`).

    A line that is not valid JSON, or not a JSON object, raises `error(path, line number, problem)`
    (default: ValueError "path:line: problem").
    """
    path = Path(path)
    for lineno, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or (comments and line.startswith("#")):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(path, lineno, f"not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise error(path, lineno, f"expected a JSON object, got {type(record).__name__}")
        yield lineno, record
