"""The experiment: does SDFT learn a new skill while keeping prior capabilities better than SFT and DFT?

    .venv/bin/python experiments/sdft_vs_sft.py                       # full run, sized for ~2 h on 2 CPU cores
    .venv/bin/python experiments/sdft_vs_sft.py --config my.yaml      # other sizes / model / skills

On the embedded SmolLM2-135M-Instruct, for each skill (default science and tool_use): base vs SFT vs DFT vs SDFT,
the same learning-rate sweep for every method (seed 0, chosen on the skill's validation split), then every
method at its chosen rate with all seeds, each model scored on the skill's eval split and on the prior-capability
suite. Then the sequential run (default tool_use -> science -> medical) with SFT and with SDFT, scoring every
skill and the prior suite after each stage.

Everything lands under `--out` (default reports/experiment): one folder per training run and per evaluation
(predictions beside scores), `report.md`, `pareto.png`, `sequential.png`, and `experiment.json`, which is also
written to `--json` (default reports/experiment.json) in this shape, scores as fractions:

    {"model": str, "base": {"prior_avg": float, "new_skill": {skill: float}, ...},
     "runs": [{"skill", "method": "sft"|"dft"|"sdft", "seeds": int, "new_skill_mean", "new_skill_ci": [lo, hi],
               "prior_avg_mean", "prior_avg_ci": [lo, hi], ...}],
     "sequential": [{"method", "after": skill, "scores": {skill: float}, "prior_avg": float}], ...}

Work already done is reused, so a crashed run continues where it stopped. Runs are logged to MLflow
(`MLFLOW_TRACKING_URI`, default sqlite:///mlflow.db).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdft_core.config import PromptConfig, RolloutConfig, TrainConfig, with_overrides  # noqa: E402
from sdft_core.evaluation.suite import (  # noqa: E402
    TaskResult,
    average,
    average_ci,
    evaluate_records,
    evaluate_suite,
    mean_ci,
)
from sdft_core.evaluation.tasks import PRIOR_SUITE, subsample  # noqa: E402
from sdft_core.evaluation.teacher_check import teacher_check  # noqa: E402
from sdft_core.records import records_from_dicts  # noqa: E402
from sdft_core.skills import BUILDERS, Skill, read_skill  # noqa: E402
from sdft_core.trainer import TrainerCallback, train  # noqa: E402

log = logging.getLogger("experiment")


@dataclass
class ExperimentConfig:
    model: str = "smollm2-135m-instruct"
    skills: list[str] = field(default_factory=lambda: ["science", "tool_use"])
    methods: list[str] = field(default_factory=lambda: ["sft", "dft", "sdft"])
    learning_rates: list[float] = field(default_factory=lambda: [5e-5, 2e-4])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    steps: int = 8
    batch_size: int = 6
    warmup_steps: int = 2
    prior_limit: int = 40  # items per prior-capability task
    eval_limit: int = 60  # items of each skill's eval split
    validation_limit: int = 30
    teacher_check_sample: int = 24
    sequential: list[str] = field(default_factory=lambda: ["tool_use", "science", "medical"])
    sequential_methods: list[str] = field(default_factory=lambda: ["sft", "sdft"])
    skills_dir: str = "data/skills"  # bundled skills are built from the packages when missing here
    eval_batch_size: int = 16
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every run, dotted keys


# ------------------------------------------------------------------------------------------- plumbing
class MlflowSteps(TrainerCallback):
    def __init__(self, mlflow):
        self.mlflow = mlflow

    def on_step_end(self, step, metrics):
        self.mlflow.log_metrics({f"train/{k}": v for k, v in metrics.items() if k != "step"}, step=step)


class Experiment:
    def __init__(self, config: ExperimentConfig, out: Path):
        self.config, self.out = config, out
        self.skills: dict[str, Skill] = {}
        import mlflow

        self.mlflow = mlflow
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", f"sqlite:///{ROOT / 'mlflow.db'}"))
        mlflow.set_experiment("sdft-experiment")

    def skill(self, name: str) -> Skill:
        if name not in self.skills:
            folder = Path(self.config.skills_dir) / name
            self.skills[name] = read_skill(folder) if (folder / "skill.yaml").exists() else BUILDERS[name](0)
        return self.skills[name]

    # ------------------------------------------------------------------------------ training
    def train_run(self, skill: str, method: str, lr: float, seed: int, parent: str, name: str) -> Path:
        run_dir = self.out / "runs" / name
        if (run_dir / "model" / "model.safetensors").exists():
            return run_dir / "model"
        spec = self.skill(skill)
        config = TrainConfig(method=method, model=parent, output_dir=str(run_dir), max_steps=self.config.steps,
                             batch_size=self.config.batch_size, micro_batch_size=self.config.batch_size,
                             learning_rate=lr, warmup_steps=self.config.warmup_steps, seed=seed,
                             checkpoint_every=max(1, self.config.steps // 2),
                             rollout=RolloutConfig(max_new_tokens=spec.max_new_tokens),
                             prompts=PromptConfig(teacher_mode=spec.training.get("prompts.teacher_mode", "inline")))
        config = with_overrides(config, self.config.overrides)
        records = records_from_dicts(spec.splits["demonstrations"], source=f"{skill}/demonstrations").accepted
        with self.mlflow.start_run(run_name=name, nested=True):
            self.mlflow.set_tags({"skill": skill, "method": method, "parent": parent, "kind": "training"})
            self.mlflow.log_params({"lr": lr, "seed": seed, "steps": self.config.steps,
                                    "batch_size": self.config.batch_size, "method": method, "skill": skill})
            started = time.perf_counter()
            train(config, records, callbacks=[MlflowSteps(self.mlflow)])
            self.mlflow.log_metric("train_seconds", time.perf_counter() - started)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # only for resuming; 1-2 GB per run
        gc.collect()
        return run_dir / "model"

    # ------------------------------------------------------------------------------ evaluation
    def evaluate(self, model_path: str, name: str, skills: list[str], prior: bool = True,
                 split: str = "eval") -> dict[str, Any]:
        """Scores of a model (cached in out/evals/<name>/<split>.json)."""
        cache = self.out / "evals" / name / f"{split}.json"
        done = json.loads(cache.read_text()) if cache.exists() else {"skills": {}, "prior": None}
        missing = [s for s in skills if s not in done["skills"]]
        if not missing and (done["prior"] is not None or not prior):
            return done
        from sdft_core.models import load_model, load_tokenizer

        tokenizer, model = load_tokenizer(model_path), load_model(model_path).eval()
        limit = self.config.eval_limit if split == "eval" else self.config.validation_limit
        for skill in missing:
            spec = self.skill(skill)
            records = subsample(spec.splits[split], limit, seed=1234)
            result = evaluate_records(model, tokenizer, skill, records, spec.scorer, spec.max_new_tokens,
                                      output_dir=cache.parent / split, batch_size=self.config.eval_batch_size)
            done["skills"][skill] = _task_json(result)
            log.info("%s %s %s: %.3f", name, split, skill, result.score)
        if prior and done["prior"] is None:
            results = evaluate_suite(model, tokenizer, {t: self.config.prior_limit for t in PRIOR_SUITE},
                                     output_dir=cache.parent / "prior", batch_size=self.config.eval_batch_size)
            low, high = average_ci(results)
            done["prior"] = {"average": average(results), "average_ci": [low, high],
                             "tasks": {k: _task_json(r) for k, r in results.items()}}
            log.info("%s prior average: %.3f", name, done["prior"]["average"])
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(done, indent=2))
        del model
        gc.collect()
        return done

    # ------------------------------------------------------------------------------ the plan
    def run(self) -> dict[str, Any]:
        c = self.config
        with self.mlflow.start_run(run_name=f"experiment-{time.strftime('%Y%m%d-%H%M%S')}"):
            self.mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in asdict(c).items()})
            all_skills = sorted(set(c.skills) | set(c.sequential))
            base = self.evaluate(c.model, "base", all_skills)
            checks = {s: self.teacher_check(s) for s in c.skills}
            sweep, chosen, runs = [], {}, []
            for skill in c.skills:
                for method in c.methods:
                    for lr in c.learning_rates:
                        name = f"{skill}-{method}-lr{lr:g}-seed{c.seeds[0]}"
                        model = self.train_run(skill, method, lr, c.seeds[0], c.model, name)
                        score = self.evaluate(str(model), name, [skill], prior=False, split="validation")
                        sweep.append({"skill": skill, "method": method, "lr": lr,
                                      "validation": score["skills"][skill]["score"]})
                    best = max((r for r in sweep if r["skill"] == skill and r["method"] == method),
                               key=lambda r: (r["validation"], -r["lr"]))
                    chosen[(skill, method)] = best["lr"]
                    per_seed = []
                    for seed in c.seeds:
                        name = f"{skill}-{method}-lr{best['lr']:g}-seed{seed}"
                        model = self.train_run(skill, method, best["lr"], seed, c.model, name)
                        per_seed.append(self.evaluate(str(model), name, [skill]))
                    runs.append(self.summarize(skill, method, best["lr"], per_seed, base))
            sequential = self.sequential(chosen, base)
            result = {"model": c.model, "config": asdict(c),
                      "base": {"prior_avg": base["prior"]["average"],
                               "prior_avg_ci": base["prior"]["average_ci"],
                               "prior": {k: v["score"] for k, v in base["prior"]["tasks"].items()},
                               "new_skill": {s: v["score"] for s, v in base["skills"].items()}},
                      "teacher_check": checks, "sweep": sweep, "runs": runs, "sequential": sequential}
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "experiment.json").write_text(json.dumps(result, indent=2) + "\n")
            write_report(result, self.out)
            for artifact in ("experiment.json", "report.md", "pareto.png", "sequential.png"):
                if (self.out / artifact).exists():
                    self.mlflow.log_artifact(str(self.out / artifact))
            for run in runs:
                key = f"{run['skill']}.{run['method']}"
                self.mlflow.log_metrics({f"{key}.new_skill": run["new_skill_mean"],
                                         f"{key}.prior_avg": run["prior_avg_mean"]})
        return result

    def teacher_check(self, skill: str) -> dict[str, Any]:
        cache = self.out / "evals" / "teacher_check" / f"{skill}.json"
        if cache.exists():
            return json.loads(cache.read_text())
        from sdft_core.models import load_model, load_tokenizer

        spec = self.skill(skill)
        tokenizer, model = load_tokenizer(self.config.model), load_model(self.config.model).eval()
        result = teacher_check(model, tokenizer, spec.splits["demonstrations"], spec.scorer,
                               PromptConfig(teacher_mode=spec.training.get("prompts.teacher_mode", "inline")),
                               max_new_tokens=spec.max_new_tokens, sample=self.config.teacher_check_sample,
                               batch_size=self.config.eval_batch_size)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(result, indent=2))
        return result

    def summarize(self, skill, method, lr, per_seed, base) -> dict[str, Any]:
        new = [r["skills"][skill]["score"] for r in per_seed]
        prior = [r["prior"]["average"] for r in per_seed]
        tasks = {t: statistics.fmean(r["prior"]["tasks"][t]["score"] for r in per_seed) for t in PRIOR_SUITE}
        return {"skill": skill, "method": method, "lr": lr, "seeds": len(per_seed),
                "new_skill_mean": statistics.fmean(new), "new_skill_ci": list(mean_ci(new)),
                "prior_avg_mean": statistics.fmean(prior), "prior_avg_ci": list(mean_ci(prior)),
                "new_skill_per_seed": new, "prior_avg_per_seed": prior, "prior_tasks_mean": tasks,
                "prior_drop": base["prior"]["average"] - statistics.fmean(prior)}

    def sequential(self, chosen: dict, base: dict) -> list[dict[str, Any]]:
        c = self.config
        stages = []
        for method in c.sequential_methods:
            parent = c.model
            for index, skill in enumerate(c.sequential):
                tuned = chosen.get((skill, method)) or chosen.get((c.skills[-1], method)) or c.learning_rates[0]
                if index == 0:
                    name = f"{skill}-{method}-lr{tuned:g}-seed{c.seeds[0]}"  # the grid's run, when it has one
                else:
                    name = f"seq-{method}-{'-'.join(c.sequential[:index + 1])}"
                parent = str(self.train_run(skill, method, tuned, c.seeds[0], parent, name))
                scores = self.evaluate(parent, name, c.sequential)
                stages.append({"method": method, "after": skill, "lr": tuned,
                               "scores": {s: scores["skills"][s]["score"] for s in c.sequential},
                               "prior_avg": scores["prior"]["average"]})
        return stages


def _task_json(result: TaskResult) -> dict[str, Any]:
    return {"score": result.score, "n": result.n, "metric": result.metric, "metrics": result.metrics,
            "seconds": result.seconds}


# ------------------------------------------------------------------------------------------- report
def write_report(result: dict[str, Any], out: Path) -> None:
    lines = [f"# SDFT vs SFT vs DFT on {result['model']}", ""]
    base = result["base"]
    lines += ["## Base model", "", f"Prior-capability average: {_pct(base['prior_avg'])} "
              f"(95% CI {_pct(base['prior_avg_ci'][0])}-{_pct(base['prior_avg_ci'][1])})", "",
              "| task | score |", "|---|---|"]
    lines += [f"| {t} | {_pct(s)} |" for t, s in base["prior"].items()]
    lines += [f"| skill: {s} | {_pct(v)} |" for s, v in base["new_skill"].items()]
    lines += ["", "## Teacher check (in-context assumption, greedy, training items)", "",
              "| skill | teacher mode | n | student | teacher | clearly better |", "|---|---|---|---|---|---|"]
    for skill, check in result["teacher_check"].items():
        lines.append(f"| {skill} | {check['teacher_mode']} | {check['n']} | {_pct(check['student_score'])} | "
                     f"{_pct(check['teacher_score'])} | {'yes' if check['teacher_clearly_better'] else 'NO'} |")
    lines += ["", "## Learning-rate sweep (seed 0, validation split)", "", "| skill | method | lr | validation |",
              "|---|---|---|---|"]
    lines += [f"| {r['skill']} | {r['method']} | {r['lr']:g} | {_pct(r['validation'])} |" for r in result["sweep"]]
    lines += ["", "## Main result (mean over seeds, 95% interval)", "",
              "| skill | method | lr | new skill | prior average | prior drop vs base |", "|---|---|---|---|---|---|"]
    for skill in sorted({r["skill"] for r in result["runs"]}):
        lines.append(f"| {skill} | base | - | {_pct(base['new_skill'][skill])} | {_pct(base['prior_avg'])} | - |")
        for r in (r for r in result["runs"] if r["skill"] == skill):
            lines.append(f"| {skill} | {r['method']} | {r['lr']:g} | {_pct(r['new_skill_mean'])} "
                         f"[{_pct(r['new_skill_ci'][0])}, {_pct(r['new_skill_ci'][1])}] | "
                         f"{_pct(r['prior_avg_mean'])} [{_pct(r['prior_avg_ci'][0])}, {_pct(r['prior_avg_ci'][1])}] | "
                         f"{100 * r['prior_drop']:+.1f} |")
    lines += ["", "## Per-benchmark prior scores (mean over seeds)", "",
              "| skill | method | " + " | ".join(PRIOR_SUITE) + " |", "|---|---|" + "---|" * len(PRIOR_SUITE)]
    lines.append("| - | base | " + " | ".join(_pct(base["prior"][t]) for t in PRIOR_SUITE) + " |")
    for r in result["runs"]:
        lines.append(f"| {r['skill']} | {r['method']} | " +
                     " | ".join(_pct(r["prior_tasks_mean"][t]) for t in PRIOR_SUITE) + " |")
    if result["sequential"]:
        skills = list(result["sequential"][0]["scores"])
        lines += ["", "## Sequential training (seed 0)", "",
                  "| method | after | " + " | ".join(skills) + " | prior average |",
                  "|---|---|" + "---|" * (len(skills) + 1)]
        lines.append("| - | base | " + " | ".join(_pct(base["new_skill"][s]) for s in skills) +
                     f" | {_pct(base['prior_avg'])} |")
        for stage in result["sequential"]:
            lines.append(f"| {stage['method']} | {stage['after']} | " +
                         " | ".join(_pct(stage["scores"][s]) for s in skills) + f" | {_pct(stage['prior_avg'])} |")
    lines += ["", "## Target", ""] + target_lines(result)
    lines += ["", "![new skill vs prior average](pareto.png)", "", "![sequential](sequential.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    plot(result, out)


def target_lines(result: dict[str, Any]) -> list[str]:
    """SDFT's prior drop at most half of SFT's, new skill at most 1 point below SFT's."""
    lines = []
    for skill in sorted({r["skill"] for r in result["runs"]}):
        by = {r["method"]: r for r in result["runs"] if r["skill"] == skill}
        if not {"sft", "sdft"} <= by.keys():
            continue
        sft, sdft = by["sft"], by["sdft"]
        drop_ok = sdft["prior_drop"] <= max(0.0, sft["prior_drop"]) / 2
        skill_ok = sdft["new_skill_mean"] >= sft["new_skill_mean"] - 0.01
        lines.append(f"- {skill}: prior drop SFT {100 * sft['prior_drop']:+.1f} vs SDFT "
                     f"{100 * sdft['prior_drop']:+.1f} points ({'met' if drop_ok else 'missed'}: at most half of "
                     f"SFT's); new skill SFT "
                     f"{_pct(sft['new_skill_mean'])} vs SDFT {_pct(sdft['new_skill_mean'])} "
                     f"({'met' if skill_ok else 'missed'}: at most 1 point below).")
    return lines


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skills = sorted({r["skill"] for r in result["runs"]})
    colors = {"base": "black", "sft": "tab:red", "dft": "tab:orange", "sdft": "tab:blue"}
    fig, axes = plt.subplots(1, max(1, len(skills)), figsize=(5 * max(1, len(skills)), 4), squeeze=False)
    for ax, skill in zip(axes[0], skills):
        ax.scatter([100 * result["base"]["new_skill"][skill]], [100 * result["base"]["prior_avg"]],
                   color=colors["base"], label="base", marker="s")
        for r in (r for r in result["runs"] if r["skill"] == skill):
            x, y = 100 * r["new_skill_mean"], 100 * r["prior_avg_mean"]
            ax.errorbar(x, y, xerr=[[x - 100 * r["new_skill_ci"][0]], [100 * r["new_skill_ci"][1] - x]],
                        yerr=[[y - 100 * r["prior_avg_ci"][0]], [100 * r["prior_avg_ci"][1] - y]],
                        fmt="o", color=colors.get(r["method"], "gray"), label=r["method"].upper(), capsize=3)
        ax.set_xlabel(f"{skill} (new skill) %")
        ax.set_ylabel("prior-capability average %")
        ax.set_title(skill)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "pareto.png", dpi=120)
    plt.close(fig)

    if result["sequential"]:
        methods = sorted({s["method"] for s in result["sequential"]})
        skills_seq = list(result["sequential"][0]["scores"])
        fig, axes = plt.subplots(1, len(methods), figsize=(5 * len(methods), 4), squeeze=False, sharey=True)
        for ax, method in zip(axes[0], methods):
            stages = [s for s in result["sequential"] if s["method"] == method]
            xs = ["base"] + [s["after"] for s in stages]
            for skill in skills_seq:
                ys = [result["base"]["new_skill"][skill]] + [s["scores"][skill] for s in stages]
                ax.plot(xs, [100 * y for y in ys], marker="o", label=skill)
            ax.plot(xs, [100 * result["base"]["prior_avg"]] + [100 * s["prior_avg"] for s in stages], marker="s",
                    linestyle="--", color="black", label="prior average")
            ax.set_title(f"{method.upper()}: trained in order {' -> '.join(xs[1:])}")
            ax.set_xlabel("after training on")
            ax.set_ylabel("score %")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "sequential.png", dpi=120)
        plt.close(fig)


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="YAML of ExperimentConfig fields")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "experiment")
    parser.add_argument("--json", type=Path, default=ROOT / "reports" / "experiment.json",
                        help="where the numbers also go, for tools (the shape is in the module docstring)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    fields = yaml.safe_load(args.config.read_text()) if args.config else {}
    config = ExperimentConfig(**(fields or {}))
    started = time.perf_counter()
    result = Experiment(config, args.out).run()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    log.info("experiment finished in %.1f min; report: %s", (time.perf_counter() - started) / 60,
             args.out / "report.md")


if __name__ == "__main__":
    main()
