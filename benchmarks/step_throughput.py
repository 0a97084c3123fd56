"""Seconds per optimizer step: our SDFT, TRL's SDFTTrainer with matched settings, and our SFT, side by side.

    make bench                        # CPU: the embedded SmolLM2-135M-Instruct, batch 4, ~60-token prompts, 64 new
    python benchmarks/step_throughput.py --model qwen2-0.5b-shape --batch 16 --new-tokens 256   # GPU, random weights

Matched settings (TRL 1.16, `pip install -e '.[bench]'`): full-vocabulary forward KL(teacher || student)
(`distillation_mode="full_logits"`, `distillation_alpha=0.0`), an EMA teacher with rate 0.01, one generation per
prompt at temperature 1.0, the first 3 completion tokens out of the loss, the paper's teacher template, the same
records, batch, learning rate, clipping, prompt and completion lengths, and no vLLM. Every completion is exactly
--new-tokens long in all three (EOS does not stop generation; SFT's demonstrations are cut to that length), so
each implementation does the same work whatever it samples.

Implementations run in separate processes (peak memory is each one's own: RSS on CPU, max allocated on GPU), in
--rounds interleaved rounds so that drift on a shared machine hits all of them alike; step times are pooled over
rounds after --warmup steps per process. The hardware floor is measured in the same run (memory bandwidth and
matrix throughput) and printed beside each phase. Rows merge into reports/throughput.json, newest per device,
model and impl. Not a test: absolute times drift; read the ratios of one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPLS = ("ours_sdft", "trl_sdft", "ours_sft")
PHASES = ("generation", "teacher", "student", "optimizer")
# Random-weight models with real architectures (Qwen2-0.5B / 1.5B shapes) and the embedded model's tokenizer:
# no weights are needed to measure speed.
SHAPES = {
    "qwen2-0.5b-shape": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2
    ),
    "qwen2-1.5b-shape": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2
    ),
}

TOPICS = [
    (
        "photosynthesis",
        "the process by which plants use light energy to turn carbon dioxide and water into glucose and oxygen",
        "C. photosynthesis",
    ),
    (
        "evaporation",
        "the change of liquid water into water vapour when it absorbs heat from its surroundings",
        "A. evaporation",
    ),
    ("mitochondria", "the organelles that release energy from food through cellular respiration", "B. mitochondria"),
    ("igneous rock", "rock that forms when molten magma or lava cools and hardens", "D. igneous rock"),
    ("friction", "the force that resists the sliding of one surface over another", "A. friction"),
    ("a wetland", "an area of land that is saturated with water for most of the year", "C. a wetland"),
    ("an isotope", "an atom of an element with a different number of neutrons", "B. an isotope"),
    ("conduction", "the transfer of heat through direct contact between particles", "D. conduction"),
]


def bench_records(count: int, demonstration_words: int) -> list[dict]:
    """Science-style questions (~60 prompt tokens with the chat template) and demonstrations of at least
    `demonstration_words` words, so that SFT's targets fill the same completion length as SDFT's samples."""
    records = []
    for i in range(count):
        name, definition, answer = TOPICS[i % len(TOPICS)]
        prompt = (
            f"Question {i}: Which term names {definition}? Choose one option and explain your reasoning "
            f"briefly. Options: A, B, C or D."
        )
        sentences = [
            f"The question describes {definition}.",
            f"Scientists call this {name}, and it is the only option that matches every part of the "
            f"description, so the other options can be ruled out.",
        ]
        while sum(len(s.split()) for s in sentences) < demonstration_words:
            other = TOPICS[(i + len(sentences)) % len(TOPICS)]
            sentences.append(f"It is not {other[0]}, which is {other[1]}.")
        sentences.append(f"So the answer is {answer}.")
        records.append({"id": f"bench-{i}", "prompt": prompt, "demonstration": " ".join(sentences)})
    return records


# ------------------------------------------------------------------------------------------------ environment
def device_name() -> str:
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    name = torch.cuda.get_device_name()
    for card in ("H200", "H100", "A100", "L40S", "L4"):
        if card in name:
            return card
    return name


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def model_location(model: str, work: Path, tokenizer_spec: str) -> str:
    """The embedded model as is, or a random-weight model of a named shape saved under `work` (bf16), with the
    tokenizer of `tokenizer_spec`."""
    if model not in SHAPES:
        return model
    target = work / model
    if (target / "config.json").exists():
        return str(target)
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from sdft_core.models import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_spec)
    config = Qwen2Config(
        **SHAPES[model],
        vocab_size=len(tokenizer),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


# ------------------------------------------------------------------------------------------------ our trainer
def run_ours(method: str, args: argparse.Namespace, model: str) -> dict:
    from sdft_core.config import RolloutConfig, TrainConfig
    from sdft_core.records import records_from_dicts
    from sdft_core.trainer import Trainer, retain_freed_memory

    retain_freed_memory()  # as `sdft train` and the pipeline's training process do
    total = args.warmup + args.steps
    records = records_from_dicts(bench_records(args.batch * total, args.new_tokens)).accepted
    with tempfile.TemporaryDirectory() as output_dir:
        config = TrainConfig(
            method=method,
            model=model,
            output_dir=output_dir,
            max_steps=total,
            batch_size=args.batch,
            micro_batch_size=args.micro_batch or args.batch,
            learning_rate=args.learning_rate,
            warmup_steps=1,
            checkpoint_every=10**9,
            rollout=RolloutConfig(max_new_tokens=args.new_tokens),
        )
        trainer = Trainer(config, records)
        trainer.eos_ids = []  # every completion is --new-tokens long, as in the TRL run
        prompt_tokens = {
            "student": statistics.mean(len(ex.student_ids) for ex in trainer.examples),
            "teacher": statistics.mean(len(ex.teacher_ids) for ex in trainer.examples),
        }
        steps = [trainer.train_step() for _ in range(total)][args.warmup :]
    return {
        "step_seconds": [s["step_seconds"] for s in steps],
        "phases": {p: [s[f"time_{p}"] for s in steps] for p in PHASES},
        "completion_tokens": [s["completion_tokens_mean"] for s in steps],
        "prompt_tokens": prompt_tokens,
        "parameters": sum(p.numel() for p in trainer.lm.parameters()),
    }


# ------------------------------------------------------------------------------------------------ TRL
class _PhaseClock:
    """Wall time of TRL's phases, taken from the outside: generation (`_generate`), the teacher's forward (a
    hook pair on the teacher model), the training step (`training_step`, which includes both) and the whole step."""

    def __init__(self):
        self.totals: dict[str, float] = {}
        self.started: dict[str, float] = {}

    def start(self, phase: str) -> None:
        synchronize()
        self.started[phase] = time.perf_counter()

    def stop(self, phase: str) -> None:
        synchronize()
        self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - self.started.pop(phase)

    def wrap(self, phase: str, function):
        def timed(*args, **kwargs):
            self.start(phase)
            try:
                return function(*args, **kwargs)
            finally:
                self.stop(phase)

        return timed

    def take(self) -> dict[str, float]:
        totals, self.totals = self.totals, {}
        return totals


def run_trl(args: argparse.Namespace, model: str) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback

    from sdft_core.config import PAPER_TEACHER_TEMPLATE
    from sdft_core.models import load_tokenizer, resolve_model
    from sdft_core.prompts import encode_messages

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    total = args.warmup + args.steps
    rows = bench_records(args.batch * total, args.new_tokens)
    dataset = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "privileged_context": r["demonstration"]} for r in rows]
    )
    template = PAPER_TEACHER_TEMPLATE.replace("{question}", "{prompt}").replace(
        "{demonstration}", "{privileged_context}"
    )
    location = resolve_model(model)
    tokenizer = load_tokenizer(location)
    tokenizer.padding_side = "left"
    cuda = torch.cuda.is_available()
    lm = AutoModelForCausalLM.from_pretrained(location, dtype=torch.bfloat16 if cuda else torch.float32)
    lm.generation_config.eos_token_id = None
    clock = _PhaseClock()
    step_seconds: list[float] = []
    phases: list[dict[str, float]] = []

    class StepClock(TrainerCallback):
        def on_step_begin(self, *_, **__):
            clock.take()
            clock.start("step")

        def on_step_end(self, *_, **__):
            clock.stop("step")
            totals = clock.take()
            step_seconds.append(totals["step"])
            generation, teacher = totals.get("generation", 0.0), totals.get("teacher", 0.0)
            phases.append(
                {
                    "generation": generation,
                    "teacher": teacher,
                    "student": totals["training_step"] - generation - teacher,
                    "optimizer": totals["step"] - totals["training_step"],
                }
            )

    with tempfile.TemporaryDirectory() as output_dir:
        config = SDFTConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch,
            gradient_accumulation_steps=1,
            max_steps=total,
            learning_rate=args.learning_rate,
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            bf16=cuda,
            logging_steps=10**6,
            report_to="none",
            save_strategy="no",
            seed=0,
            dataloader_num_workers=0,
            num_generations=1,
            max_completion_length=args.new_tokens,
            max_prompt_length=1024,
            distillation_mode="full_logits",
            distillation_alpha=0.0,
            teacher_model_kind="ema",
            teacher_update_rate=0.01,
            num_loss_tokens_to_skip=3,
            temperature=1.0,
            use_vllm=False,
            teacher_prompt_template=template,
        )
        trainer = SDFTTrainer(model=lm, args=config, train_dataset=dataset, processing_class=tokenizer)
        trainer.add_callback(StepClock())  # last, so that the step includes the EMA teacher update callback
        trainer.generation_config.eos_token_id = None  # every completion is --new-tokens long
        trainer.eos_token_ids = [-1]  # ... and none is cut short in the loss mask
        trainer._generate = clock.wrap("generation", trainer._generate)
        trainer.training_step = clock.wrap("training_step", trainer.training_step)
        trainer.teacher_model.register_forward_pre_hook(lambda *_: clock.start("teacher"))
        trainer.teacher_model.register_forward_hook(lambda *_: clock.stop("teacher"))
        trainer.train()
    student_tokens = [len(encode_messages(tokenizer, r["prompt"])) for r in dataset]
    teacher_tokens = [
        len(
            encode_messages(
                tokenizer,
                [
                    {
                        "role": "user",
                        "content": template.format(
                            prompt=r["prompt"][0]["content"], privileged_context=r["privileged_context"]
                        ),
                    }
                ],
            )
        )
        for r in dataset
    ]
    return {
        "step_seconds": step_seconds[args.warmup :],
        "phases": {p: [ph[p] for ph in phases[args.warmup :]] for p in PHASES},
        "completion_tokens": [float(args.new_tokens)] * args.steps,
        "prompt_tokens": {"student": statistics.mean(student_tokens), "teacher": statistics.mean(teacher_tokens)},
        "parameters": sum(p.numel() for p in lm.parameters()),
    }


def run_child(impl: str, args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = model_location(args.model, Path(args.work), args.tokenizer)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = run_trl(args, model) if impl == "trl_sdft" else run_ours(impl.removeprefix("ours_"), args, model)
    result.update(impl=impl, peak_mem_mb=peak_memory_mb(), device=device_name(), threads=torch.get_num_threads())
    return result


# ------------------------------------------------------------------------------------------------ the floor
def processor() -> str:
    """The CPU's model name, widest vector unit and last-level cache: the TRL/ours ratio moves between 2-core
    machines of one cloud (1.60x on an AVX-512 one with a 260 MiB L3, 2.32x on an AVX2 one with 32 MiB)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first processor's
    name = fields.get("model name", platform.machine())
    flags = fields.get("flags", "").split()
    vector = next((unit for unit in ("avx512f", "avx2", "sse4_2") if unit in flags), "")
    cache = Path("/sys/devices/system/cpu/cpu0/cache/index3/size")
    l3 = f", L3 {cache.read_text().strip()}" if cache.exists() else ""
    return f"{name} ({vector}{l3})" if vector else f"{name}{l3}"


def measure_hardware(seconds: float = 1.0) -> dict:
    """Memory bandwidth (reading a large tensor) and matrix throughput (a large product) in the compute dtype."""
    import torch

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)

    def best_of(function) -> float:
        function()
        synchronize()
        best, spent = float("inf"), 0.0
        while spent < seconds:
            start = time.perf_counter()
            function()
            synchronize()
            elapsed = time.perf_counter() - start
            best, spent = min(best, elapsed), spent + elapsed
        return best

    # 1 GiB, more than any cache: a 128 MiB tensor fits in a server CPU's L3 (260 MiB on this project's machine)
    # and read 52 GB/s there, against 25-33 GB/s from memory, which is where a decode step's weights come from
    data = torch.ones(2**30 // 4, dtype=torch.float32, device=device)
    bandwidth = data.numel() * 4 / best_of(lambda: data.sum())
    size = 8192 if cuda else 2048
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    flops = 2 * size**3 / best_of(lambda: a @ b)
    return {
        "bandwidth_gb_s": bandwidth / 1e9,
        "matmul_tflop_s": flops / 1e12,
        "compute_dtype": str(dtype).removeprefix("torch."),
        "processor": processor(),
    }


def floor_seconds(shape: dict, batch: int, new_tokens: int, prompt_tokens: dict, hardware: dict, method: str) -> dict:
    """What the hardware allows per phase: weights read once per decode step at the measured bandwidth, and the
    matrix FLOPs of every forward/backward at the measured matrix throughput (embedding lookups are free; the
    LM head is applied only where a token is sampled or scored)."""
    body, head = shape["body_parameters"], shape["head_parameters"]
    flops = hardware["matmul_tflop_s"] * 1e12
    bandwidth = hardware["bandwidth_gb_s"] * 1e9
    weight_bytes = (body + head) * shape["compute_bytes"]
    student_tokens = batch * (prompt_tokens["student"] + new_tokens)
    scored = batch * new_tokens
    floors = {"student": (6 * body * student_tokens + 6 * head * scored) / flops}
    # AdamW reads parameter, gradient and two moments and writes three, in float32; the EMA reads two, writes one
    floors["optimizer"] = (body + head) * 4 * (7 + (3 if method == "sdft" else 0)) / bandwidth
    if method == "sdft":
        prefill = 2 * body * batch * prompt_tokens["student"] + 2 * head * batch
        floors["generation"] = prefill / flops + (new_tokens - 1) * weight_bytes / bandwidth
        floors["teacher"] = (2 * body * batch * (prompt_tokens["teacher"] + new_tokens) + 2 * head * scored) / flops
    else:
        floors["generation"] = floors["teacher"] = 0.0
    floors["step"] = sum(floors[p] for p in PHASES)
    return floors


def model_shape(model: str, work: Path, tokenizer_spec: str) -> dict:
    from transformers import AutoConfig

    from sdft_core.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model_location(model, work, tokenizer_spec)))
    hidden, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    attention = hidden * head_dim * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    return {
        "body_parameters": layers * (attention + 3 * hidden * inter),
        "head_parameters": config.vocab_size * hidden,
        "compute_bytes": 2 if device_name() != "cpu" else 4,
    }


# ------------------------------------------------------------------------------------------------ report
def summarize(impl: str, results: list[dict], args: argparse.Namespace) -> dict:
    seconds = [s for r in results for s in r["step_seconds"]]
    phases = {p: statistics.median(x for r in results for x in r["phases"][p]) for p in PHASES}
    generated = args.batch * statistics.mean(c for r in results for c in r["completion_tokens"])
    return {
        "device": results[0]["device"],
        "model": args.model,
        "impl": impl,
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "s_per_step_median": statistics.median(seconds),
        "s_per_step_min": min(seconds),
        "s_per_step_max": max(seconds),
        "gen_tokens_per_s": generated / phases["generation"] if phases["generation"] else 0.0,
        "peak_mem_mb": max(r["peak_mem_mb"] for r in results),
        "phases_median_s": phases,
        "steps_measured": len(seconds),
        "threads": results[0]["threads"],
        "prompt_tokens_mean": results[0]["prompt_tokens"],
        "parameters": results[0]["parameters"],
    }


def merge_report(path: Path, rows: list[dict]) -> None:
    existing = json.loads(path.read_text())["rows"] if path.exists() else []
    keys = {(r["device"], r["model"], r["impl"]) for r in rows}
    kept = [r for r in existing if (r["device"], r["model"], r["impl"]) not in keys]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": kept + rows}, indent=2) + "\n")


def print_table(rows: list[dict], hardware: dict, machine: str) -> None:
    print(f"\nmachine: {machine}")
    print(
        f"measured floor inputs: memory bandwidth {hardware['bandwidth_gb_s']:.1f} GB/s, "
        f"{hardware['compute_dtype']} matrix product {hardware['matmul_tflop_s'] * 1e3:.0f} GFLOP/s"
    )
    header = f"{'impl':<9} {'s/step med':>10} {'[min..max]':>15} {'gen tok/s':>9} " + " ".join(
        f"{p:>10}" for p in (*PHASES, "peak MB")
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        p = r["phases_median_s"]
        print(
            f"{r['impl']:<9} {r['s_per_step_median']:>10.3f} "
            f"{'[{:.3f}..{:.3f}]'.format(r['s_per_step_min'], r['s_per_step_max']):>15} "
            f"{r['gen_tokens_per_s']:>9.1f} "
            + " ".join(f"{p[k]:>10.3f}" for k in PHASES)
            + f" {r['peak_mem_mb']:>10.0f}"
        )
        f = r["floor_s"]
        print(f"{'  floor':<9} {f['step']:>10.3f} {'':>15} {'':>9} " + " ".join(f"{f[k]:>10.3f}" for k in PHASES))
    by_impl = {r["impl"]: r for r in rows}
    ours = by_impl.get("ours_sdft")
    if ours and "trl_sdft" in by_impl:
        print(f"TRL/ours SDFT step time: {by_impl['trl_sdft']['s_per_step_median'] / ours['s_per_step_median']:.2f}x")
    if ours and "ours_sft" in by_impl:
        print(
            f"SDFT/SFT step time (ours): {ours['s_per_step_median'] / by_impl['ours_sft']['s_per_step_median']:.2f}x;"
            f" SDFT peak memory - SFT: {ours['peak_mem_mb'] - by_impl['ours_sft']['peak_mem_mb']:+.0f} MB"
        )
    if ours:
        print(
            f"ours SDFT / its floor: {ours['s_per_step_median'] / ours['floor_s']['step']:.2f}x; "
            f"prompt tokens (mean): student {ours['prompt_tokens_mean']['student']:.0f}, "
            f"teacher {ours['prompt_tokens_mean']['teacher']:.0f}; {ours['new_tokens']} new tokens per completion"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help=f"an embedded/local model, or a random-weight shape: {', '.join(SHAPES)}",
    )
    parser.add_argument(
        "--tokenizer",
        default="smollm2-135m-instruct",
        help="the random-weight shapes' tokenizer (a model name or a directory with one)",
    )
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=None, help="ours; default: the whole batch at once")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--steps", type=int, default=3, help="measured steps per process")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured steps per process")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all implementations")
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: torch's default)")
    parser.add_argument(
        "--work", default=str(Path(tempfile.gettempdir()) / "sdft-bench"), help="where random-weight models are saved"
    )
    parser.add_argument("--report", type=Path, default=ROOT / "reports" / "throughput.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:  # one implementation; the result is the last line of stdout
        print(json.dumps(run_child(args.child, args)))
        return

    impls = args.impls.split(",")
    unknown = set(impls) - set(IMPLS)
    if unknown:
        sys.exit(f"unknown --impls {sorted(unknown)}; choose from {', '.join(IMPLS)}")
    if "trl_sdft" in impls and importlib.util.find_spec("trl") is None:
        sys.exit("trl_sdft needs TRL: pip install -e '.[bench]' (or run --impls ours_sdft,ours_sft)")
    hardware = measure_hardware()
    results: dict[str, list[dict]] = {impl: [] for impl in impls}
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    for round_index in range(args.rounds):
        for impl in impls:
            started = time.perf_counter()
            child = subprocess.run(
                [sys.executable, __file__, *sys.argv[1:], "--child", impl], capture_output=True, text=True, env=env
            )
            if child.returncode != 0:
                sys.exit(f"{impl} failed:\n{child.stderr[-4000:]}")
            results[impl].append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(
                f"round {round_index + 1}/{args.rounds} {impl}: "
                f"{[round(s, 3) for s in results[impl][-1]['step_seconds']]} s/step "
                f"({time.perf_counter() - started:.0f} s with start-up)",
                flush=True,
            )

    shape = model_shape(args.model, Path(args.work), args.tokenizer)
    rows = []
    for impl in impls:
        row = summarize(impl, results[impl], args)
        method = "sft" if impl == "ours_sft" else "sdft"
        row["floor_s"] = floor_seconds(shape, args.batch, args.new_tokens, row["prompt_tokens_mean"], hardware, method)
        row["hardware"] = hardware
        rows.append(row)
    machine = f"{platform.node()} {hardware['processor']}, {os.cpu_count()} cores"
    if rows[0]["device"] != "cpu":
        machine += f", {rows[0]['device']}"
    print_table(rows, hardware, machine)
    merge_report(args.report, rows)
    print(f"wrote {args.report}")


if __name__ == "__main__":
    main()
