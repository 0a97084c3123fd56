"""The forgetting study: does SDFT learn a new skill while drifting from the base model less than SFT and DFT?

    make study                                              # = .venv/bin/python experiments/study.py
    .venv/bin/python experiments/study.py --report-only     # tables and plots from the units finished so far
    .venv/bin/python experiments/study.py --config my.yaml  # other sizes / model / skills (StudyConfig fields)

For each skill (default tool_use and knowledge), SFT, DFT and SDFT are trained from the base model over the same
learning-rate sweep (seed 0), from a rate that barely moves the model to one where SFT clearly forgets. Each
method's frontier point is its rate with the best validation score; it is trained again with the other seeds.
Then the ablations (SDFT with other settings at its chosen rate), then the sequential chain (`chain_skill`, default
science: where do the loops of an earlier tool_use -> science SDFT chain come from?). Every model is scored on

- the skill's eval split (greedy; with the share of answers stuck in a loop),
- the prior-capability suite at `prior_items_per_task` items per task, the same items for every model, with a
  paired bootstrap interval of model minus base,
- the drift KL(base || model) per token (`sdft_core.evaluation.drift`) on the skill's eval prompts and on a fixed
  set of prior-suite prompts, with bootstrap intervals over sequences.

Each finished model is one unit: `reports/study/units/<name>.json` (its scores, every item's 0/1 for paired
intervals, its KL and training summary); weights, checkpoints and per-item predictions stay under `--work`
(default .sdft/study) and the predictions are also MLflow artifacts. A unit already on disk is never redone, so the
study resumes where it stopped, also in another session from the committed units (`--commit` commits each unit as
it lands). The summary goes to `reports/study/report.md`, `pareto.png` (new skill vs prior average),
`drift.png` (new skill vs KL to base) and `reports/experiment.json`, in the shape the earlier experiment used:

    {"model", "config", "prior_items_per_task": int,
     "base": {"prior_avg", "prior_avg_ci", "prior": {task: score}, "new_skill": {skill: score}},
     "teacher_check": {skill: {...}},
     "sweep": [{"skill", "method", "lr", "seed", "validation", "new_skill", "prior_avg", "prior_delta_ci": [lo, hi],
                "kl_new_skill", "kl_prior", ...}],
     "runs": [{"skill", "method", "lr", "seeds", "new_skill_mean", "new_skill_ci", "prior_avg_mean", "prior_avg_ci",
               "prior_drop", "kl_new_skill_mean", "kl_prior_mean", ...}],          # each method's frontier point
     "ablations": [...],
     "sequential": [{"kind": "cross", "parent", "method", "lr", "score", "repetition_rate", ...},   # first link
                    {"kind": "chain:<variant>", "parent", "score", "score_delta_ci", "repetition_rate",
                     "first_skill_score", "prior_avg", "prior_delta_ci", "kl_prior", "train", ...}]}

Scores are fractions in [0, 1]; KL is in nats per token.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines.mlflow_logging import MlflowSteps
from sdft_core.config import TrainConfig, with_overrides
from sdft_core.evaluation.drift import kl_to_base, sample_base
from sdft_core.evaluation.scoring import repeats_itself
from sdft_core.evaluation.suite import (
    TaskResult,
    average,
    average_ci,
    evaluate_records,
    evaluate_suite,
    mean_ci,
    paired_difference_ci,
)
from sdft_core.evaluation.tasks import PRIOR_SUITE, subsample, task_items
from sdft_core.evaluation.teacher_check import on_policy_check, teacher_check
from sdft_core.prompts import encode_messages
from sdft_core.records import chat_messages, records_from_dicts
from sdft_core.skills import BUILDERS, Skill, read_skill
from sdft_core.trainer import retain_freed_memory, train

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("study")
ITEM_SEED = 1234  # which items of each task and split are scored: the same for every model


@dataclass
class StudyConfig:
    model: str = "smollm2-135m-instruct"
    skills: list[str] = field(default_factory=lambda: ["tool_use", "knowledge"])
    methods: list[str] = field(default_factory=lambda: ["sft", "dft", "sdft"])
    learning_rates: list[float] = field(default_factory=lambda: [3e-5, 3e-4, 3e-3])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # the first one runs the sweep
    steps: int | None = 32  # optimizer steps per run; None: `epochs` over the demonstrations
    epochs: float = 2.0  # only when steps is None
    batch_size: int = 8  # prompts per optimizer step: 256 sequences per run
    warmup_steps: int = 3
    prior_items_per_task: int = 200
    eval_items: int = 100  # of each skill's eval split
    validation_items: int = 50  # of each skill's validation split (chooses each method's rate)
    drift_prior_prompts_per_task: int = 10
    drift_prior_max_new_tokens: int = 48
    teacher_check_sample: int = 32
    # A method at its chosen rate with other settings: {name, method, overrides, seeds, skills (default: all)}
    ablations: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "mask0", "method": "sdft", "overrides": {"loss.skip_first_tokens": 0}, "seeds": [0]},
            # knowledge's teacher reads the paper's template, which asks for "the thinking process" after a 4-token
            # answer; tool_use already shows the demonstration as an earlier turn
            {
                "name": "prior_turn",
                "method": "sdft",
                "overrides": {"prompts.teacher_mode": "prior_turn"},
                "seeds": [0],
                "skills": ["knowledge"],
            },
            {
                "name": "gen2",
                "method": "sdft",
                "overrides": {"rollout.num_generations": 2, "batch_size": 4},
                "seeds": [0],
            },
        ]
    )
    # The sequential chain. An earlier tool_use -> science SDFT chain fell into loops ("The answer is D. The answer
    # is D. ..."). Every model of the first skill's sweep is scored on `chain_skill` (does the first link already
    # loop, and at which rates?), then SDFT trains `chain_skill` at the first skill's chosen SDFT rate from the
    # first skill's SDFT model ("first") or from the base ("base"), each variant changing one suspect.
    chain_skill: str | None = "science"
    chain_variants: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {"name": "chained", "from": "first"},
            {"name": "from_base", "from": "base"},
            {"name": "chained_prior_turn", "from": "first", "overrides": {"prompts.teacher_mode": "prior_turn"}},
        ]
    )
    skills_dir: str = "data/skills"  # bundled skills are built from the packages when missing here
    eval_batch_size: int = 16
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every run, dotted keys


class Study:
    def __init__(self, config: StudyConfig, out: Path, work: Path, commit: bool = False):
        self.config, self.out, self.work, self.commit = config, out, work, commit
        self.units_dir = out / "units"
        self.skills: dict[str, Skill] = {}
        self._tokenizer = None
        self._drift_samples: dict[str, Any] = {}
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}"))
        mlflow.set_experiment("sdft-study")

    # ------------------------------------------------------------------------------------------ inputs
    def skill(self, name: str) -> Skill:
        if name not in self.skills:
            folder = Path(self.config.skills_dir) / name
            self.skills[name] = read_skill(folder) if (folder / "skill.yaml").exists() else BUILDERS[name](0)
        return self.skills[name]

    def items(self, skill: str, split: str) -> list[dict]:
        limit = self.config.eval_items if split == "eval" else self.config.validation_items
        return subsample(self.skill(skill).splits[split], limit, seed=ITEM_SEED)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from sdft_core.models import load_tokenizer

            self._tokenizer = load_tokenizer(self.config.model)
        return self._tokenizer

    def drift_prompts(self, name: str) -> tuple[list[list[int]], int]:
        """Token ids of the prompts the drift is measured on, and their completion budget: a skill's eval prompts
        (name = the skill) or a fixed sample of prior-suite questions asked through the chat template ("prior")."""
        if name == "prior":
            texts = []
            for task in PRIOR_SUITE:
                for item in subsample(task_items(task), self.config.drift_prior_prompts_per_task, seed=4321):
                    texts.append(item["requests"][0][0].strip())
            conversations = [chat_messages(text) for text in texts]
            budget = self.config.drift_prior_max_new_tokens
        else:
            conversations = [chat_messages(r["prompt"], r.get("system")) for r in self.items(name, "eval")]
            budget = self.skill(name).max_new_tokens
        return [encode_messages(self.tokenizer, c) for c in conversations], budget

    def drift_path(self, name: str, prompts: list[list[int]], budget: int) -> Path:
        return self.work / "drift" / f"{name}-{len(prompts)}x{budget}.safetensors"

    def base_samples(self, name: str, base_model=None):
        """The base model's cached completions for the drift measure (sampled once, by the base unit)."""
        if name not in self._drift_samples:
            prompts, budget = self.drift_prompts(name)
            path = self.drift_path(name, prompts, budget)
            if base_model is None and not path.exists():  # the chain's skill: sampled when first needed
                from sdft_core.models import load_inference_model

                base_model = load_inference_model(self.config.model)
            self._drift_samples[name] = sample_base(
                base_model, self.tokenizer, prompts, path, max_new_tokens=budget, batch_size=self.config.eval_batch_size
            )
        return self._drift_samples[name]

    # ------------------------------------------------------------------------------------------ units
    def unit_path(self, name: str) -> Path:
        return self.units_dir / f"{name}.json"

    def done(self, name: str) -> dict[str, Any] | None:
        path = self.unit_path(name)
        return json.loads(path.read_text()) if path.exists() else None

    def save_unit(self, name: str, unit: dict[str, Any]) -> None:
        path = self.unit_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps(unit, indent=1) + "\n")
        os.replace(staging, path)
        if self.commit:
            commit_file(path, f"study: unit {name}")

    def base_unit(self) -> dict[str, Any]:
        """The base model's scores, the teacher checks, and the cached base samples for the drift measure."""
        # The drift caches are not committed; a resumed study (another machine) samples them again, identically.
        from sdft_core.models import load_inference_model

        unit = self.done("base")
        model = None
        names = ["prior", *self.config.skills]
        if unit is None or not all(self.drift_path(n, *self.drift_prompts(n)).exists() for n in names):
            model = load_inference_model(self.config.model)
            for name in names:
                self.base_samples(name, model)
        if unit is None:
            started = time.perf_counter()
            unit = {"name": "base", "model": self.config.model} | self.scores(model, "base", self.config.skills)
            unit["teacher_check"] = {s: self.teacher_check(model, s) for s in self.config.skills}
            unit["item_ids"] = {"prior": self.prior_ids, "skills": self.skill_ids}
            unit["eval_seconds"] = time.perf_counter() - started
            self.save_unit("base", unit)
        del model
        gc.collect()
        return unit

    def checks_unit(self) -> dict[str, Any]:
        """The on-policy check of each skill on the base model (`on_policy_check`): does SDFT's implicit reward
        rank the student's right samples above its wrong ones, and does the teacher stop where a demonstration
        ends? Set against what SDFT then does, it tests whether the check predicts the outcome."""
        from sdft_core.config import LossConfig, PromptConfig
        from sdft_core.models import load_inference_model

        unit = self.done("checks")
        if unit is not None:
            return unit
        model, unit = load_inference_model(self.config.model), {"name": "checks", "on_policy": {}}
        for skill in self.config.skills:
            spec = self.skill(skill)
            training = spec.training | self.config.overrides
            check = on_policy_check(
                model,
                self.tokenizer,
                spec.splits["demonstrations"],
                spec.scorer,
                PromptConfig(teacher_mode=training.get("prompts.teacher_mode", "inline")),
                spec.max_new_tokens,
                sample=self.config.teacher_check_sample,
                skip_first_tokens=int(training.get("loss.skip_first_tokens", LossConfig().skip_first_tokens)),
                batch_size=self.config.eval_batch_size,
            )
            unit["on_policy"][skill] = {k: v for k, v in check.items() if k != "examples"}
        self.save_unit("checks", unit)
        del model
        gc.collect()
        return unit

    def teacher_check(self, model, skill: str) -> dict[str, Any]:
        from sdft_core.config import PromptConfig

        spec = self.skill(skill)
        check = teacher_check(
            model,
            self.tokenizer,
            spec.splits["demonstrations"],
            spec.scorer,
            PromptConfig(teacher_mode=spec.training.get("prompts.teacher_mode", "inline")),
            max_new_tokens=spec.max_new_tokens,
            sample=self.config.teacher_check_sample,
            batch_size=self.config.eval_batch_size,
        )
        return {k: v for k, v in check.items() if k != "examples"}

    def train_config(
        self,
        skill: str,
        method: str,
        lr: float,
        seed: int,
        overrides: dict[str, Any],
        output_dir: Path,
        parent: str | None = None,
    ) -> TrainConfig:
        c, spec = self.config, self.skill(skill)
        config = TrainConfig(
            method=method,
            model=parent or c.model,
            output_dir=str(output_dir),
            max_steps=c.steps,
            epochs=c.epochs,
            batch_size=c.batch_size,
            micro_batch_size=c.batch_size,
            learning_rate=lr,
            warmup_steps=c.warmup_steps,
            seed=seed,
            checkpoint_every=max(1, (c.steps or 32) // 4),
        )
        config = with_overrides(
            config, {"rollout.max_new_tokens": spec.max_new_tokens} | spec.training | c.overrides | overrides
        )
        # one micro-batch per step unless the config says otherwise (the prompt pass is then reused)
        if "micro_batch_size" in c.overrides:
            return config
        return with_overrides(config, {"micro_batch_size": config.batch_size * config.rollout.num_generations})

    def run_unit(
        self,
        name: str,
        skill: str,
        method: str,
        lr: float,
        seed: int,
        overrides: dict[str, Any] | None = None,
        kind: str = "sweep",
        parent: str | None = None,
        also_scored: list[str] = (),
    ) -> dict[str, Any]:
        """Train one model (from the base, or from `parent`, another unit's name) and score it on its skill and
        `also_scored`, the prior suite and the drift."""
        unit = self.done(name)
        if unit is not None:
            return unit
        overrides = overrides or {}
        run_dir = self.work / "runs" / name
        config = self.train_config(skill, method, lr, seed, overrides, run_dir, parent and str(self.model_dir(parent)))
        records = records_from_dicts(self.skill(skill).splits["demonstrations"], source=f"{skill}/demonstrations")
        log.info(
            "unit %s: training (%s, lr %g, seed %d, %s, from %s)",
            name,
            method,
            lr,
            seed,
            overrides or "defaults",
            parent or "base",
        )
        with self.mlflow.start_run(run_name=name) as run:
            self.mlflow.set_tags({"skill": skill, "method": method, "kind": kind, "parent": parent or "base"})
            self.mlflow.log_params(
                {
                    "lr": lr,
                    "seed": seed,
                    "method": method,
                    "skill": skill,
                    "overrides": json.dumps(overrides),
                    "steps": config.max_steps,
                    "epochs": config.epochs,
                    "batch_size": config.batch_size,
                }
            )
            started = time.perf_counter()
            result = train(config, records.accepted, callbacks=[MlflowSteps(run.info.run_id)])
            train_seconds = time.perf_counter() - started
            from sdft_core.models import load_inference_model

            model = load_inference_model(str(result.model_dir))
            started = time.perf_counter()
            scores = self.scores(model, name, [skill, *also_scored])
            eval_seconds = time.perf_counter() - started
            del model
            self.mlflow.log_metrics(
                {
                    "new_skill": scores["skills"][skill]["score"],
                    "validation": scores["validation"][skill]["score"],
                    "prior_avg": scores["prior_avg"],
                    "kl_new_skill": scores["kl"][skill]["mean"],
                    "kl_prior": scores["kl"]["prior"]["mean"],
                    "train_seconds": train_seconds,
                    "eval_seconds": eval_seconds,
                }
            )
            self.mlflow.log_artifacts(str(self.work / "evals" / name), artifact_path="predictions")
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
        unit = {
            "name": name,
            "kind": kind,
            "skill": skill,
            "method": method,
            "lr": lr,
            "seed": seed,
            "overrides": overrides,
            "parent": parent,
            "train": training_summary(metrics)
            | {
                "seconds": train_seconds,
                "sequences": len(metrics) * config.batch_size * config.rollout.num_generations,
            },
        } | scores
        unit["eval_seconds"] = eval_seconds
        self.save_unit(name, unit)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # only for resuming; weights stay in model/
        gc.collect()
        return unit

    def model_dir(self, name: str) -> Path:
        """A finished unit's weights ("base": the base model's name); trained again, with the unit's own config and
        seed, on a machine that has the committed unit but not its weights."""
        if name == "base":
            return Path(self.config.model)
        path = self.work / "runs" / name / "model"
        if not (path / "model.safetensors").exists():
            unit = self.done(name)
            log.info("unit %s: weights missing here, training it again", name)
            config = self.train_config(
                unit["skill"],
                unit["method"],
                unit["lr"],
                unit["seed"],
                unit["overrides"],
                path.parent,
                unit.get("parent") and str(self.model_dir(unit["parent"])),
            )
            records = records_from_dicts(self.skill(unit["skill"]).splits["demonstrations"], source=unit["skill"])
            train(config, records.accepted)
        return path

    def cross_unit(self, parent: str, skill: str) -> dict[str, Any]:
        """A finished model (or the base) scored on another skill's eval split: its score and its loop rate."""
        name = f"cross-{skill}-{parent}"
        unit = self.done(name)
        if unit is not None:
            return unit
        from sdft_core.models import load_inference_model

        model = load_inference_model(str(self.model_dir(parent)))
        started = time.perf_counter()
        unit = {
            "name": name,
            "kind": "cross",
            "skill": skill,
            "parent": parent,
            "skills": {skill: self.skill_scores(model, name, skill, "eval")},
            "eval_seconds": time.perf_counter() - started,
        }
        del model
        self.save_unit(name, unit)
        gc.collect()
        return unit

    # ------------------------------------------------------------------------------------------ scoring
    @property
    def prior_ids(self) -> dict[str, list[str]]:
        return {
            task: [item["id"] for item in subsample(task_items(task), self.config.prior_items_per_task, seed=ITEM_SEED)]
            for task in PRIOR_SUITE
        }

    @property
    def skill_ids(self) -> dict[str, dict[str, list[str]]]:
        return {
            skill: {split: [str(r["id"]) for r in self.items(skill, split)] for split in ("eval", "validation")}
            for skill in self.config.skills
        }

    def scores(self, model, name: str, skills: list[str]) -> dict[str, Any]:
        """A model's unit fields: skills on eval and validation, the prior suite, and the drift on each."""
        c, folder = self.config, self.work / "evals" / name
        out: dict[str, Any] = {"skills": {}, "validation": {}, "kl": {}}
        for skill in skills:
            for split, key in (("eval", "skills"), ("validation", "validation")):
                out[key][skill] = self.skill_scores(model, name, skill, split)
            log.info(
                "%s: %s eval %.3f validation %.3f",
                name,
                skill,
                out["skills"][skill]["score"],
                out["validation"][skill]["score"],
            )
        prior = evaluate_suite(
            model,
            self.tokenizer,
            {t: c.prior_items_per_task for t in PRIOR_SUITE},
            output_dir=folder / "prior",
            batch_size=c.eval_batch_size,
        )
        out["prior"] = {task: task_fields(result) for task, result in prior.items()}
        out["prior_avg"] = average(prior)
        out["prior_avg_ci"] = list(average_ci(prior))
        for drift_name in ["prior", *skills]:
            drift = kl_to_base(
                model, self.base_samples(drift_name), self.tokenizer.pad_token_id, batch_size=c.eval_batch_size
            )
            out["kl"][drift_name] = drift.to_dict()
        log.info(
            "%s: prior average %.3f, KL new skill %s, KL prior %.4f",
            name,
            out["prior_avg"],
            {s: round(out["kl"][s]["mean"], 4) for s in skills},
            out["kl"]["prior"]["mean"],
        )
        return out

    def skill_scores(self, model, name: str, skill: str, split: str) -> dict[str, Any]:
        """Greedy score on a split's items; on eval also the share of answers stuck in a loop and their length."""
        spec, folder = self.skill(skill), self.work / "evals" / name / split
        result = evaluate_records(
            model,
            self.tokenizer,
            skill,
            self.items(skill, split),
            spec.scorer,
            spec.max_new_tokens,
            output_dir=folder,
            batch_size=self.config.eval_batch_size,
        )
        fields = task_fields(result)
        if split == "eval":
            outputs = [
                json.loads(line)["output"] for line in (folder / f"{skill}.predictions.jsonl").read_text().splitlines()
            ]
            fields["repetition_rate"] = statistics.fmean(float(repeats_itself(o)) for o in outputs)
            fields["mean_words"] = statistics.fmean(len(o.split()) for o in outputs)
        return fields

    # ------------------------------------------------------------------------------------------ the plan
    def chosen_rate(self, skill: str, method: str) -> float:
        """The method's rate with the best validation score on the first seed (ties: the smaller rate)."""
        c = self.config
        scores = {
            lr: self.done(sweep_unit_name(skill, method, lr, c.seeds[0]))["validation"][skill]["score"]
            for lr in c.learning_rates
        }
        return max(sorted(scores), key=lambda lr: scores[lr])  # max keeps the first (smallest) of equal scores

    def run(self) -> dict[str, Any]:
        c = self.config
        self.base_unit()
        self.checks_unit()
        # every skill's sweep before any repeat seed: a study cut short still has each skill's full picture
        for skill in c.skills:
            for method in c.methods:
                for lr in c.learning_rates:
                    self.run_unit(sweep_unit_name(skill, method, lr, c.seeds[0]), skill, method, lr, c.seeds[0])
        for skill in c.skills:
            for method in c.methods:
                lr = self.chosen_rate(skill, method)
                for seed in c.seeds[1:]:
                    self.run_unit(sweep_unit_name(skill, method, lr, seed), skill, method, lr, seed)
        for ablation in c.ablations:
            for skill in ablation.get("skills", c.skills):
                lr = self.chosen_rate(skill, ablation["method"])
                method, label = ablation["method"], ablation["name"]
                for seed in ablation.get("seeds", c.seeds[:1]):
                    self.run_unit(
                        f"{skill}-{method}-{label}-lr{lr:g}-seed{seed}",
                        skill,
                        method,
                        lr,
                        seed,
                        ablation["overrides"],
                        kind=f"ablation:{label}",
                    )
        if c.chain_skill:
            self.chain()
        return self.report()

    def chain(self) -> None:
        c, first, second = self.config, self.config.skills[0], self.config.chain_skill
        self.cross_unit("base", second)
        for method in c.methods:
            for lr in c.learning_rates:
                self.cross_unit(sweep_unit_name(first, method, lr, c.seeds[0]), second)
        lr = self.chosen_rate(first, "sdft")
        for variant in c.chain_variants:
            parent = sweep_unit_name(first, "sdft", lr, c.seeds[0]) if variant["from"] == "first" else None
            self.run_unit(
                f"chain-{second}-sdft-{variant['name']}-lr{lr:g}-seed{c.seeds[0]}",
                second,
                "sdft",
                lr,
                c.seeds[0],
                variant.get("overrides", {}),
                kind=f"chain:{variant['name']}",
                parent=parent,
                also_scored=[first],
            )

    def report(self) -> dict[str, Any]:
        units = {p.stem: json.loads(p.read_text()) for p in sorted(self.units_dir.glob("*.json"))}
        result = summarize(self.config, units)
        self.out.mkdir(parents=True, exist_ok=True)
        write_report(result, self.out)
        return result


# ------------------------------------------------------------------------------------------ summaries
def sweep_unit_name(skill: str, method: str, lr: float, seed: int) -> str:
    return f"{skill}-{method}-lr{lr:g}-seed{seed}"


def task_fields(result: TaskResult) -> dict[str, Any]:
    """A task's score and every item's 0/1 in item order, as a string (paired intervals need them)."""
    return {
        "score": result.score,
        "n": result.n,
        "metrics": result.metrics,
        "items": "".join("1" if s >= 0.5 else "0" for s in result.item_scores),
    }


def training_summary(metrics: list[dict[str, float]]) -> dict[str, Any]:
    if not metrics:
        return {}
    keys = ("completion_tokens_mean", "eos_fraction", "divergence", "cross_entropy")
    first, last = metrics[: max(1, len(metrics) // 4)], metrics[-max(1, len(metrics) // 4) :]
    out: dict[str, Any] = {"steps": len(metrics), "final_loss": metrics[-1]["loss"]}
    for key in keys:
        if key in metrics[0]:
            out[f"{key}_first_quarter"] = statistics.fmean(m[key] for m in first)
            out[f"{key}_last_quarter"] = statistics.fmean(m[key] for m in last)
    return out


def _results(unit: dict[str, Any], ids: dict[str, list[str]]) -> dict[str, TaskResult]:
    return {
        task: TaskResult(task, "", fields["score"], fields["n"], ids[task], [float(b) for b in fields["items"]])
        for task, fields in unit["prior"].items()
    }


def summarize(config: StudyConfig, units: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """experiment.json's fields from the finished units (any subset of the plan)."""
    base = units.get("base")
    result: dict[str, Any] = {
        "model": config.model,
        "config": asdict(config),
        "prior_items_per_task": config.prior_items_per_task,
        "base": None,
        "teacher_check": {},
        "on_policy_check": {},
        "sweep": [],
        "runs": [],
        "ablations": [],
        "sequential": [],
        "targets": [],
    }
    if base is None:
        return result
    base_prior = _results(base, base["item_ids"]["prior"])
    result["base"] = {
        "prior_avg": base["prior_avg"],
        "prior_avg_ci": base["prior_avg_ci"],
        "prior": {t: v["score"] for t, v in base["prior"].items()},
        "new_skill": {s: v["score"] for s, v in base["skills"].items()},
        "validation": {s: v["score"] for s, v in base["validation"].items()},
        "repetition_rate": {s: v.get("repetition_rate") for s, v in base["skills"].items()},
        "kl_prior": base["kl"]["prior"]["mean"],
    }
    result["teacher_check"] = base.get("teacher_check", {})
    result["on_policy_check"] = units.get("checks", {}).get("on_policy", {})
    rows = []
    for unit in units.values():
        if "skill" not in unit or unit["kind"] == "cross" or unit["kind"].startswith("chain:"):
            continue  # the base model, the checks and the chain have their own tables
        skill = unit["skill"]
        prior = _results(unit, base["item_ids"]["prior"])
        row = {
            "skill": skill,
            "method": unit["method"],
            "lr": unit["lr"],
            "seed": unit["seed"],
            "kind": unit["kind"],
            "name": unit["name"],
            "overrides": unit["overrides"],
            "validation": unit["validation"][skill]["score"],
            "new_skill": unit["skills"][skill]["score"],
            "new_skill_delta_ci": list(
                paired_difference_ci(_skill_result(base, skill), _skill_result(unit, skill, base))
            ),
            "prior_avg": unit["prior_avg"],
            "prior_delta_ci": list(paired_difference_ci(base_prior, prior)),
            "prior": {t: v["score"] for t, v in unit["prior"].items()},
            "kl_new_skill": unit["kl"][skill]["mean"],
            "kl_new_skill_ci": unit["kl"][skill]["ci"],
            "kl_prior": unit["kl"]["prior"]["mean"],
            "kl_prior_ci": unit["kl"]["prior"]["ci"],
            "repetition_rate": unit["skills"][skill].get("repetition_rate"),
            "mean_words": unit["skills"][skill].get("mean_words"),
            "train": unit["train"],
        }
        rows.append(row)
    result["sweep"] = sorted(
        (r for r in rows if r["kind"] == "sweep"),
        key=lambda r: (
            config.skills.index(r["skill"]) if r["skill"] in config.skills else 99,
            r["method"],
            r["lr"],
            r["seed"],
        ),
    )
    result["ablations"] = [r for r in rows if r["kind"] != "sweep"]
    prior_ids = base["item_ids"]["prior"]
    for row in result["ablations"]:  # against the default run it changes one setting of: same skill, rate, seed
        default = units.get(sweep_unit_name(row["skill"], row["method"], row["lr"], row["seed"]))
        if default is None:
            continue
        ablation, skill = units[row["name"]], row["skill"]
        row["vs_default"] = {
            "new_skill_delta": row["new_skill"] - default["skills"][skill]["score"],
            "new_skill_delta_ci": list(
                paired_difference_ci(_skill_result(default, skill, base), _skill_result(ablation, skill, base))
            ),
            "prior_delta": row["prior_avg"] - default["prior_avg"],
            "prior_delta_ci": list(paired_difference_ci(_results(default, prior_ids), _results(ablation, prior_ids))),
        }
    for skill in config.skills:
        for method in config.methods:
            first = {
                r["lr"]: r
                for r in result["sweep"]
                if (r["skill"], r["method"], r["seed"]) == (skill, method, config.seeds[0])
            }
            if set(first) != set(config.learning_rates):
                continue  # the sweep of this method is not finished
            lr = max(sorted(first), key=lambda rate: first[rate]["validation"])
            seeds = [r for r in result["sweep"] if (r["skill"], r["method"], r["lr"]) == (skill, method, lr)]
            result["runs"].append(frontier_point(skill, method, lr, seeds, result["base"]))
    result["targets"] = target_lines(result)
    result["sequential"] = chain_rows(config, units, base_prior)
    return result


def chain_rows(config: StudyConfig, units: dict[str, dict[str, Any]], base_prior: dict[str, TaskResult]) -> list:
    """The chain's rows: each first-skill model (and the base) scored on the chain skill, then the chain skill's
    SDFT models with the paired interval of their chain-skill score minus the base's on the same items."""
    second, rows = config.chain_skill, []
    base_cross = units.get(f"cross-{second}-base")
    for unit in units.values():
        if unit.get("kind") == "cross":
            parent = units.get(unit["parent"], {})
            fields = unit["skills"][unit["skill"]]
            rows.append(
                {
                    "kind": "cross",
                    "name": unit["name"],
                    "parent": unit["parent"],
                    "method": parent.get("method"),
                    "lr": parent.get("lr"),
                    "skill": unit["skill"],
                    "score": fields["score"],
                    "repetition_rate": fields["repetition_rate"],
                    "mean_words": fields["mean_words"],
                }
            )
    for unit in units.values():
        if not unit.get("kind", "").startswith("chain:"):
            continue
        skill, first = unit["skill"], config.skills[0]
        fields = unit["skills"][skill]
        row = {
            "kind": unit["kind"],
            "name": unit["name"],
            "parent": unit["parent"] or "base",
            "method": "sdft",
            "lr": unit["lr"],
            "overrides": unit["overrides"],
            "skill": skill,
            "score": fields["score"],
            "repetition_rate": fields["repetition_rate"],
            "mean_words": fields["mean_words"],
            "first_skill": first,
            "first_skill_score": unit["skills"][first]["score"],
            "first_skill_repetition_rate": unit["skills"][first]["repetition_rate"],
            "prior_avg": unit["prior_avg"],
            "prior_delta_ci": list(
                paired_difference_ci(base_prior, _results(unit, units["base"]["item_ids"]["prior"]))
            ),
            "kl_new_skill": unit["kl"][skill]["mean"],
            "kl_prior": unit["kl"]["prior"]["mean"],
            "train": unit["train"],
        }
        if base_cross is not None:
            ids = [str(i) for i in range(fields["n"])]  # the same items in the same order for every model
            before = base_cross["skills"][skill]
            row["score_delta_ci"] = list(
                paired_difference_ci(
                    TaskResult(skill, "", before["score"], before["n"], ids, [float(b) for b in before["items"]]),
                    TaskResult(skill, "", fields["score"], fields["n"], ids, [float(b) for b in fields["items"]]),
                )
            )
        rows.append(row)
    return rows


def _skill_result(unit: dict[str, Any], skill: str, base: dict[str, Any] | None = None) -> TaskResult:
    ids = (base or unit)["item_ids"]["skills"][skill]["eval"]
    fields = unit["skills"][skill]
    return TaskResult(skill, "", fields["score"], fields["n"], ids, [float(b) for b in fields["items"]])


def frontier_point(skill: str, method: str, lr: float, seeds: list[dict[str, Any]], base: dict[str, Any]) -> dict:
    new = [r["new_skill"] for r in seeds]
    prior = [r["prior_avg"] for r in seeds]
    kl_new, kl_prior = [r["kl_new_skill"] for r in seeds], [r["kl_prior"] for r in seeds]
    return {
        "skill": skill,
        "method": method,
        "lr": lr,
        "seeds": len(seeds),
        "new_skill_mean": statistics.fmean(new),
        "new_skill_ci": list(mean_ci(new)),
        "new_skill_per_seed": new,
        "prior_avg_mean": statistics.fmean(prior),
        "prior_avg_ci": list(mean_ci(prior)),
        "prior_avg_per_seed": prior,
        "prior_drop": base["prior_avg"] - statistics.fmean(prior),
        "prior_delta_ci_per_seed": [r["prior_delta_ci"] for r in seeds],
        "kl_new_skill_mean": statistics.fmean(kl_new),
        "kl_new_skill_ci": list(mean_ci(kl_new)),
        "kl_prior_mean": statistics.fmean(kl_prior),
        "kl_prior_ci": list(mean_ci(kl_prior)),
        "repetition_rate_mean": statistics.fmean(r["repetition_rate"] or 0.0 for r in seeds),
        "prior_tasks_mean": {t: statistics.fmean(r["prior"][t] for r in seeds) for t in seeds[0]["prior"]},
    }


def target_lines(result: dict[str, Any]) -> list[str]:
    """The issue's target per skill: SFT's forgetting is real (its prior average at the highest rate at least 3
    points below base, paired interval excluding 0); SDFT's new skill at least SFT's minus 1 point; SDFT's prior
    drop at most half of SFT's."""
    lines = []
    for skill in sorted({r["skill"] for r in result["runs"]}):
        by = {r["method"]: r for r in result["runs"] if r["skill"] == skill}
        sft_rows = [r for r in result["sweep"] if (r["skill"], r["method"], r["seed"]) == (skill, "sft", 0)]
        if not {"sft", "sdft"} <= by.keys() or not sft_rows:
            continue
        top = max(sft_rows, key=lambda r: r["lr"])
        drop = result["base"]["prior_avg"] - top["prior_avg"]
        real = drop >= 0.03 and top["prior_delta_ci"][1] < 0
        sft, sdft = by["sft"], by["sdft"]
        skill_ok = sdft["new_skill_mean"] >= sft["new_skill_mean"] - 0.01
        drop_ok = sdft["prior_drop"] <= max(0.0, sft["prior_drop"]) / 2 and sft["prior_drop"] > 0
        lines.append(
            f"{skill}: forgetting exists: SFT at lr {top['lr']:g} is {100 * drop:.1f} points below base "
            f"(paired 95% CI of model - base [{100 * top['prior_delta_ci'][0]:+.1f}, "
            f"{100 * top['prior_delta_ci'][1]:+.1f}]): {'yes' if real else 'NO'}. "
            f"New skill SDFT {_pct(sdft['new_skill_mean'])} vs SFT {_pct(sft['new_skill_mean'])} "
            f"({'met' if skill_ok else 'missed'}: at least SFT - 1). Prior drop (base - model, points) SDFT "
            f"{100 * sdft['prior_drop']:.1f} vs SFT {100 * sft['prior_drop']:.1f} ({'met' if drop_ok else 'missed'}: "
            "at most half of SFT's, "
            f"SFT's > 0)."
        )
    return lines


# ------------------------------------------------------------------------------------------ report
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _ci(interval: list[float], scale: float = 100.0, digits: int = 1, signed: bool = True) -> str:
    """An interval; `signed` for differences (a score or a KL is not a difference: no sign)."""
    sign = "+" if signed else ""
    return f"[{scale * interval[0]:{sign}.{digits}f}, {scale * interval[1]:{sign}.{digits}f}]"


def write_report(result: dict[str, Any], out: Path) -> None:
    (out / "experiment.json").write_text(json.dumps(result, indent=1) + "\n")
    base = result["base"]
    lines = [
        f"# The forgetting study: SFT vs DFT vs SDFT on {result['model']}",
        "",
        "Made by `make study` (`.venv/bin/python experiments/study.py`); the units it has finished so far.",
        f"Scores in %; prior = the average of {', '.join(PRIOR_SUITE)} at {result['prior_items_per_task']} "
        "items each, the same items for every model; Δ prior = model − base with a paired bootstrap 95% "
        "interval; KL = KL(base ‖ model) in nats per token on the base model's samples of the skill's eval "
        "prompts (new) and of prior-suite prompts (prior).",
        "",
    ]
    if base is None:
        (out / "report.md").write_text("\n".join(lines + ["No unit has finished yet.", ""]))
        return
    lines += ["## Base model", "", "| | score |", "|---|---|"]
    lines += [f"| {t} | {_pct(s)} |" for t, s in base["prior"].items()]
    lines += [
        f"| prior average | {_pct(base['prior_avg'])} (95% CI {_pct(base['prior_avg_ci'][0])}–"
        f"{_pct(base['prior_avg_ci'][1])}) |"
    ]
    lines += [f"| skill: {s} (eval) | {_pct(v)} |" for s, v in base["new_skill"].items()]
    lines += [
        "",
        "## Teacher check (greedy, training items)",
        "",
        "| skill | teacher mode | n | student | teacher | clearly better |",
        "|---|---|---|---|---|---|",
    ]
    for skill, check in result["teacher_check"].items():
        lines.append(
            f"| {skill} | {check['teacher_mode']} | {check['n']} | {_pct(check['student_score'])} | "
            f"{_pct(check['teacher_score'])} | {'yes' if check['teacher_clearly_better'] else 'NO'} |"
        )
    if result["on_policy_check"]:
        lines += [
            "",
            "## On-policy check (base model, the student's own samples; see sdft teacher-check)",
            "",
            "| skill | student samples right | reward AUC, loss tokens | reward AUC, all tokens | P(end) after a "
            "demonstration | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for skill, check in result["on_policy_check"].items():
            auc, auc_all = check["reward_auc"], check["reward_auc_all_tokens"]
            lines.append(
                f"| {skill} | {_pct(check['student_sample_score'])} | "
                f"{'-' if auc is None else f'{auc:.2f}'} | {'-' if auc_all is None else f'{auc_all:.2f}'} | "
                f"{check['teacher_stop_probability']:.2f} | {check['verdict']} |"
            )
    if result["runs"]:
        lines += [
            "",
            "## Frontier points (each method at its validation-chosen rate, mean over seeds [95% t interval])",
            "",
            "| skill | method | lr | seeds | new skill | prior average | prior drop | KL new | KL prior |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in result["runs"]:
            lines.append(
                f"| {r['skill']} | {r['method']} | {r['lr']:g} | {r['seeds']} | {_pct(r['new_skill_mean'])} "
                f"{_ci(r['new_skill_ci'], signed=False)} | {_pct(r['prior_avg_mean'])} | "
                f"{100 * r['prior_drop']:.1f} | "
                f"{r['kl_new_skill_mean']:.4f} | {r['kl_prior_mean']:.4f} |"
            )
    if result["targets"]:
        lines += ["", "## Target", ""] + [f"- {line}" for line in result["targets"]]
    for title, rows in (("Sweep (every model)", result["sweep"]), ("Ablations", result["ablations"])):
        if not rows:
            continue
        lines += [
            "",
            f"## {title}",
            "",
            "| skill | method | lr | seed | settings | validation | new skill | Δ new skill | prior | Δ prior "
            "| KL new | KL prior | loops | words |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "defaults"
            lines.append(
                f"| {r['skill']} | {r['method']} | {r['lr']:g} | {r['seed']} | {settings} | "
                f"{_pct(r['validation'])} | {_pct(r['new_skill'])} | {_ci(r['new_skill_delta_ci'])} | "
                f"{_pct(r['prior_avg'])} | {_ci(r['prior_delta_ci'])} | {r['kl_new_skill']:.4f} "
                f"{_ci(r['kl_new_skill_ci'], 1, 4, signed=False)} | {r['kl_prior']:.4f} | "
                f"{_pct(r['repetition_rate'])} | "
                f"{r['mean_words']:.1f} |"
            )
    compared = [r for r in result["ablations"] if "vs_default" in r]
    if compared:
        lines += [
            "",
            "## Ablations against the default run (same skill, method, rate and seed; paired 95% intervals)",
            "",
            "| skill | method | lr | seed | settings | new skill: default → ablation | difference | prior: default → "
            "ablation | difference |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in compared:
            d = r["vs_default"]
            settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items())
            lines.append(
                f"| {r['skill']} | {r['method']} | {r['lr']:g} | {r['seed']} | {settings} | "
                f"{_pct(r['new_skill'] - d['new_skill_delta'])} → {_pct(r['new_skill'])} | "
                f"{100 * d['new_skill_delta']:+.1f} {_ci(d['new_skill_delta_ci'])} | "
                f"{_pct(r['prior_avg'] - d['prior_delta'])} → {_pct(r['prior_avg'])} | "
                f"{100 * d['prior_delta']:+.1f} {_ci(d['prior_delta_ci'])} |"
            )
    lines += chain_lines(result["sequential"])
    lines += ["", "![new skill vs prior average](pareto.png)", "", "![new skill vs KL to base](drift.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    plot(result, out)


def chain_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    cross = [r for r in rows if r["kind"] == "cross"]
    chained = [r for r in rows if r["kind"] != "cross"]
    lines = ["", "## Sequential chain", ""]
    if cross:
        lines += [
            f"The first link: each model of the sweep (seed 0) scored on {cross[0]['skill']}, the chain's next "
            "skill, greedy; loops = answers stuck in a repetition.",
            "",
            "| model | method | lr | score | loops | words |",
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(cross, key=lambda r: (r["method"] or "", r["lr"] or 0)):
            lr = "-" if r["lr"] is None else f"{r['lr']:g}"
            lines.append(
                f"| {r['parent']} | {r['method'] or '-'} | {lr} | {_pct(r['score'])} | "
                f"{_pct(r['repetition_rate'])} | {r['mean_words']:.1f} |"
            )
    if chained:
        lines += [
            "",
            "The second link: SDFT on the next skill, from the first skill's SDFT model or from the base; "
            "Δ = model − base on the same items (paired 95% interval); ended = share of the student's own "
            "training samples that ended before the token budget (first / last quarter of training).",
            "",
            "| variant | from | settings | score | Δ | loops | words | first skill | prior | Δ prior "
            "| KL prior | ended |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in chained:
            settings = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "defaults"
            delta = _ci(r["score_delta_ci"]) if "score_delta_ci" in r else "-"
            train = r["train"]
            ended = f"{_pct(train.get('eos_fraction_first_quarter'))} / {_pct(train.get('eos_fraction_last_quarter'))}"
            variant = r["kind"].split(":", 1)[1]
            lines.append(
                f"| {variant} | {r['parent']} | {settings} | {_pct(r['score'])} | {delta} | "
                f"{_pct(r['repetition_rate'])} | {r['mean_words']:.1f} | {r['first_skill']} "
                f"{_pct(r['first_skill_score'])} | {_pct(r['prior_avg'])} | {_ci(r['prior_delta_ci'])} | "
                f"{r['kl_prior']:.4f} | {ended} |"
            )
    return lines


def plot(result: dict[str, Any], out: Path) -> None:
    """Per skill: new skill vs prior average, and new skill vs KL to base; one curve per method over its rates
    (seed 0), its frontier point's seed mean marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skills = sorted({r["skill"] for r in result["sweep"]})
    if not skills:
        return
    colors = {"sft": "tab:red", "dft": "tab:orange", "sdft": "tab:blue"}
    for filename, key, label in (
        ("pareto.png", "prior_avg", "prior-capability average %"),
        ("drift.png", "kl_new_skill", "KL(base ‖ model) on the skill's prompts, nats/token"),
    ):
        fig, axes = plt.subplots(1, len(skills), figsize=(5.5 * len(skills), 4.2), squeeze=False)
        for ax, skill in zip(axes[0], skills):
            scale = 100.0 if key == "prior_avg" else 1.0
            base_y = result["base"]["prior_avg"] * 100 if key == "prior_avg" else 0.0
            ax.scatter([100 * result["base"]["new_skill"][skill]], [base_y], color="black", marker="s", label="base")
            for method, color in colors.items():
                points = sorted(
                    (r for r in result["sweep"] if (r["skill"], r["method"], r["seed"]) == (skill, method, 0)),
                    key=lambda r: r["lr"],
                )
                if not points:
                    continue
                ax.plot(
                    [100 * r["new_skill"] for r in points],
                    [scale * r[key] for r in points],
                    "-o",
                    color=color,
                    label=method.upper(),
                    alpha=0.8,
                )
                for r in points:
                    ax.annotate(
                        f"{r['lr']:g}",
                        (100 * r["new_skill"], scale * r[key]),
                        fontsize=7,
                        textcoords="offset points",
                        xytext=(3, 3),
                    )
                for run in (r for r in result["runs"] if (r["skill"], r["method"]) == (skill, method)):
                    y = scale * (run["prior_avg_mean"] if key == "prior_avg" else run["kl_new_skill_mean"])
                    ax.scatter([100 * run["new_skill_mean"]], [y], color=color, marker="*", s=160, edgecolor="k")
            ax.set_xlabel(f"{skill} (new skill, eval) %")
            ax.set_ylabel(label)
            ax.set_title(f"{skill}: rates of the sweep (seed 0); ★ = chosen rate, seed mean")
            ax.title.set_fontsize(9)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=120)
        plt.close(fig)


def commit_file(path: Path, message: str, attempts: int = 5) -> None:
    """Commit one file alone (the rest of the index is left as it is) to the repository that holds it, which may
    not be this script's (a study pinned to a worktree writes into the main checkout); retried while another git
    holds the lock."""
    for attempt in range(attempts):
        added = subprocess.run(["git", "add", "--", path.name], cwd=path.parent, capture_output=True, text=True)
        done = (
            added.returncode == 0
            and subprocess.run(
                ["git", "commit", "-q", "-m", message, "--", path.name], cwd=path.parent, capture_output=True, text=True
            ).returncode
            == 0
        )
        if done:
            return
        time.sleep(2 + 3 * attempt)
    log.warning("could not commit %s (it stays on disk)", path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML of StudyConfig fields")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "study")
    parser.add_argument(
        "--work",
        type=Path,
        default=ROOT / ".sdft" / "study",
        help="weights, checkpoints, predictions and the base samples' cache (not committed)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=ROOT / "reports" / "experiment.json",
        help="where the summary also goes, for tools (its shape is in this module's docstring)",
    )
    parser.add_argument("--report-only", action="store_true", help="summarize the finished units, train nothing")
    parser.add_argument("--commit", action="store_true", help="git-commit each unit as it lands")
    args = parser.parse_args()
    fields = yaml.safe_load(args.config.read_text()) if args.config else {}
    retain_freed_memory()  # as `sdft train` does: this process trains model after model
    study = Study(StudyConfig(**(fields or {})), args.out, args.work, commit=args.commit)
    # after MLflow's import, which sets up logging its own way; force replaces whatever handlers were there
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", force=True)
    started = time.perf_counter()
    result = study.report() if args.report_only else study.run()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    log.info("done in %.1f min; report: %s", (time.perf_counter() - started) / 60, args.out / "report.md")


if __name__ == "__main__":
    main()
