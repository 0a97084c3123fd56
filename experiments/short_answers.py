"""Why SDFT can lower a short-answer skill although the teacher check passes, and what predicts it beforehand.

    .venv/bin/python experiments/short_answers.py            # ~10 min on 2 CPU cores; writes reports/short_answers.*

A new user adds a format-conversion skill whose answers are about 10 characters: dates written out in words, to be
answered in ISO 8601 ("March 5, 2021" -> "2021-03-05"). The skill folder is made as a user would make it (prompt,
demonstration, answers; `skill.yaml` with the short_answer scorer), under `--work`.

For the base model it measures the greedy teacher check (with vs without the demonstration) and the on-policy
check (`sdft_core.evaluation.teacher_check.on_policy_check`: whether SDFT's implicit reward, log teacher - log
student, ranks the student's right samples above its wrong ones, on the loss tokens and on all tokens). Then it
trains SFT and SDFT with the paper's mask (first 3 completion tokens out of the loss) and without it, at each rate
of `--rates`, and scores every model on the same eval items with a paired bootstrap interval against the base.
"""

from __future__ import annotations

import argparse
import calendar
import gc
import json
import logging
import random
import time
from pathlib import Path

from sdft_core.config import PromptConfig, RolloutConfig, TrainConfig
from sdft_core.evaluation.suite import evaluate_records, paired_difference_ci
from sdft_core.evaluation.tasks import subsample
from sdft_core.evaluation.teacher_check import on_policy_check, teacher_check
from sdft_core.models import load_inference_model, load_tokenizer
from sdft_core.records import records_from_dicts
from sdft_core.skills import Skill, read_skill, write_skill
from sdft_core.trainer import train

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("short_answers")
MODEL = "smollm2-135m-instruct"
TEACHER_MODES = ("inline", "prior_turn")


def date_skill(n: int = 600, seed: int = 0) -> Skill:
    """Dates in words -> ISO 8601, as a user's skill folder would hold them (deterministic)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    while len(rows) < n:
        year, month = rng.randint(1950, 2030), rng.randint(1, 12)
        day = rng.randint(1, calendar.monthrange(year, month)[1])
        if (year, month, day) in seen:
            continue
        seen.add((year, month, day))
        iso = f"{year:04d}-{month:02d}-{day:02d}"
        words = rng.choice(
            [
                f"{calendar.month_name[month]} {day}, {year}",
                f"{day} {calendar.month_name[month]} {year}",
                f"the {day}th of {calendar.month_name[month]}, {year}",
            ]
        )
        rows.append(
            {
                "id": f"date-{len(rows)}",
                "demonstration": iso,
                "answers": [iso],
                "prompt": f"Write the date {words} in ISO 8601 format (YYYY-MM-DD). Answer with the date only.",
            }
        )
    return Skill(
        "dates",
        "Dates in words to ISO 8601",
        "short_answer",
        16,
        "generated",
        {"rollout.max_new_tokens": 16},
        {"demonstrations": rows[:400], "validation": rows[400:450], "eval": rows[450:]},
        task_type="open",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=ROOT / ".sdft" / "short_answers")
    parser.add_argument("--out", type=Path, default=ROOT / "reports" / "short_answers.json")
    parser.add_argument("--rates", type=float, nargs="+", default=[5e-5, 3e-4])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-items", type=int, default=100)
    parser.add_argument("--check-sample", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    folder = write_skill(date_skill(), args.work / "skills")
    skill = read_skill(folder)
    eval_records = subsample(skill.splits["eval"], args.eval_items, seed=1234)
    result = json.loads(args.out.read_text()) if args.out.exists() else {"models": {}}
    result |= {"skill": skill.spec(), "command": "python experiments/short_answers.py", "model": MODEL}

    def evaluate(name: str, path: str) -> None:
        if name in result["models"]:
            return
        model, tokenizer = load_inference_model(path), load_tokenizer(path)
        scores = evaluate_records(
            model,
            tokenizer,
            "dates",
            eval_records,
            skill.scorer,
            skill.max_new_tokens,
            output_dir=args.work / "evals" / name,
        )
        outputs = [
            json.loads(line)["output"]
            for line in (args.work / "evals" / name / "dates.predictions.jsonl").read_text().splitlines()
        ]
        result["item_ids"] = scores.item_ids  # the same eval items, in the same order, for every model
        result["models"][name] = {
            "score": scores.score,
            "items": "".join(str(int(v)) for v in scores.item_scores),
            "exact": scores.metrics.get("exact"),
            "mean_words": sum(len(o.split()) for o in outputs) / len(outputs),
            "example_outputs": outputs[:3],
        }
        if name != "base":
            base = result["models"]["base"]
            from sdft_core.evaluation.suite import TaskResult

            before = TaskResult(
                "dates", "", base["score"], len(base["items"]), result["item_ids"], [float(v) for v in base["items"]]
            )
            result["models"][name]["delta_ci"] = list(paired_difference_ci(before, scores))
        log.info("%s: %.3f", name, scores.score)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        del model
        gc.collect()

    if "checks" not in result or "prior_turn" not in result["checks"]:
        model, tokenizer = load_inference_model(MODEL), load_tokenizer(MODEL)
        demos = skill.splits["demonstrations"]
        result["checks"] = {
            "tokens_per_answer": sum(len(tokenizer(d["demonstration"])["input_ids"]) for d in demos) / len(demos)
        }
        for mode in TEACHER_MODES:
            prompts = PromptConfig(teacher_mode=mode)
            greedy = teacher_check(
                model, tokenizer, demos, skill.scorer, prompts, skill.max_new_tokens, sample=args.check_sample
            )
            on_policy = on_policy_check(
                model,
                tokenizer,
                demos,
                skill.scorer,
                prompts,
                skill.max_new_tokens,
                sample=args.check_sample,
                samples_per_prompt=4,
                skip_first_tokens=3,
            )
            result["checks"][mode] = {
                "teacher_check": {k: v for k, v in greedy.items() if k != "examples"},
                "on_policy": {k: v for k, v in on_policy.items() if k != "examples"},
                "on_policy_examples": [
                    {k: v for k, v in e.items() if k != "completion_ids"} for e in on_policy["examples"][:8]
                ],
            }
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        del model
    evaluate("base", MODEL)
    records = records_from_dicts(skill.splits["demonstrations"], source="dates/demonstrations").accepted
    conditions = [("sft", 0, "inline")] + [("sdft", skip, mode) for mode in TEACHER_MODES for skip in (3, 0)]
    for lr in args.rates:
        for method, skip, mode in conditions:
            name = f"{method}-lr{lr:g}" + (f"-skip{skip}" if method == "sdft" else "")
            name += "-prior_turn" if method == "sdft" and mode == "prior_turn" else ""
            if name in result["models"]:
                continue
            run_dir = args.work / "runs" / name
            config = TrainConfig(
                method=method,
                model=MODEL,
                output_dir=str(run_dir),
                max_steps=args.steps,
                batch_size=args.batch_size,
                micro_batch_size=args.batch_size,
                learning_rate=lr,
                warmup_steps=3,
                seed=0,
                checkpoint_every=args.steps,
                rollout=RolloutConfig(max_new_tokens=skill.max_new_tokens),
                prompts=PromptConfig(teacher_mode=mode),
            )
            config.loss.skip_first_tokens = skip
            started = time.perf_counter()
            train(config, records)
            log.info("%s trained in %.0f s", name, time.perf_counter() - started)
            evaluate(name, str(run_dir / "model"))
    for name, scores in result["models"].items():  # how often the student's own samples ended, late in training
        metrics_path = args.work / "runs" / name / "metrics.jsonl"
        if metrics_path.exists():
            last = [json.loads(line) for line in metrics_path.read_text().splitlines()][-max(1, args.steps // 4) :]
            scores["train_eos_fraction_last_quarter"] = sum(m["eos_fraction"] for m in last) / len(last)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "| model | dates (eval) | Δ vs base [paired 95% CI] | exact | words | samples ended (training) |",
        "|---|---|---|---|---|---|",
    ]
    for name, scores in result["models"].items():
        ci = scores.get("delta_ci")
        delta = f"{100 * (scores['score'] - result['models']['base']['score']):+.1f} "
        ended = scores.get("train_eos_fraction_last_quarter")
        lines.append(
            f"| {name} | {100 * scores['score']:.1f} | "
            + (delta + f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "-")
            + f" | {100 * (scores.get('exact') or 0):.0f} | {scores.get('mean_words', 0):.1f} | "
            + ("-" if ended is None else f"{100 * ended:.0f}%")
            + " |"
        )
    args.out.with_suffix(".md").write_text(f"Made by `{result['command']}` on {MODEL}.\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))
    for mode in TEACHER_MODES:
        checks = result["checks"][mode]
        print(mode, json.dumps(checks["teacher_check"]), json.dumps(checks["on_policy"]))


if __name__ == "__main__":
    main()
