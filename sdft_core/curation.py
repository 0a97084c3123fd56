"""Curation: from a demonstrations file to the rows SDFT trains on, with every dropped row accounted for.

Rules, in order; a row is judged by the first rule it fails and comes back as a `CurationRejection` naming the file,
the line (JSONL) or row (Parquet), the field where there is one, the reason and a short category:
  invalid         what `read_demonstrations` rejects (bad JSON, missing fields, bad types, duplicate ids)
  too_long/short  the length limits of `CurationConfig`
  duplicate       the same prompt and demonstration as an earlier row, up to case and whitespace
  near_duplicate  Jaccard similarity of word-shingle sets of question + demonstration at or over the threshold with
                  an earlier kept row (shingles most rows share are template text and are left out)
  in_eval         the row's question is also an eval question (leakage)
Without an eval file, accepted rows are split by a salted hash of their id, so adding rows never moves old ones.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config_schema import Config, Range
from .records import (
    JSONL_SUFFIXES,
    Demonstration,
    InvalidRecord,
    ReadLimits,
    RejectedRecord,
    collect,
    read_rows,
    validate_prompt,
)

CATEGORIES = ("invalid", "too_long", "too_short", "duplicate", "near_duplicate", "in_eval")
TEMPLATE_MIN_ROWS = 10  # below this, shared shingles are more likely a cluster of near-duplicates than a template
_WORD = re.compile(r"\w+")


@dataclass
class CurationConfig(Config):
    """The limits and thresholds of the curation rules, and how a skill without an eval file is split."""

    min_demonstration_chars: int = field(
        default=1, metadata={"help": "shorter demonstrations (stripped) are rejected as too_short", "range": Range(0)}
    )
    max_prompt_chars: int = field(
        default=16_000,
        metadata={
            "help": "all chat messages' contents, the system message included, the context apart",
            "range": Range(1),
        },
    )
    max_demonstration_chars: int = field(
        default=8_000, metadata={"help": "longer demonstrations (stripped) are rejected as too_long", "range": Range(1)}
    )
    max_context_chars: int = field(
        default=64_000, metadata={"help": "longer contexts (source texts) are rejected as too_long", "range": Range(1)}
    )
    near_duplicate_threshold: float = field(
        default=0.9,
        metadata={
            "help": "Jaccard similarity of word-shingle sets at which a row is a near-duplicate; 1 disables the rule",
            "range": Range(0, 1, "(]"),
        },
    )
    shingle_size: int = field(default=3, metadata={"help": "words per shingle", "range": Range(1)})
    template_share: float = field(
        default=0.5,
        metadata={
            "help": f"shingles in more than this share of the rows (and in {TEMPLATE_MIN_ROWS}+) are template text, "
            "left out of the comparison",
            "range": Range(0, 1, "(]"),
        },
    )
    eval_fraction: float = field(
        default=0.1,
        metadata={
            "help": "share of the rows held out for eval, only when the skill has no eval.jsonl",
            "range": Range(0, 1, "[)"),
        },
    )
    split_salt: str = field(
        default="sdft",
        metadata={"help": "salt of the hash-based split: adding rows never moves old rows between splits"},
    )
    max_rejected_share: float = field(
        default=0.2,
        metadata={"help": "the pipeline's asset check fails above this share of rejected rows", "range": Range(0, 1)},
    )
    read: ReadLimits = field(default_factory=ReadLimits)


@dataclass(frozen=True)
class CurationRejection(RejectedRecord):
    category: str = "invalid"

    def to_row(self) -> dict[str, Any]:
        """A flat row of plain strings (raw as text), ready for a table."""
        raw = self.raw if isinstance(self.raw, str) else json.dumps(self.raw, ensure_ascii=False, default=str)
        return {
            "source": self.source,
            "location": self.location,
            "field": self.field,
            "reason": self.reason,
            "category": self.category,
            "raw": raw,
        }


@dataclass
class CurationResult:
    train: list[Demonstration]
    eval: list[dict]  # raw eval rows (they carry the scorer's answer fields)
    rejected: list[RejectedRecord]  # CurationRejection, each with its category
    rows_read: int  # demonstration rows read: non-blank lines or Parquet rows
    eval_source: str  # the eval file's name, or "split"

    def counts(self) -> dict[str, int]:
        """read, accepted (= train), eval, rejected, and rejected_<category> for every category (zeros included)."""
        per_category = Counter(_category(r) for r in self.rejected)
        return {
            "read": self.rows_read,
            "accepted": len(self.train),
            "eval": len(self.eval),
            "rejected": len(self.rejected),
            **{f"rejected_{c}": per_category[c] for c in CATEGORIES},
        }

    def rejected_share(self) -> float:
        return len(self.rejected) / self.rows_read if self.rows_read else 0.0

    def rejected_rows(self) -> list[dict]:
        return [_as_rejection(r).to_row() for r in self.rejected]


def curate(
    demonstrations_path: str | Path,
    eval_path: str | Path | None = None,
    config: CurationConfig | None = None,
    within: str | Path | None = None,
) -> CurationResult:
    """`within`: the folder the files (or the files their links point to) must be in; None: anywhere."""
    config = config or CurationConfig()
    rows = _read_located(Path(demonstrations_path), config.read, within)
    rejected = [_as_rejection(r) for r in rows.invalid]
    kept = rows.accepted
    for rule in (_length_rule, _exact_duplicate_rule, _near_duplicate_rule):
        kept, dropped = rule(kept, config)
        rejected += [rows.reject(row, *why) for row, why in dropped]

    if eval_path is not None:
        (eval_rows, eval_questions), eval_source = (
            _read_eval(Path(eval_path), config.read, within),
            Path(eval_path).name,
        )
        train = kept
    else:
        eval_source, train, held_out = "split", [], []
        for row in kept:
            (held_out if _split_draw(row.record.id, config.split_salt) < config.eval_fraction else train).append(row)
        eval_rows = [row.record.to_dict() for row in held_out]
        eval_questions = {}
        for row in held_out:
            eval_questions.setdefault(_question_key(row.record.question), f"{_describe(row)}, held out by the split")
    train, dropped = _leakage_rule(train, eval_questions)
    rejected += [rows.reject(row, *why) for row, why in dropped]
    rejected.sort(key=lambda r: rows.order[r.location])
    return CurationResult([row.record for row in train], eval_rows, rejected, len(rows.order), eval_source)


def curate_skill(
    folder: str | Path, config: CurationConfig | None = None, within: str | Path | None = None
) -> CurationResult:
    """A skill folder: demonstrations.jsonl (or .parquet), and eval.jsonl when it has rows (else a hash split).
    Its files may be links, but only to files inside `within` (default: the folder itself; the pipeline passes
    its data folder)."""
    folder = Path(folder)
    within = folder if within is None else Path(within)
    candidates = [p for p in (folder / "demonstrations.jsonl", folder / "demonstrations.parquet") if p.exists()]
    if len(candidates) != 1:
        found = "both demonstrations.jsonl and .parquet" if candidates else "no demonstrations.jsonl or .parquet"
        raise FileNotFoundError(f"{folder}: {found}")
    eval_path = folder / "eval.jsonl"
    # write_skill always writes eval.jsonl; an empty one means the skill brought no eval set, so split instead.
    limits = (config or CurationConfig()).read
    has_eval = eval_path.exists() and any(True for _ in read_rows(eval_path, "eval", limits, within))
    return curate(candidates[0], eval_path if has_eval else None, config, within=within)


# ------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Row:
    record: Demonstration
    location: str


@dataclass
class _LocatedRows:
    source: str
    accepted: list[_Row]
    invalid: list[RejectedRecord]
    order: dict[str, int]  # location -> position in the file, to report rejections in file order
    raw: dict[str, Any]  # location -> the row as read (line text or Parquet dict)

    def reject(self, row: _Row, field_name: str | None, reason: str, category: str) -> CurationRejection:
        return CurationRejection(self.source, row.location, field_name, reason, self.raw[row.location], category)


def _read_located(path: Path, limits: ReadLimits, within: str | Path | None = None) -> _LocatedRows:
    """`read_demonstrations`, keeping where each accepted record came from, which later rejections name."""
    rows = read_rows(path, limits=limits, within=within)  # raises for a file no row can come from
    order: dict[str, int] = {}
    raw: dict[str, Any] = {}

    def tapped() -> Iterator[tuple[str, Any, Any]]:
        for location, parsed, text in rows:
            order[location], raw[location] = len(order), text
            yield location, parsed, text

    loaded = collect(tapped(), source=str(path))
    invalid = {r.location for r in loaded.rejected}
    locations = [location for location in order if location not in invalid]
    return _LocatedRows(
        str(path), [_Row(r, loc) for r, loc in zip(loaded.accepted, locations)], loaded.rejected, order, raw
    )


def _read_eval(path: Path, limits: ReadLimits, within: str | Path | None = None) -> tuple[list[dict], dict[str, str]]:
    """The eval rows as read, and {question key: where it is asked}; a bad row raises, naming file and line."""
    if path.suffix.lower() not in JSONL_SUFFIXES:
        raise ValueError(f"{path}: an eval file must be JSONL")
    rows, questions = [], {}
    for location, parsed, _ in read_rows(path, "eval", limits, within):
        try:
            if isinstance(parsed, InvalidRecord):
                raise parsed
            if not isinstance(parsed, dict):
                raise InvalidRecord(None, f"an eval row must be a JSON object, got {type(parsed).__name__}")
            if parsed.get("prompt") is None:
                raise InvalidRecord("prompt", "missing required field")
            prompt = validate_prompt(parsed["prompt"])
        except InvalidRecord as invalid:
            field_name = f"field '{invalid.field}': " if invalid.field else ""
            raise ValueError(f"{path}:{location}: {field_name}{invalid.reason}") from None
        question = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        questions.setdefault(_question_key(question), f"{path.name} {location} (id {parsed.get('id')!r})")
        rows.append(parsed)
    return rows, questions


def _as_rejection(record: RejectedRecord) -> CurationRejection:
    if isinstance(record, CurationRejection):
        return record
    return CurationRejection(record.source, record.location, record.field, record.reason, record.raw, "invalid")


def _category(record: RejectedRecord) -> str:
    return record.category if isinstance(record, CurationRejection) else "invalid"


# ------------------------------------------------------------------------------------------- rules
_Verdict = tuple[str | None, str, str]  # field, reason, category
_Judged = tuple[list[_Row], list[tuple[_Row, _Verdict]]]


def _length_rule(rows: list[_Row], config: CurationConfig) -> _Judged:
    kept, dropped = [], []
    for row in rows:
        verdict = _length_verdict(row.record, config)
        if verdict:
            dropped.append((row, verdict))
        else:
            kept.append(row)
    return kept, dropped


def _length_verdict(record: Demonstration, config: CurationConfig) -> _Verdict | None:
    prompt_chars = sum(len(m["content"]) for m in record.messages)
    demonstration_chars = len(record.demonstration.strip())
    context_chars = len(record.context or "")
    if prompt_chars > config.max_prompt_chars:
        return "prompt", f"{prompt_chars} characters, over the limit of {config.max_prompt_chars}", "too_long"
    if demonstration_chars > config.max_demonstration_chars:
        return (
            "demonstration",
            f"{demonstration_chars} characters, over the limit of {config.max_demonstration_chars}",
            "too_long",
        )
    if demonstration_chars < config.min_demonstration_chars:
        return (
            "demonstration",
            f"{demonstration_chars} characters, under the minimum of {config.min_demonstration_chars}",
            "too_short",
        )
    if context_chars > config.max_context_chars:
        return "context", f"{context_chars} characters, over the limit of {config.max_context_chars}", "too_long"
    return None


def _collapse(text: str) -> str:
    return " ".join(text.casefold().split())


def _exact_duplicate_rule(rows: list[_Row], config: CurationConfig) -> _Judged:
    kept, dropped, first = [], [], {}
    for row in rows:
        key = (
            tuple((m["role"], _collapse(m["content"])) for m in row.record.messages),
            _collapse(row.record.demonstration),
        )
        if key in first:
            dropped.append((row, (None, f"duplicate of {_describe(first[key])}", "duplicate")))
        else:
            first[key] = row
            kept.append(row)
    return kept, dropped


def _near_duplicate_rule(rows: list[_Row], config: CurationConfig) -> _Judged:
    if config.near_duplicate_threshold >= 1:
        return rows, []
    matches = near_duplicates(
        [_near_duplicate_text(row.record) for row in rows],
        config.near_duplicate_threshold,
        config.shingle_size,
        config.template_share,
    )
    kept, dropped = [], []
    for i, row in enumerate(rows):
        if i in matches:
            original, similarity = matches[i]
            reason = f"near-duplicate of {_describe(rows[original])}, similarity {similarity:.3f}"
            dropped.append((row, (None, reason, "near_duplicate")))
        else:
            kept.append(row)
    return kept, dropped


def _leakage_rule(rows: list[_Row], eval_questions: dict[str, str]) -> _Judged:
    kept, dropped = [], []
    for row in rows:
        where = eval_questions.get(_question_key(row.record.question))
        if where:
            dropped.append((row, ("prompt", f"question also in the eval set: {where}", "in_eval")))
        else:
            kept.append(row)
    return kept, dropped


def _question_key(question: str) -> str:
    # The same words, whatever the case, punctuation or spacing: a leak is the same question, not the same bytes.
    return " ".join(words(question))


def _split_draw(record_id: str, salt: str) -> float:
    """A uniform draw in [0, 1) that depends on the id alone, so a row's split never changes as rows are added."""
    return int(hashlib.sha256((salt + record_id).encode("utf-8")).hexdigest(), 16) / 2**256


def _describe(row: _Row) -> str:
    return f"{row.location} (id {row.record.id!r})"


# ------------------------------------------------------------------------------------------- near duplicates
def _near_duplicate_text(record: Demonstration) -> str:
    return record.question + " " + record.demonstration


def words(text: str) -> list[str]:
    """Casefolded runs of letters and digits: the unit of near-duplicate and leakage comparisons."""
    return _WORD.findall(text.casefold())


def shingles(text: str, size: int) -> set[str]:
    """Word `size`-grams of the text; a text shorter than `size` words is one shingle, an empty one none."""
    tokens = words(text)
    if len(tokens) <= size:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}


def jaccard(a: set | frozenset, b: set | frozenset) -> float:
    overlap = len(a & b)
    return overlap / (len(a) + len(b) - overlap) if a or b else 0.0


def near_duplicates(
    texts: list[str], threshold: float, shingle_size: int, template_share: float = 1.0
) -> dict[int, tuple[int, float]]:
    """{later index: (kept index, similarity)} for each text whose shingle set has Jaccard similarity >= threshold
    with an earlier kept text (the most similar one; the earliest on ties). Texts are judged in order and only kept
    texts can remove later ones: the result of a pairwise scan, found without comparing all pairs.

    Shingles in more than `template_share` of the texts (and in at least TEMPLATE_MIN_ROWS) are left out first: a
    prompt template shared by every row (a tool schema, answer instructions) would otherwise make distinct items
    look alike.

    Exact, by prefix filtering (Bayardo et al., "Scaling up all pairs similarity search", 2007): order shingles
    rarest first; two sets with Jaccard >= t share a shingle among the first |s| - ceil(t|s|) + 1 of each, so each
    kept set is indexed by that prefix alone and a new set is compared only with sets sharing a prefix shingle.
    """
    ids: dict[str, int] = {}
    sets = [frozenset(ids.setdefault(s, len(ids)) for s in shingles(text, shingle_size)) for text in texts]
    frequency = Counter(token for token_set in sets for token in token_set)
    template = {
        token
        for token, count in frequency.items()
        if count > template_share * len(texts) and count >= TEMPLATE_MIN_ROWS
    }
    if template:
        sets = [token_set - template for token_set in sets]
    # Rarest first, so prefixes hold rare shingles and posting lists stay short; ties by first appearance.
    rank = {token: r for r, token in enumerate(sorted(range(len(ids)), key=frequency.__getitem__))}
    index: dict[int, list[int]] = defaultdict(list)  # shingle rank -> kept texts with it in their prefix
    matches: dict[int, tuple[int, float]] = {}
    for i, token_set in enumerate(sets):
        ordered = sorted(rank[token] for token in token_set)
        # The 1e-9 keeps float error (0.28 * 25 = 7.000000000000001) from cutting the prefix below the bound.
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered) - 1e-9) + 1]
        best = None
        for j in sorted({j for token in prefix for j in index[token]}):
            similarity = jaccard(token_set, sets[j])
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (j, similarity)
        if best:
            matches[i] = best
        else:
            for token in prefix:
                index[token].append(i)
    return matches


def save_curated(result: CurationResult, skill_folder: str | Path, out: str | Path) -> Path:
    """Write a curated skill folder: train.jsonl, eval.jsonl, rejected.parquet (the quarantine, with reasons) and
    the skill's skill.yaml, so `sdft train --skill` and `sdft eval --skill` read it like the original."""
    import shutil

    import pandas as pd

    from .records import write_jsonl

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", [record.to_dict() for record in result.train])
    write_jsonl(out / "eval.jsonl", result.eval)
    columns = ["source", "location", "field", "reason", "category", "raw"]
    pd.DataFrame(result.rejected_rows(), columns=columns).astype("string").to_parquet(
        out / "rejected.parquet", index=False
    )
    spec = Path(skill_folder) / "skill.yaml"
    if spec.exists():
        shutil.copyfile(spec, out / "skill.yaml")
    return out
