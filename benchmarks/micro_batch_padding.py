"""How much of the teacher's forward is padding, with micro-batches in the step's sampled order and grouped by
length as the trainer groups them (`Trainer.accumulate_gradients`).

    .venv/bin/python benchmarks/micro_batch_padding.py --skill data/skills/science --batch 32 --micro-batch 4

Every completion is taken as --new-tokens long, so only the prompts' lengths differ: what grouping saves on real
rollouts, whose lengths differ too, is at least this. Deterministic; no model forward runs.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sdft_core.config import TrainConfig
from sdft_core.records import read_jsonl, records_from_dicts
from sdft_core.trainer import Trainer


def padded_tokens(lengths: list[int], micro: int) -> int:
    return sum(len(lengths[i : i + micro]) * max(lengths[i : i + micro]) for i in range(0, len(lengths), micro))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skill", type=Path, default=Path("data/skills/science"))
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()

    records = records_from_dicts(read_jsonl(args.skill / "demonstrations.jsonl")).accepted
    with tempfile.TemporaryDirectory() as output_dir:
        trainer = Trainer(
            TrainConfig(
                method="sdft",
                model=args.model,
                output_dir=output_dir,
                max_steps=args.steps,
                batch_size=args.batch,
                micro_batch_size=args.micro_batch,
            ),
            records,
        )
    completion = [0] * args.new_tokens
    real = sampled = grouped = 0
    for step in range(args.steps):
        lengths = [trainer.forward_length(example, completion) for example, _ in trainer.step_rows(step)]
        real += sum(lengths)
        sampled += padded_tokens(lengths, args.micro_batch)
        grouped += padded_tokens(sorted(lengths), args.micro_batch)
    print(
        f"{args.skill}: {len(records)} records, {args.steps} steps of {args.batch} rows in micro-batches of "
        f"{args.micro_batch}, {args.new_tokens} completion tokens"
    )
    print(
        f"teacher forward: padding adds {100 * (sampled / real - 1):.1f}% to its real tokens in sampled order, "
        f"{100 * (grouped / real - 1):.1f}% grouped by length"
    )


if __name__ == "__main__":
    main()
