"""How much `make demo`'s result moves with the training seed: the same command, seeds apart.

    .venv/bin/python experiments/demo_spread.py        # ~15 min per seed on 2 CPU cores; reports/demo_spread.{json,md}

Each seed runs `sdft-pipeline run --skill science --config pipelines/configs/cpu.yaml` (the `make demo` chain) with
`ops.sdft_model.config.seed` set, in its own Dagster instance, MLflow registry and work folder under `--work`, so
every run trains from the base model and none sees another's champion. Evaluation is greedy on the same items, so
the seed moves only the training (data order and the student's samples). A finished seed is kept and skipped on a
rerun. The table gives each run's new-skill gain and prior-average change with their paired 95% intervals and the
gate's decision, then the spread of the gain across seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEEDS = (42, 1, 2)  # 42: TrainConfig's default, the seed `make demo` trains with


def run_seed(seed: int, skill: str, base_config: Path, work: Path) -> dict:
    """One `sdft-pipeline run` in its own instance; its comparison and gate decision."""
    home = work / f"seed{seed}"
    result_path = home / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(base_config.read_text())
    config["ops"]["sdft_model"]["config"]["seed"] = seed
    (home / "run_config.yaml").write_text(yaml.safe_dump(config))
    tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
    env = os.environ | {
        "DAGSTER_HOME": str(home / "dagster"),
        "MLFLOW_TRACKING_URI": tracking_uri,
        "SDFT_WORK_DIR": str(home / "work"),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    started = time.perf_counter()
    with (home / "run.log").open("w") as log:
        command = [str(Path(sys.executable).parent / "sdft-pipeline"), "run", "--skill", skill]
        code = subprocess.call(
            command + ["--config", str(home / "run_config.yaml")],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    minutes = (time.perf_counter() - started) / 60
    found = sorted((home / "work").rglob("comparison.json"))
    if not found:
        raise SystemExit(f"seed {seed}: the run wrote no comparison.json (exit {code}); see {home / 'run.log'}")
    comparison = json.loads(found[-1].read_text())
    result = {
        "seed": seed,
        "exit_code": code,
        "minutes": round(minutes, 1),
        "new_skill": comparison["new_skill"],
        "prior_average": comparison["prior_average"],
        "new_skill_ci": comparison["new_skill_ci"],
        "prior_average_ci": comparison["prior_average_ci"],
        "promoted": champion_exists(tracking_uri),
    }
    result_path.write_text(json.dumps(result, indent=2))
    return result


def champion_exists(tracking_uri: str, model_name: str = "sdft") -> bool:
    """Whether the gate promoted the run's version: each seed's registry starts empty, so any `champion` alias is
    this run's (a failed gate leaves none)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient(tracking_uri).get_model_version_by_alias(model_name, "champion")
    except MlflowException:
        return False
    return True


def summarize(results: list[dict]) -> dict:
    gains = [100 * (r["new_skill"]["candidate"] - r["new_skill"]["parent"]) for r in results]
    changes = [100 * (r["prior_average"]["candidate"] - r["prior_average"]["parent"]) for r in results]
    spread = lambda xs: {  # noqa: E731
        "mean": statistics.fmean(xs),
        "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
    }
    return {
        "seeds": [r["seed"] for r in results],
        "new_skill_gain_points": spread(gains),
        "prior_change_points": spread(changes),
        "promoted": sum(r["promoted"] for r in results),
    }


def write_report(results: list[dict], summary: dict, skill: str, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"skill": skill, "runs": results, "summary": summary}, indent=2))
    points = lambda x: f"{100 * x:+.1f}"  # noqa: E731
    lines = [
        f"# `make demo` across seeds ({skill})",
        "",
        "`.venv/bin/python experiments/demo_spread.py`: the `make demo` chain (pipelines/configs/cpu.yaml) with the",
        "training seed changed, each from the base model in its own instance and registry.",
        "",
        "| seed | parent | candidate | gain | paired 95% CI | prior change | paired 95% CI | gate | minutes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        skill_ci, prior_ci = r["new_skill_ci"], r["prior_average_ci"]
        lines.append(
            f"| {r['seed']} | {100 * r['new_skill']['parent']:.1f} | {100 * r['new_skill']['candidate']:.1f} "
            f"| {points(r['new_skill']['candidate'] - r['new_skill']['parent'])} "
            f"| [{points(skill_ci[0])}, {points(skill_ci[1])}] "
            f"| {points(r['prior_average']['candidate'] - r['prior_average']['parent'])} "
            f"| [{points(prior_ci[0])}, {points(prior_ci[1])}] "
            f"| {'promoted' if r['promoted'] else 'kept the champion'} | {r['minutes']} |"
        )
    gain, change = summary["new_skill_gain_points"], summary["prior_change_points"]
    lines += [
        "",
        f"New-skill gain across {len(results)} seeds: mean {gain['mean']:+.1f} points, sd {gain['sd']:.1f}, "
        f"range [{gain['min']:+.1f}, {gain['max']:+.1f}]. Prior-average change: mean {change['mean']:+.1f}, "
        f"sd {change['sd']:.1f}, range [{change['min']:+.1f}, {change['max']:+.1f}]. "
        f"The gate promoted {summary['promoted']} of {len(results)}.",
    ]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS))
    parser.add_argument("--skill", default="science")
    parser.add_argument("--config", type=Path, default=ROOT / "pipelines" / "configs" / "cpu.yaml")
    parser.add_argument("--work", type=Path, default=ROOT / ".sdft" / "demo_spread")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "demo_spread", help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    results = []
    for seed in args.seeds:
        results.append(run_seed(seed, args.skill, args.config, args.work))
        write_report(results, summarize(results), args.skill, args.out)  # each finished seed is on disk at once
        print(f"seed {seed}: {results[-1]}", flush=True)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
