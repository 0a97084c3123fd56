"""The task registry: each task is a loader (items from package data, or from an extracted JSONL file), a prompt
format and a scorer.

Prior-capability tasks are multiple choice scored by log-likelihood, zero-shot, in the ranked-classification
("cloze") formats of OLMES / lm-evaluation-harness. Primary metrics: length-normalised accuracy (`acc_norm`, per
character) for ARC, HellaSwag and PIQA (as OLMES); plain accuracy for WinoGrande, BoolQ and MMLU (per-character
normalisation falls below chance on MMLU's short numeric options at 135M parameters). Both are always saved.

A multiple-choice item: {"id", "requests": [[context, continuation], ...], "gold": index}.
A generative item: a demonstration record (id, prompt, ...) whose extra fields hold what the scorer needs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..records import read_jsonl
from . import sources


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # "loglik" or "generate"
    metric: str  # the primary metric
    build: Callable[[], list[dict]]
    default_limit: int
    scorer: str | None = None  # generative tasks: choice_letter, number, short_answer, function_call
    max_new_tokens: int = 256
    description: str = ""


def _arc(config: str) -> Callable[[], list[dict]]:
    def build() -> list[dict]:
        items = []
        for row in sources.read_arrow(f"ai2_arc/{config}/validation"):
            labels, texts = row["choices"]["label"], row["choices"]["text"]
            if row["answerKey"] not in labels:
                continue
            context = f"Question: {row['question']}\nAnswer:"
            items.append(
                {
                    "id": row["id"],
                    "requests": [[context, f" {t}"] for t in texts],
                    "gold": labels.index(row["answerKey"]),
                }
            )
        return items

    return build


def _hellaswag_text(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _hellaswag() -> list[dict]:
    items = []
    for i, row in enumerate(sources.read_arrow("hellaswag/none/validation")):
        context = _hellaswag_text(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
        items.append(
            {
                "id": f"hellaswag-{row['ind']}-{i}",
                "requests": [[context, f" {_hellaswag_text(e)}"] for e in row["endings"]],
                "gold": int(row["label"]),
            }
        )
    return items


def _winogrande() -> list[dict]:
    """Partial scoring: the option fills the blank in the context; the rest of the sentence is scored."""
    items = []
    for i, row in enumerate(sources.read_arrow("winogrande/winogrande_xl/validation")):
        blank = row["sentence"].index("_")
        continuation = " " + row["sentence"][blank + 1 :].strip()
        contexts = [row["sentence"][:blank] + option for option in (row["option1"], row["option2"])]
        items.append(
            {"id": f"winogrande-{i}", "requests": [[c, continuation] for c in contexts], "gold": int(row["answer"]) - 1}
        )
    return items


def _piqa() -> list[dict]:
    return [
        {
            "id": f"piqa-{i}",
            "requests": [[f"Question: {row['goal']}\nAnswer:", f" {row[s]}"] for s in ("sol1", "sol2")],
            "gold": int(row["label"]),
        }
        for i, row in enumerate(sources.read_arrow("piqa/plain_text/validation"))
    ]


def _boolq() -> list[dict]:
    items = []
    for i, row in enumerate(sources.read_arrow("boolq/none/validation")):
        context = f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:"
        answer = row["answer"] if isinstance(row["answer"], bool) else str(row["answer"]).lower() == "true"
        items.append({"id": f"boolq-{i}", "requests": [[context, " no"], [context, " yes"]], "gold": int(answer)})
    return items


def _mmlu() -> list[dict]:
    items = []
    for subject in sources.mmlu_subjects():
        for i, row in enumerate(sources.read_arrow(f"hails/mmlu_no_train/{subject}/test")):
            context = f"Question: {row['question']}\nAnswer:"
            items.append(
                {
                    "id": f"mmlu-{subject}-{i}",
                    "subject": subject,
                    "requests": [[context, f" {c}"] for c in row["choices"]],
                    "gold": int(row["answer"]),
                }
            )
    return items


REGISTRY: dict[str, Task] = {
    "arc_easy": Task("arc_easy", "loglik", "acc_norm", _arc("ARC-Easy"), 400, description="ARC-Easy validation"),
    "arc_challenge": Task(
        "arc_challenge", "loglik", "acc_norm", _arc("ARC-Challenge"), 400, description="ARC-Challenge validation"
    ),
    "hellaswag": Task("hellaswag", "loglik", "acc_norm", _hellaswag, 400, description="HellaSwag validation"),
    "winogrande": Task("winogrande", "loglik", "acc", _winogrande, 400, description="WinoGrande xl validation"),
    "piqa": Task("piqa", "loglik", "acc_norm", _piqa, 400, description="PIQA validation"),
    "boolq": Task("boolq", "loglik", "acc", _boolq, 400, description="BoolQ validation"),
    "mmlu": Task("mmlu", "loglik", "acc", _mmlu, 400, description="MMLU test, all 57 subjects"),
}


def _ifbench() -> list[dict]:
    from .ifbench import ifbench_items

    return ifbench_items()


REGISTRY["ifbench"] = Task(
    "ifbench",
    "generate",
    "correct",
    _ifbench,
    100,
    scorer="instructions",
    max_new_tokens=384,
    description="IFBench prompts, strict prompt-level accuracy",
)
PRIOR_SUITE = ("arc_easy", "arc_challenge", "hellaswag", "winogrande", "piqa", "boolq", "mmlu")


def subsample(items: list[dict], limit: int | None, seed: int = 1234) -> list[dict]:
    """A fixed subsample (the same items for every model), kept in the original order."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def task_items(name: str, benchmarks_dir: str | Path | None = None) -> list[dict]:
    """All items of a registered task: from `benchmarks_dir/<name>.jsonl` when extracted there, else from the
    installed package."""
    if benchmarks_dir is not None:
        path = Path(benchmarks_dir) / f"{name}.jsonl"
        if path.exists():
            return read_jsonl(path)
    if name not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[name].build()
