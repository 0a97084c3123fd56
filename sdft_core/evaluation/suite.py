"""Running tasks, saving per-item predictions beside the scores, bootstrap confidence intervals, comparisons.

    results = evaluate_suite(model, tokenizer, {"arc_easy": 250, ...}, output_dir="reports/eval/base")
    table = compare(base_results, candidate_results)

Every task writes `<output_dir>/<task>.predictions.jsonl` (what the model chose or said, and whether it was
right) and the suite writes `<output_dir>/scores.json`.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..records import write_jsonl
from . import scoring
from .engine import greedy_answers, loglikelihoods
from .tasks import PRIOR_SUITE, REGISTRY, subsample, task_items

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]  # (task, done, total)


@dataclass
class TaskResult:
    task: str
    metric: str
    score: float
    n: int
    item_ids: list[str] = field(repr=False)
    item_scores: list[float] = field(repr=False)  # the primary metric per item, in item order
    metrics: dict[str, float] = field(default_factory=dict)  # every metric's mean
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TaskResult:
        return cls(**data)


def score_multiple_choice(
    model,
    tokenizer,
    items: Sequence[dict],
    metric: str,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    requests = [tuple(r) for item in items for r in item["requests"]]
    logprobs = iter(loglikelihoods(model, tokenizer, requests, batch_size=batch_size, progress=progress))
    predictions = []
    for item in items:
        scores = [next(logprobs) for _ in item["requests"]]
        result = scoring.multiple_choice(scores, [r[1] for r in item["requests"]], item["gold"])
        predictions.append(
            {"id": item["id"], "gold": item["gold"], "logprobs": scores} | result | {"correct": result[metric]}
        )
    return predictions


def score_generations(
    model,
    tokenizer,
    records: Sequence[dict],
    scorer: str,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict]:
    """Greedy answers to chat prompts, each scored against the record's own answer fields."""
    from ..records import chat_messages

    conversations = [chat_messages(r["prompt"], r.get("system")) for r in records]
    answers = greedy_answers(
        model, tokenizer, conversations, max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress
    )
    return [
        {"id": str(r["id"]), "output": answer} | score_answer(scorer, answer, r) for r, answer in zip(records, answers)
    ]


def score_answer(scorer: str, answer: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Score one free-form answer; the result always has `correct` (the primary metric, 0 or 1)."""
    if scorer == "choice_letter":
        letter = scoring.extract_choice_letter(answer, record.get("choices"))
        gold = _gold(record, "answer", scorer)
        return {"extracted": letter, "gold": gold, "correct": float(letter == gold)}
    if scorer == "number":
        number = scoring.extract_number(answer)
        gold = float(_gold(record, "answer", scorer))
        return {"extracted": number, "gold": gold, "correct": float(number is not None and abs(number - gold) < 1e-6)}
    if scorer == "short_answer":
        # a training record without `answers` (as users write them) is scored against its own demonstration
        golds = record.get("answers") or ([record["demonstration"]] if record.get("demonstration") else None)
        result = scoring.short_answer(answer, golds if golds is not None else _gold(record, "answers", scorer))
        return result | {"gold": golds, "correct": result["contains"]}
    if scorer == "function_call":
        ok, reason = scoring.match_function_call(answer, _gold(record, "possible_answer", scorer))
        return {"reason": reason, "correct": float(ok)}
    if scorer == "instructions":
        from .ifbench import follows_instructions

        followed = follows_instructions(answer, record)
        return {
            "followed": followed,
            "instruction_accuracy": sum(followed) / len(followed),
            "correct": float(all(followed)),
        }
    raise ValueError(f"unknown scorer {scorer!r}")


def _gold(record: Mapping[str, Any], name: str, scorer: str) -> Any:
    if record.get(name) is None:
        raise ValueError(f"record {record.get('id')!r} has no {name!r}, which the {scorer} scorer needs")
    return record[name]


def _result(task: str, metric: str, predictions: list[dict], seconds: float) -> TaskResult:
    numeric = (
        [k for k, v in predictions[0].items() if isinstance(v, float) and k not in ("gold",)] if predictions else []
    )
    metrics = {k: statistics.fmean(p[k] for p in predictions) for k in numeric}
    scores = [float(p["correct"]) for p in predictions]
    return TaskResult(
        task,
        metric,
        statistics.fmean(scores) if scores else float("nan"),
        len(scores),
        [p["id"] for p in predictions],
        scores,
        metrics,
        seconds,
    )


def evaluate_task(
    model,
    tokenizer,
    task: str,
    limit: int | None = None,
    output_dir: str | Path | None = None,
    benchmarks_dir: str | Path | None = None,
    seed: int = 1234,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> TaskResult:
    spec = REGISTRY[task]
    items = subsample(task_items(task, benchmarks_dir), spec.default_limit if limit is None else limit, seed)
    started = time.perf_counter()
    step = (lambda done, total: progress(task, done, total)) if progress else None
    if spec.kind == "loglik":
        predictions = score_multiple_choice(model, tokenizer, items, spec.metric, batch_size, step)
    else:
        predictions = score_generations(model, tokenizer, items, spec.scorer, spec.max_new_tokens, batch_size, step)
    result = _result(task, spec.metric, predictions, time.perf_counter() - started)
    if output_dir is not None:
        write_jsonl(Path(output_dir) / f"{task}.predictions.jsonl", predictions)
    return result


def evaluate_records(
    model,
    tokenizer,
    name: str,
    records: Sequence[dict],
    scorer: str,
    max_new_tokens: int = 256,
    output_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> TaskResult:
    """A skill's eval split (chat records with answer fields), scored with the skill's scorer."""
    started = time.perf_counter()
    step = (lambda done, total: progress(name, done, total)) if progress else None
    predictions = score_generations(model, tokenizer, records, scorer, max_new_tokens, batch_size, step)
    result = _result(name, "correct", predictions, time.perf_counter() - started)
    if output_dir is not None:
        write_jsonl(Path(output_dir) / f"{name}.predictions.jsonl", predictions)
    return result


def evaluate_suite(
    model,
    tokenizer,
    tasks: Mapping[str, int | None] | Sequence[str] = PRIOR_SUITE,
    output_dir: str | Path | None = None,
    benchmarks_dir: str | Path | None = None,
    seed: int = 1234,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, TaskResult]:
    limits = tasks if isinstance(tasks, Mapping) else {t: None for t in tasks}
    results = {}
    for task, limit in limits.items():
        results[task] = evaluate_task(
            model, tokenizer, task, limit, output_dir, benchmarks_dir, seed, batch_size, progress
        )
        log.info(
            "%s %s=%.4f (n=%d, %.0fs)",
            task,
            results[task].metric,
            results[task].score,
            results[task].n,
            results[task].seconds,
        )
    if output_dir is not None:
        save_scores(results, Path(output_dir) / "scores.json")
    return results


def evaluate_model(
    model_spec: str,
    skills: Mapping[str, tuple[Sequence[dict], str, int]],
    prior_limits: Mapping[str, int | None],
    output_dir: str | Path | None = None,
    benchmarks_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> dict[str, TaskResult]:
    """Load a model once and score it on skills ({name: (eval records, scorer, max_new_tokens)}) and prior tasks;
    `progress(task, done, total)` after every batch."""
    import gc

    from ..models import load_inference_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_spec), load_inference_model(model_spec)
    results = {
        name: evaluate_records(
            model, tokenizer, name, records, scorer, max_new_tokens, output_dir, batch_size, progress
        )
        for name, (records, scorer, max_new_tokens) in skills.items()
    }
    if prior_limits:
        results |= evaluate_suite(
            model, tokenizer, prior_limits, output_dir, benchmarks_dir, batch_size=batch_size, progress=progress
        )
    del model
    gc.collect()
    return results


def save_scores(results: Mapping[str, TaskResult], path: Path) -> None:
    """`path`: numbers only, so that `dvc metrics diff` shows what changed and nothing else: per task its score,
    every metric's mean and n, and the average with its interval. Wall-clock seconds, which differ on every run,
    go beside it (`<stem>.seconds.json`)."""
    low, high = average_ci(results)
    path.parent.mkdir(parents=True, exist_ok=True)
    scores = {
        "tasks": {k: {"score": r.score, **r.metrics, "n": r.n} for k, r in results.items()},
        "average": average(results),
        "average_ci_low": low,
        "average_ci_high": high,
    }
    path.write_text(json.dumps(scores, indent=2) + "\n")
    seconds = {k: r.seconds for k, r in results.items()}
    path.with_suffix(".seconds.json").write_text(json.dumps(seconds, indent=2) + "\n")


# ------------------------------------------------------------------------------------------- statistics
def average(results: Mapping[str, TaskResult]) -> float:
    return statistics.fmean(r.score for r in results.values())


def average_ci(
    results: Mapping[str, TaskResult], samples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Bootstrap interval of the average of task scores, resampling items within each task."""
    return _bootstrap([r.item_scores for r in results.values()], samples, seed, level)


def paired_difference_ci(
    base: TaskResult | Mapping[str, TaskResult],
    candidate: TaskResult | Mapping[str, TaskResult],
    samples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Bootstrap interval of candidate - base, items paired by id (for a suite: of the average's difference)."""
    base_map = base if isinstance(base, Mapping) else {base.task: base}
    cand_map = candidate if isinstance(candidate, Mapping) else {candidate.task: candidate}
    differences = []
    for task, b in base_map.items():
        by_id = dict(zip(cand_map[task].item_ids, cand_map[task].item_scores))
        differences.append([by_id[i] - s for i, s in zip(b.item_ids, b.item_scores) if i in by_id])
    return _bootstrap(differences, samples, seed, level)


def _bootstrap(groups: Sequence[Sequence[float]], samples: int, seed: int, level: float) -> tuple[float, float]:
    """Percentile interval of the mean over groups of each group's mean, resampling within groups."""
    import numpy as np

    rng = np.random.default_rng(seed)
    draws = np.zeros(samples)
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    for values in groups:
        draws += values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    draws /= max(1, len(groups))
    tail = (1 - level) / 2
    low, high = np.quantile(draws, [tail, 1 - tail])
    return float(low), float(high)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of a mean over a few runs (e.g. seeds)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (float("nan"), float("nan"))
    from statistics import NormalDist

    mean, sd = statistics.fmean(values), statistics.stdev(values)
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(values), NormalDist().inv_cdf(0.5 + level / 2))
    half = t * sd / len(values) ** 0.5
    return mean - half, mean + half


def compare(base: Mapping[str, TaskResult], candidate: Mapping[str, TaskResult]) -> list[dict[str, Any]]:
    """Per-task rows (base, candidate, delta, paired 95% interval of the delta) and the average."""
    rows = []
    for task, b in base.items():
        c = candidate[task]
        low, high = paired_difference_ci(b, c)
        rows.append(
            {
                "task": task,
                "metric": b.metric,
                "base": b.score,
                "candidate": c.score,
                "delta": c.score - b.score,
                "delta_ci": [low, high],
            }
        )
    low, high = paired_difference_ci(base, candidate)
    rows.append(
        {
            "task": "average",
            "metric": "mean",
            "base": average(base),
            "candidate": average(candidate),
            "delta": average(candidate) - average(base),
            "delta_ci": [low, high],
        }
    )
    return rows
