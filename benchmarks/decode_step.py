"""Milliseconds per decode step of the static-cache decoder (its torch step, and its CPU kernel step when
`sdft-cpu-kernels` is installed) and of the model's own forward (the generic decoder), at several row counts.

    .venv/bin/python benchmarks/decode_step.py --rows 1 4 12 32 64

Each decoder starts from the same prompt pass (random ~70-token prompts) and takes --steps steps, in --rounds
interleaved rounds; the median round is printed. The kernel column is measured at every row count, also above
the decoder's own limit (`CPU_KERNEL_MAX_ROWS`). Not a test: absolute times drift; compare within one run, on an
otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from sdft_core import decoding
from sdft_core.decoding import GenericDecoder, StaticCacheDecoder, cpu_kernels, prompt_pass
from sdft_core.models import load_model


def step_ms(decoder, prompt, rows: int, steps: int) -> float:
    decoder.start(prompt)
    tokens = torch.arange(rows) + 100
    start = time.perf_counter()
    for _ in range(steps):
        decoder.step(tokens)
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 12, 32, 64])
    parser.add_argument("--prompt-tokens", type=int, default=70)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    model = load_model(args.model).eval()
    print(
        f"{args.model}, {torch.get_num_threads()} threads; ms per decode step (median of {args.rounds} rounds "
        f"of {args.steps} steps)"
    )
    kinds = ["static cache", *(["CPU kernel"] if cpu_kernels() else []), "model forward"]
    decoding.CPU_KERNEL_MAX_ROWS = max(args.rows)  # measure the kernel at every row count asked for

    def decoder(kind: str, rows: int, length: int):
        if kind == "model forward":
            return GenericDecoder(model)
        return StaticCacheDecoder(model, rows, length, cpu_kernel=kind == "CPU kernel")

    print(f"{'rows':>5} " + " ".join(f"{kind:>15}" for kind in kinds))
    with torch.no_grad():
        for rows in args.rows:
            generator = torch.Generator().manual_seed(rows)
            prompt_ids = torch.randint(100, model.config.vocab_size, (rows, args.prompt_tokens), generator=generator)
            prompt = prompt_pass(model, prompt_ids, torch.ones_like(prompt_ids))
            length = args.prompt_tokens + args.steps
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            for _ in range(args.rounds):
                for kind in kinds:
                    times[kind].append(step_ms(decoder(kind, rows, length), prompt, rows, args.steps))
            print(f"{rows:>5} " + " ".join(f"{statistics.median(t):>15.1f}" for t in times.values()))


if __name__ == "__main__":
    main()
