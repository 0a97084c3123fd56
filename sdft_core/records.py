"""The demonstration record and how it is read and validated.

A record: `id`, `prompt` (a string, or chat messages ending with a user turn), `demonstration` (the expert
answer), optional `context` (source text for knowledge tasks), optional `system`. Any other field is kept in
`metadata`. Invalid rows are never dropped silently: each comes back as a `RejectedRecord` naming the file, the
line (JSONL) or row (Parquet), the field and the reason.

Reading is in two steps, both public so other readers (curation) can use them: `read_rows` parses a file's rows
without judging them, and `collect` validates them into a `LoadResult`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
KNOWN_FIELDS = ("id", "prompt", "demonstration", "context", "system")
JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


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
    if not value.strip():
        raise InvalidRecord(name, "must not be empty")
    return value


def _optional_string(raw: dict, name: str) -> str | None:
    if raw.get(name) is None:
        return None
    return _non_empty_string(raw, name)


def validate_prompt(prompt: Any) -> str | tuple[dict[str, str], ...]:
    """A prompt (text, or chat messages ending with a user turn) as the record holds it, or InvalidRecord."""
    if isinstance(prompt, str):
        if not prompt.strip():
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
        if not isinstance(content, str) or not content.strip():
            raise InvalidRecord(f"prompt[{i}].content", "must be a non-empty string")
        if role == "system" and i != 0:
            raise InvalidRecord(f"prompt[{i}].role", "a system message may only come first")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "user":
        raise InvalidRecord(f"prompt[{len(messages) - 1}].role", "the last message must be a user turn")
    return tuple(messages)


def read_rows(path: str | Path, kind: str = "demonstrations") -> Iterator[tuple[str, Any, Any]]:
    """The rows of a JSONL or Parquet file, parsed but not validated: (location, parsed row, raw row), where a row
    that cannot be parsed comes back as an InvalidRecord. A missing file (named as a `kind` file) or another type
    raises at once."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_rows(path)
    if suffix in PARQUET_SUFFIXES:
        return _parquet_rows(path)
    raise DemonstrationError(f"{path}: unsupported file type {suffix!r}; use .jsonl or .parquet")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any, Any]]:
    """(location, parsed row, raw text) for each non-blank line."""
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                invalid = InvalidRecord(None, f"not valid UTF-8 (byte {err.start}: {err.reason})")
                yield f"line {number}", invalid, line.decode("utf-8", errors="replace")
                continue
            try:
                yield f"line {number}", json.loads(text), text
            except json.JSONDecodeError as err:
                yield f"line {number}", InvalidRecord(None, f"invalid JSON: {err.msg} at column {err.colno}"), text


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any, Any]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for number, row in enumerate(table.to_pylist(), start=1):
        row = {k: v for k, v in row.items() if v is not None}
        yield f"row {number}", row, row


def read_demonstrations(path: str | Path) -> LoadResult:
    """Read a JSONL or Parquet file of demonstrations; invalid rows come back in `rejected`."""
    return collect(read_rows(path), source=str(Path(path)))


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
