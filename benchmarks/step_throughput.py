"""Seconds per optimizer step of SDFT and SFT on the same data and model, with the phase split.

    .venv/bin/python benchmarks/step_throughput.py                      # embedded SmolLM2-135M, batch 4, 64 tokens
    .venv/bin/python benchmarks/step_throughput.py --steps 10 --batch 8

Each method runs in its own subprocess so that peak memory (RSS on CPU, max allocated on GPU) is its own.
Prints a table and merges rows into reports/throughput.json (newest row per device, model and impl).
Not a test: absolute times drift on shared machines; compare ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TOPICS = [
    ("photosynthesis", "the process by which plants use light energy to turn carbon dioxide and water into glucose "
                       "and oxygen", "C. photosynthesis"),
    ("evaporation", "the change of liquid water into water vapour when it absorbs heat from its surroundings",
     "A. evaporation"),
    ("mitochondria", "the organelles that release energy from food through cellular respiration", "B. mitochondria"),
    ("igneous rock", "rock that forms when molten magma or lava cools and hardens", "D. igneous rock"),
    ("friction", "the force that resists the sliding of one surface over another", "A. friction"),
    ("a wetland", "an area of land that is saturated with water for most of the year", "C. a wetland"),
    ("an isotope", "an atom of an element with a different number of neutrons", "B. an isotope"),
    ("conduction", "the transfer of heat through direct contact between particles", "D. conduction"),
]


def bench_records(count: int) -> list[dict]:
    """Science-style questions of ~60 prompt tokens (chat template included) and ~60-token demonstrations."""
    records = []
    for i in range(count):
        name, definition, answer = TOPICS[i % len(TOPICS)]
        prompt = (f"Question {i}: Which term names {definition}? Choose one option and explain your reasoning "
                  f"briefly. Options: A, B, C or D.")
        demonstration = (f"The question describes {definition}. Scientists call this {name}, and it is the only "
                         f"option that matches every part of the description, so the other options can be ruled "
                         f"out. So the answer is {answer}.")
        records.append({"id": f"bench-{i}", "prompt": prompt, "demonstration": demonstration})
    return records


def device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name()
    for card in ("H200", "H100", "A100", "L40S", "L4"):
        if card in name:
            return card
    return name


def measure(method: str, args: argparse.Namespace) -> dict:
    """One method, in this process: warm-up steps, then measured steps."""
    import torch

    from sdft_core.config import RolloutConfig, TrainConfig
    from sdft_core.records import records_from_dicts
    from sdft_core.trainer import Trainer

    total = args.warmup + args.steps
    records = records_from_dicts(bench_records(args.batch * total)).accepted
    with tempfile.TemporaryDirectory() as output_dir:
        config = TrainConfig(method=method, model=args.model, output_dir=output_dir, max_steps=total,
                             batch_size=args.batch, micro_batch_size=args.micro_batch or args.batch,
                             warmup_steps=1, checkpoint_every=10**9,
                             rollout=RolloutConfig(max_new_tokens=args.new_tokens))
        trainer = Trainer(config, records)
        prompt_tokens = statistics.mean(len(ex.student_ids) for ex in trainer.examples)
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        steps = [trainer.train_step() for _ in range(total)][args.warmup:]
    seconds = [s["step_seconds"] for s in steps]
    generated = sum(s["completion_tokens_mean"] * args.batch for s in steps)
    generation_time = sum(s["time_generation"] for s in steps)
    peak_mb = (torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available()
               else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "device": device_name(), "model": args.model, "impl": f"ours_{method}", "batch": args.batch,
        "new_tokens": args.new_tokens, "s_per_step_median": statistics.median(seconds),
        "s_per_step_min": min(seconds), "s_per_step_max": max(seconds),
        "gen_tokens_per_s": generated / generation_time if generation_time else 0.0, "peak_mem_mb": peak_mb,
        "prompt_tokens_mean": prompt_tokens,
        "completion_tokens_mean": statistics.mean(s["completion_tokens_mean"] for s in steps),
        "phases_median_s": {p: statistics.median(s[f"time_{p}"] for s in steps)
                            for p in ("generation", "teacher", "student", "optimizer")},
        "steps_measured": args.steps,
    }


def merge_report(path: Path, rows: list[dict]) -> None:
    existing = json.loads(path.read_text())["rows"] if path.exists() else []
    keys = {(r["device"], r["model"], r["impl"]) for r in rows}
    kept = [r for r in existing if (r["device"], r["model"], r["impl"]) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": kept + rows}, indent=2) + "\n")


def print_table(rows: list[dict], machine: str) -> None:
    print(f"\nmachine: {machine}")
    header = (f"{'impl':<10} {'device':<6} {'s/step med':>10} {'[min..max]':>15} {'gen tok/s':>9} "
              f"{'generation':>10} {'teacher':>8} {'student':>8} {'opt+EMA':>8} {'peak MB':>8}")
    print(header)
    print("-" * len(header))
    for r in rows:
        p = r["phases_median_s"]
        print(f"{r['impl']:<10} {r['device']:<6} {r['s_per_step_median']:>10.3f} "
              f"{'[{:.3f}..{:.3f}]'.format(r['s_per_step_min'], r['s_per_step_max']):>15} "
              f"{r['gen_tokens_per_s']:>9.1f} "
              f"{p['generation']:>10.3f} {p['teacher']:>8.3f} {p['student']:>8.3f} {p['optimizer']:>8.3f} "
              f"{r['peak_mem_mb']:>8.0f}")
    by_impl = {r["impl"]: r for r in rows}
    if {"ours_sdft", "ours_sft"} <= by_impl.keys():
        ratio = by_impl["ours_sdft"]["s_per_step_median"] / by_impl["ours_sft"]["s_per_step_median"]
        print(f"SDFT/SFT wall-time ratio per step: {ratio:.2f}x")
    sdft = by_impl.get("ours_sdft")
    if sdft:
        print(f"prompt tokens (mean): {sdft['prompt_tokens_mean']:.0f}, generated tokens per completion (mean): "
              f"{sdft['completion_tokens_mean']:.1f} of {sdft['new_tokens']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=None, help="default: the whole batch at once")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--methods", default="sdft,sft")
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "throughput.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one method, result as the last line of stdout
        print(json.dumps(measure(args.child, args)))
        return

    rows = []
    for method in args.methods.split(","):
        argv = [a for a in sys.argv[1:]]
        result = subprocess.run([sys.executable, __file__, *argv, "--child", method], capture_output=True, text=True,
                                env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if result.returncode != 0:
            sys.exit(f"{method} failed:\n{result.stderr[-4000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    machine = f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print_table(rows, machine)
    merge_report(args.report, rows)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
