"""Result documents found under the folders analyze and report search: each read once, the
ones that do not read left out with why, so a report says what it could not use."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")


def read_found(files: Iterable[Path], read: Callable[[Path], T | None], unreadable: type[Exception],
               what: str) -> tuple[list[tuple[Path, T]], list[str]]:
    """(file, document) for each file that reads (`read` takes its folder), in path order, and
    a line per file left out."""
    docs: list[tuple[Path, T]] = []
    left_out: list[str] = []
    for file in sorted(map(Path, files)):
        try:
            doc = read(file.parent)
        except unreadable as err:
            left_out.append(f"{file}: does not read as a {what} ({err})")
            continue
        if doc is not None:
            docs.append((file, doc))
    return docs, left_out
