"""The demonstration record and how it is read and validated.

A record: `id`, `prompt` (a string, or chat messages ending with a user turn), `demonstration` (the expert
answer), optional `context` (source text for knowledge tasks), optional `system`. Any other field is kept in
`metadata`. Invalid rows are never dropped silently: each comes back as a `RejectedRecord` naming the file, the
line (JSONL) or row (Parquet), the field and the reason.

Reading is in two steps, both public so other readers (curation) can use them: `read_rows` parses a file's rows
without judging them, and `collect` validates them into a `LoadResult`. `read_rows` takes only regular files, no
larger than `ReadLimits` allow, reads JSONL line by line with a bounded line length (so a huge line or file never
sits in memory whole), skips a UTF-8 byte-order mark and refuses other encodings with one clear error; a line it
cannot parse (bad JSON, too deep, a number too long, a lone surrogate) becomes a rejected row with its line number.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_schema import Config, Range

ROLES = ("system", "user", "assistant")
KNOWN_FIELDS = ("id", "prompt", "demonstration", "context", "system")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
# Characters that print as nothing: a field holding only these (and whitespace) is empty.
INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff\u00ad"))


@dataclass
class ReadLimits(Config):
    """How much one input file may hold; a file or line beyond them is refused while reading, not after."""

    max_file_bytes: int = field(
        default=2**30, metadata={"help": "bytes one demonstrations or eval file may hold (1 GiB)", "range": Range(1)}
    )
    max_line_bytes: int = field(
        default=2**22,
        metadata={
            "help": "bytes one JSONL line may hold (4 MiB: a record with a long context fits, a runaway line does not)",
            "range": Range(1),
        },
    )


@dataclass(frozen=True)
class Demonstration:
    id: str
    prompt: str | tuple[dict[str, str], ...]
    demonstration: str
    context: str | None = None
    system: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The task prompt as chat messages, exactly what the model sees at inference."""
        return chat_messages(self.prompt, self.system)

    @property
    def question(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[-1]["content"]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "prompt": self.prompt if isinstance(self.prompt, str) else list(self.prompt),
            "demonstration": self.demonstration,
        }
        if self.context is not None:
            out["context"] = self.context
        if self.system is not None:
            out["system"] = self.system
        out.update(self.metadata)
        return out


def chat_messages(prompt: str | list | tuple, system: str | None = None) -> list[dict[str, str]]:
    """A prompt (text or messages) and an optional system message as a fresh list of chat messages."""
    turns = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system is not None:
        turns = [{"role": "system", "content": system}] + turns
    return [dict(t) for t in turns]


@dataclass(frozen=True)
class RejectedRecord:
    source: str
    location: str  # "line 7" or "row 3"
    field: str | None
    reason: str
    raw: Any

    def __str__(self) -> str:
        where = f"{self.source}:{self.location}"
        return f"{where}: field '{self.field}': {self.reason}" if self.field else f"{where}: {self.reason}"

    def to_dict(self) -> dict[str, Any]:
        raw = self.raw if isinstance(self.raw, (dict, str)) else repr(self.raw)
        return {
            "source": self.source,
            "location": self.location,
            "field": self.field,
            "reason": self.reason,
            "raw": raw,
        }


@dataclass
class LoadResult:
    accepted: list[Demonstration]
    rejected: list[RejectedRecord]

    def raise_if_rejected(self) -> None:
        if self.rejected:
            more = f" (and {len(self.rejected) - 1} more)" if len(self.rejected) > 1 else ""
            raise DemonstrationError(f"{self.rejected[0]}{more}")


class DemonstrationError(ValueError):
    pass


class InvalidRecord(Exception):
    """A row that is not a valid record: the field at fault (None: the row as a whole) and why."""

    def __init__(self, field_name: str | None, reason: str):
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def validate_record(raw: Any) -> Demonstration:
    """Turn one parsed row into a Demonstration, or raise InvalidRecord naming the field."""
    if not isinstance(raw, dict):
        raise InvalidRecord(None, f"a record must be a JSON object, got {type(raw).__name__}")
    for name in ("id", "prompt", "demonstration"):
        if name not in raw or raw[name] is None:
            raise InvalidRecord(name, "missing required field")
    record_id = raw["id"]
    if isinstance(record_id, bool) or not isinstance(record_id, (str, int)):
        raise InvalidRecord("id", f"must be a string or an integer, got {type(record_id).__name__}")
    record_id = str(record_id).strip()
    if not record_id:
        raise InvalidRecord("id", "must not be empty")

    prompt = validate_prompt(raw["prompt"])
    demonstration = _non_empty_string(raw, "demonstration")
    context = _optional_string(raw, "context")
    system = _optional_string(raw, "system")
    if system is not None and not isinstance(prompt, str) and prompt[0]["role"] == "system":
        raise InvalidRecord("system", "given both as a field and as the prompt's first message")
    metadata = {k: v for k, v in raw.items() if k not in KNOWN_FIELDS}
    return Demonstration(record_id, prompt, demonstration, context, system, metadata)


def _non_empty_string(raw: dict, name: str) -> str:
    value = raw[name]
    if not isinstance(value, str):
        raise InvalidRecord(name, f"must be a string, got {type(value).__name__}")
    if not is_visible(value):
        raise InvalidRecord(name, "must not be empty")
    return value


def is_visible(text: str) -> bool:
    """Whether the text shows anything: not only whitespace and zero-width characters."""
    return bool(text.translate(INVISIBLE).strip())


def _optional_string(raw: dict, name: str) -> str | None:
    if raw.get(name) is None:
        return None
    return _non_empty_string(raw, name)


def validate_prompt(prompt: Any) -> str | tuple[dict[str, str], ...]:
    """A prompt (text, or chat messages ending with a user turn) as the record holds it, or InvalidRecord."""
    if isinstance(prompt, str):
        if not is_visible(prompt):
            raise InvalidRecord("prompt", "must not be empty")
        return prompt
    if hasattr(prompt, "tolist"):  # numpy arrays from Parquet list columns
        prompt = prompt.tolist()
    if not isinstance(prompt, list):
        raise InvalidRecord("prompt", f"must be a string or a list of chat messages, got {type(prompt).__name__}")
    if not prompt:
        raise InvalidRecord("prompt", "the message list is empty")
    messages = []
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) - {"role", "content"} or "role" not in message:
            raise InvalidRecord(f"prompt[{i}]", "must be an object with 'role' and 'content'")
        role, content = message["role"], message.get("content")
        if role not in ROLES:
            raise InvalidRecord(f"prompt[{i}].role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str) or not is_visible(content):
            raise InvalidRecord(f"prompt[{i}].content", "must be a non-empty string")
        if role == "system" and i != 0:
            raise InvalidRecord(f"prompt[{i}].role", "a system message may only come first")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise InvalidRecord(f"prompt[{len(messages) - 1}].role", "the last message must be a user turn")
    return tuple(messages)


def read_rows(
    path: str | Path,
    kind: str = "demonstrations",
    limits: ReadLimits | None = None,
    within: str | Path | None = None,
) -> Iterator[tuple[str, Any, Any]]:
    """The rows of a JSONL or Parquet file, parsed but not validated: (location, parsed row, raw row), where a row
    that cannot be parsed comes back as an InvalidRecord. What no row can come from (a missing file, named as a
    `kind` file; not a regular file; a link out of `within`; too large; another encoding or type) raises
    DemonstrationError at once."""
    path, limits = Path(path), limits or ReadLimits()
    if not path.exists():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    if within is not None and not path.resolve().is_relative_to(Path(within).resolve()):
        raise DemonstrationError(f"{path}: a link to {path.resolve()}, outside {within}, is not read")
    status = os.stat(path)  # follows a symlink: what is read is what it points to
    mode, size = status.st_mode, status.st_size
    if not stat.S_ISREG(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a pipe" if stat.S_ISFIFO(mode) else "a device or socket"
        raise DemonstrationError(f"{path}: {what}, not a regular file")
    if size > limits.max_file_bytes:
        raise DemonstrationError(
            f"{path}: {size} bytes, more than the limit of {limits.max_file_bytes} per file (max_file_bytes)"
        )
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        _check_encoding(path)
        return _jsonl_rows(path, limits.max_line_bytes)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_rows(path)
    raise DemonstrationError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet")


def _check_encoding(path: Path) -> None:
    """Refuse, naming the file, what the line reader would misread: UTF-16/32 and CR-only line endings."""
    with path.open("rb") as handle:
        head = handle.read(1 << 16)
    if head.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in head:
        raise DemonstrationError(f"{path}: UTF-16 or UTF-32 text (or binary data); save it as UTF-8")
    if b"\r" in head and b"\n" not in head and len(head) > head.index(b"\r") + 1:
        raise DemonstrationError(f"{path}: lines end with CR only (old Mac style); convert them to LF or CRLF")


def _jsonl_rows(path: Path, max_line_bytes: int) -> Iterator[tuple[str, Any, Any]]:
    """(location, parsed row, raw text) for each non-blank line; a line longer than the limit is not kept."""
    with path.open("rb") as handle:
        number = 0
        while line := handle.readline(max_line_bytes + 1):
            number += 1
            if len(line) > max_line_bytes and not line.endswith(b"\n"):
                while (rest := handle.readline(1 << 20)) and not rest.endswith(b"\n"):
                    pass  # the rest of the line, read and dropped
                reason = f"line longer than the limit of {max_line_bytes} bytes (max_line_bytes)"
                yield f"line {number}", InvalidRecord(None, reason), line[:200].decode("utf-8", "replace") + "..."
                continue
            if number == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a UTF-8 byte-order mark, as some editors write
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            yield f"line {number}", *_parsed(line)


def _parsed(line: bytes) -> tuple[Any, str]:
    """(the parsed row, or an InvalidRecord saying why not; the line as text)."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as err:
        return InvalidRecord(None, f"not valid UTF-8 (byte {err.start}: {err.reason})"), line.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as err:
        return InvalidRecord(None, f"invalid JSON: {err.msg} at column {err.colno}"), text
    except RecursionError:
        return InvalidRecord(None, "JSON nested too deeply"), text[:200] + "..."
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        return InvalidRecord(None, f"invalid JSON: {err}"), text[:200] + "..."
    try:
        json.dumps(parsed, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:  # "\ud800" parses, but no UTF-8 output can hold it
        return InvalidRecord(None, f"a lone surrogate {err.object[err.start]!r} (\\u escape of half a pair)"), text
    except RecursionError:
        return InvalidRecord(None, "JSON nested too deeply"), text[:200] + "..."
    return parsed, text


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:  # here, not on the first row: a file no row can come from raises at once
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DemonstrationError(f"{path}: not a readable Parquet file ({err})") from None

    def rows() -> Iterator[tuple[str, Any, Any]]:
        for number, row in enumerate(table.to_pylist(), start=1):
            row = {k: v for k, v in row.items() if v is not None}
            yield f"row {number}", row, row

    return rows()


def read_demonstrations(path: str | Path, limits: ReadLimits | None = None) -> LoadResult:
    """Read a JSONL or Parquet file of demonstrations; invalid rows come back in `rejected`."""
    return collect(read_rows(path, limits=limits), source=str(Path(path)))


def collect(rows: Iterable[tuple[str, Any, Any]], source: str) -> LoadResult:
    """Validate rows as `read_rows` yields them: each becomes a Demonstration, or a RejectedRecord saying why."""
    accepted: list[Demonstration] = []
    rejected: list[RejectedRecord] = []
    first_seen: dict[str, str] = {}
    for location, parsed, raw in rows:
        try:
            if isinstance(parsed, InvalidRecord):
                raise parsed
            record = validate_record(parsed)
            if record.id in first_seen:
                raise InvalidRecord("id", f"duplicate id {record.id!r} (first seen at {first_seen[record.id]})")
        except InvalidRecord as invalid:
            rejected.append(RejectedRecord(source, location, invalid.field, invalid.reason, raw))
            continue
        first_seen[record.id] = location
        accepted.append(record)
    return LoadResult(accepted, rejected)


def records_from_dicts(rows: Iterable[dict[str, Any]], source: str = "<memory>") -> LoadResult:
    return collect(((f"row {i}", row, row) for i, row in enumerate(rows, start=1)), source)


def read_jsonl(path: str | Path) -> list[Any]:
    """Every non-blank line of a JSONL file, parsed (no validation: for files this project wrote)."""
    with Path(path).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
