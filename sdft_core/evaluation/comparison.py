"""Base, parent, SDFT candidate and SFT baseline side by side on one skill: the tables the pipeline shows and the
gate decides on, and each model's drift KL(base || model) on the skill's eval prompts.

    models = {"parent": p, "candidate": c, "baseline": b}          # who -> model spec
    results = evaluate_models(models, {"science": (eval_records, "multiple_choice", 64)}, {"arc_easy": 100},
                              folders)                              # who -> {task: TaskResult}, cached per folder
    drift = drift_on_prompts(base, models, eval_records[:32], folders, "drift/", max_new_tokens=64)
    table = build_comparison(results, "science", ["arc_easy"], drift)
    table.rows      # per task: parent, candidate, candidate - parent with its paired 95% interval, the baseline's
    table.models    # per model: new skill, prior average, KL to the base
    table.gate_inputs()
    table.benchmark_table(), table.model_table(model_labels("sdft/3", parent_is_base=False))   # in points

`results` maps a model ("base", "parent", "candidate", "baseline"; only parent and candidate are required) to its
`{task: TaskResult}` on the skill and the prior tasks, items paired by id.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..lineage import content_key
from .suite import Progress, TaskResult, average, evaluate_model, paired_difference_ci

log = logging.getLogger(__name__)

MODELS = ("base", "parent", "candidate", "baseline")
NAN_CI = [math.nan, math.nan]
# The drift's completion budget: the skill's max_new_tokens, capped (the base samples' cache holds full-vocabulary
# log-probabilities, about tokens x vocabulary x 4 bytes)
DRIFT_MAX_NEW_TOKENS = 64


def model_labels(parent_label: str, parent_is_base: bool) -> dict[str, str]:
    """How the tables and the picture name each model; the parent by its registry label ("sdft/3")."""
    return {
        "base": "base",
        "parent": "base (parent)" if parent_is_base else f"parent {parent_label}",
        "candidate": "SDFT candidate",
        "baseline": "SFT baseline",
    }


def _points(value: float) -> float:
    return round(100 * value, 2)


@dataclass
class Comparison:
    skill: str
    prior_tasks: list[str]
    rows: list[dict[str, Any]]  # per task, then "prior average"
    models: list[dict[str, Any]]  # per evaluated model: new skill, prior average, KL to the base
    new_skill_ci: list[float]  # paired 95% interval of candidate - parent on the new skill
    prior_average_ci: list[float]  # the same for the prior-capability average (NaN without prior tasks)
    drift: dict[str, dict[str, Any]] = field(default_factory=dict)  # who -> DriftResult.to_dict()

    def model(self, who: str) -> dict[str, Any] | None:
        return next((m for m in self.models if m["model"] == who), None)

    def scores(self, key: str) -> dict[str, float]:
        """{who: score} of "new_skill" or "prior_average"."""
        return {m["model"]: m[key] for m in self.models}

    def gate_inputs(self) -> dict[str, Any]:
        """Keyword arguments of `promotion_gate` (sdft_core.promotion), the config aside."""
        candidate, parent, baseline = self.model("candidate"), self.model("parent"), self.model("baseline")
        return {
            "candidate_skill": candidate["new_skill"],
            "parent_skill": parent["new_skill"],
            "candidate_prior": candidate["prior_average"],
            "parent_prior": parent["prior_average"],
            "skill_ci": tuple(self.new_skill_ci),
            "prior_ci": tuple(self.prior_average_ci),
            "baseline": (baseline["new_skill"], baseline["prior_average"]) if baseline else None,
        }

    def summary(self) -> dict[str, Any]:
        """What the pipeline hands on to the gate and logs: scores per model, the intervals, the drift."""
        return {
            "new_skill": self.scores("new_skill"),
            "prior_average": self.scores("prior_average"),
            "new_skill_ci": list(self.new_skill_ci),
            "prior_average_ci": list(self.prior_average_ci),
            "kl_to_base": dict(self.drift),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "skill": self.skill,
            "prior_tasks": self.prior_tasks,
            "rows": self.rows,
            "models": self.models,
            **self.summary(),
        }

    def benchmark_table(self) -> list[dict[str, Any]]:
        """The rows for display, in points: per benchmark the base's and the parent's scores, the candidate's, its
        delta with the paired interval's bounds, and the SFT baseline's (when evaluated)."""
        table = []
        for r in self.rows:
            row: dict[str, Any] = {"benchmark": r["task"]}
            if "base" in r:
                row["base"] = _points(r["base"])
            row |= {
                "parent": _points(r["parent"]),
                "candidate": _points(r["candidate"]),
                "delta": _points(r["delta"]),
                "delta_ci_low": _points(r["delta_ci"][0]),
                "delta_ci_high": _points(r["delta_ci"][1]),
            }
            if "baseline" in r:
                row |= {
                    "sft_baseline": _points(r["baseline"]),
                    "baseline_delta": _points(r["baseline_delta"]),
                    "baseline_delta_ci_low": _points(r["baseline_delta_ci"][0]),
                    "baseline_delta_ci_high": _points(r["baseline_delta_ci"][1]),
                }
            table.append(row)
        return table

    def model_table(self, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """One row per model for display: new skill and prior average in points, KL to the base with its interval
        (nats per token)."""
        table = []
        for m in self.models:
            row = {
                "model": labels.get(m["model"], m["model"]),
                "new_skill": _points(m["new_skill"]),
                "prior_average": _points(m["prior_average"]),
            }
            if "kl_to_base" in m:
                row |= {
                    "kl_to_base": m["kl_to_base"],
                    "kl_ci_low": m["kl_to_base_ci"][0],
                    "kl_ci_high": m["kl_to_base_ci"][1],
                }
            table.append(row)
        return table

    def points(self, labels: Mapping[str, str]) -> dict[str, tuple[float, float]]:
        """{label: (prior average, new skill)} for the skill-against-prior picture, the KL in each label; a model
        without a label (e.g. the base when it is the parent) is left out."""
        out = {}
        for m in self.models:
            if m["model"] not in labels:
                continue
            label = labels[m["model"]]
            if m.get("kl_to_base") is not None:
                label += f"\nKL(base||model) {m['kl_to_base']:.3g}"
            out[label] = (m["prior_average"], m["new_skill"])
        return out


def _row(label: str, parent, candidate, baseline, base) -> dict[str, Any]:
    """One row; parent/candidate/baseline/base are TaskResults (a task) or {task: TaskResult} (an average)."""

    def score(x):
        return x.score if isinstance(x, TaskResult) else average(x)

    metric = parent.metric if isinstance(parent, TaskResult) else "mean"
    row: dict[str, Any] = {"task": label, "metric": metric}
    if base is not None:
        row["base"] = score(base)
    row |= {
        "parent": score(parent),
        "candidate": score(candidate),
        "delta": score(candidate) - score(parent),
        "delta_ci": list(paired_difference_ci(parent, candidate)),
    }
    if baseline is not None:
        row |= {
            "baseline": score(baseline),
            "baseline_delta": score(baseline) - score(parent),
            "baseline_delta_ci": list(paired_difference_ci(parent, baseline)),
            "candidate_minus_baseline": score(candidate) - score(baseline),
            "candidate_minus_baseline_ci": list(paired_difference_ci(baseline, candidate)),
        }
    return row


def build_comparison(
    results: Mapping[str, Mapping[str, TaskResult]],
    skill: str,
    prior_tasks: Sequence[str],
    drift: Mapping[str, Mapping[str, Any]] | None = None,
) -> Comparison:
    """Rows of scores with paired 95% bootstrap intervals (candidate - parent, baseline - parent, candidate -
    baseline) on the new skill, each prior task and the prior average; one summary per model with its KL."""
    for required in ("parent", "candidate"):
        if required not in results:
            raise ValueError(f"build_comparison needs the {required}'s results")
    drift = dict(drift or {})
    prior_tasks = list(prior_tasks)
    who = {w: results.get(w) for w in MODELS}

    def of(w: str, task: str):
        return who[w][task] if who[w] is not None else None

    order = ("parent", "candidate", "baseline", "base")
    rows = [_row(f"{skill} (new skill)", *(of(w, skill) for w in order))]
    rows += [_row(task, *(of(w, task) for w in order)) for task in prior_tasks]
    if prior_tasks:
        suites = {w: ({t: r[t] for t in prior_tasks} if r is not None else None) for w, r in who.items()}
        rows.append(_row("prior average", *(suites[w] for w in order)))

    models = []
    for w in MODELS:
        if who[w] is None:
            continue
        entry = {
            "model": w,
            "new_skill": who[w][skill].score,
            "prior_average": average({t: who[w][t] for t in prior_tasks}) if prior_tasks else math.nan,
        }
        if w in drift:
            entry |= {"kl_to_base": drift[w]["mean"], "kl_to_base_ci": list(drift[w]["ci"])}
        models.append(entry)
    return Comparison(
        skill,
        prior_tasks,
        rows,
        models,
        rows[0]["delta_ci"],
        rows[-1]["delta_ci"] if prior_tasks else list(NAN_CI),
        drift,
    )


# ------------------------------------------------------------------------------------------------- scores
def evaluate_models(
    models: Mapping[str, str],
    skills: Mapping[str, tuple[Sequence[dict], str, int]],
    prior_limits: Mapping[str, int | None],
    folders: Mapping[str, str | Path],
    *,
    benchmarks_dir: str | Path | None = None,
    batch_size: int = 16,
    progress: Callable[[str], Progress] | None = None,
) -> dict[str, dict[str, TaskResult]]:
    """Each model ({who: model spec}) scored on the skills ({name: (eval records, scorer, max_new_tokens)}) and
    the prior tasks, its predictions in `folders[who]`. The scores are kept there as results.json and read back
    instead of evaluating again, so a folder must be named after everything the scores depend on (the model, the
    items, the settings). `progress(who)`: that model's `(task, done, total)` callback."""
    results: dict[str, dict[str, TaskResult]] = {}
    for who, spec in models.items():
        cache = Path(folders[who]) / "results.json"
        if cache.exists():
            results[who] = {k: TaskResult.from_dict(v) for k, v in json.loads(cache.read_text()).items()}
            log.info("%s (%s): cached scores from %s", who, spec, cache)
            continue
        results[who] = evaluate_model(
            spec,
            skills,
            prior_limits,
            output_dir=folders[who],
            benchmarks_dir=benchmarks_dir,
            batch_size=batch_size,
            progress=progress(who) if progress else None,
        )
        cache.write_text(json.dumps({k: r.to_dict() for k, r in results[who].items()}))
    return results


# ------------------------------------------------------------------------------------------------- drift
def drift_on_prompts(
    base_spec: str,
    models: Mapping[str, str],
    records: Sequence[dict],
    folders: Mapping[str, str | Path],
    samples_dir: str | Path,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
) -> dict[str, dict[str, Any]]:
    """Each model's drift KL(base || model) on the records' prompts (`drift_from_base`), the base model's too (~0:
    a check of the measure; measured once when the base is the parent). The completion budget is the skill's
    `max_new_tokens` capped at DRIFT_MAX_NEW_TOKENS; the base samples are kept in `samples_dir` and each model's
    result in `folders[who]`, under a key of the base model, the prompts and the budget."""
    budget = min(int(max_new_tokens), DRIFT_MAX_NEW_TOKENS)
    key = content_key(base_spec, [str(r["id"]) for r in records], budget)
    specs = {"base": base_spec, **{who: spec for who, spec in models.items() if who != "base"}}
    caches = {who: Path(folder) / f"drift-{key}.json" for who, folder in folders.items()}
    caches.setdefault("base", caches["parent"])  # the base is the parent: one measurement
    return drift_from_base(
        base_spec,
        specs,
        records,
        Path(samples_dir) / f"base-{key}.safetensors",
        max_new_tokens=budget,
        batch_size=batch_size,
        caches=caches,
    )


def drift_from_base(
    base_spec: str,
    models: Mapping[str, str],
    records: Sequence[dict],
    samples_path: str | Path,
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    caches: Mapping[str, str | Path] | None = None,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """KL(base || model) per completion token (sdft_core.evaluation.drift) for each model ({who: model spec}) on
    the base model's samples of the records' chat prompts, sampled once and cached at `samples_path`.

    A model whose `caches[who]` JSON file exists is not loaded again; models with the same spec are measured once
    (the base measured against itself gives ~0). Returns {who: DriftResult.to_dict()}."""
    import gc

    import torch

    from ..models import load_inference_model, load_tokenizer
    from ..prompts import encode_messages
    from ..records import chat_messages
    from .drift import kl_to_base, sample_base

    caches = {w: Path(p) for w, p in (caches or {}).items()}
    out: dict[str, dict[str, Any]] = {}
    by_spec: dict[str, dict[str, Any]] = {}
    pending = []
    for who, spec in models.items():
        cache = caches.get(who)
        if cache is not None and cache.exists():
            out[who] = by_spec.setdefault(spec, json.loads(cache.read_text()))
        else:
            pending.append((who, spec))
    if not pending:
        return out

    tokenizer = load_tokenizer(base_spec)
    prompts = [encode_messages(tokenizer, chat_messages(r["prompt"], r.get("system"))) for r in records]
    base = None
    if not Path(samples_path).exists():
        base = load_inference_model(base_spec)
    samples = sample_base(
        base, tokenizer, prompts, samples_path, max_new_tokens=max_new_tokens, seed=seed, batch_size=batch_size
    )
    for who, spec in pending:
        if spec not in by_spec:
            if spec == base_spec and base is not None:
                model = base
            else:
                model = load_inference_model(spec)
            by_spec[spec] = kl_to_base(model, samples, tokenizer.pad_token_id, batch_size=batch_size).to_dict()
            if model is not base:
                del model
                gc.collect()
        out[who] = by_spec[spec]
        if who in caches:
            caches[who].parent.mkdir(parents=True, exist_ok=True)
            caches[who].write_text(json.dumps(out[who]))
    del base
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out
