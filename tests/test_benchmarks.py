"""The speed benchmark's bookkeeping: the floor's arithmetic, the report's rows, and one short run of ours."""

import argparse
import importlib.util
import json
import platform
from pathlib import Path

import pytest

from tests.tiny import save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("step_throughput", ROOT / "benchmarks" / "step_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_floor_counts_weights_read_per_decode_step_and_matrix_flops(bench):
    shape = {"body_parameters": 100e6, "head_parameters": 25e6, "compute_bytes": 4}
    hardware = {"bandwidth_gb_s": 25.0, "matmul_tflop_s": 0.1}
    prompts = {"student": 60, "teacher": 150}
    floor = bench.floor_seconds(shape, batch=4, new_tokens=64, prompt_tokens=prompts, hardware=hardware, method="sdft")
    # 63 decode steps each read 125M float32 weights at 25 GB/s, after a prefill of 4 x 60 tokens
    assert floor["generation"] == pytest.approx((2 * 100e6 * 240 + 2 * 25e6 * 4) / 1e11 + 63 * 500e6 / 25e9)
    assert floor["teacher"] == pytest.approx((2 * 100e6 * 4 * 214 + 2 * 25e6 * 256) / 1e11)
    assert floor["student"] == pytest.approx((6 * 100e6 * 4 * 124 + 6 * 25e6 * 256) / 1e11)
    assert floor["step"] == pytest.approx(sum(floor[p] for p in bench.PHASES))
    sft = bench.floor_seconds(shape, 4, 64, prompts, hardware, "sft")
    assert sft["generation"] == sft["teacher"] == 0.0 and sft["student"] == floor["student"]
    assert sft["optimizer"] < floor["optimizer"]  # no EMA teacher


def test_demonstrations_fill_the_completion_length(bench):
    for words in (64, 256):
        records = bench.bench_records(8, words)
        assert all(len(r["demonstration"].split()) >= words for r in records)
        assert len({r["prompt"] for r in records}) == 8


def test_report_keeps_other_devices_rows_and_replaces_the_same_ones(bench, tmp_path):
    path = tmp_path / "throughput.json"
    old = {"device": "H200", "model": "m", "impl": "trl_sdft", "s_per_step_median": 8.3}
    path.write_text(json.dumps({"rows": [old, {**old, "device": "cpu", "s_per_step_median": 12.0}]}))
    bench.merge_report(path, [{**old, "device": "cpu", "s_per_step_median": 11.0}])
    rows = json.loads(path.read_text())["rows"]
    assert sorted((r["device"], r["s_per_step_median"]) for r in rows) == [("H200", 8.3), ("cpu", 11.0)]


@pytest.mark.parametrize("impl", ["ours_sdft", "ours_sft"])
def test_a_short_run_of_ours_gives_a_complete_row(bench, tmp_path, impl):
    model = save_tiny_model(tmp_path / "tiny")
    args = argparse.Namespace(
        model=str(model),
        tokenizer=str(model),
        batch=2,
        micro_batch=None,
        new_tokens=8,
        learning_rate=1e-4,
        steps=2,
        warmup=1,
        threads=0,
        work=str(tmp_path),
    )
    result = bench.run_child(impl, args)
    assert len(result["step_seconds"]) == 2 and all(s > 0 for s in result["step_seconds"])
    assert result["completion_tokens"] == [8.0, 8.0]  # EOS does not stop generation; SFT targets are cut to 8
    row = bench.summarize(impl, [result, result], args)
    assert row["steps_measured"] == 4 and row["impl"] == impl and row["device"] == "cpu"
    assert set(row) >= {
        "device",
        "model",
        "impl",
        "batch",
        "new_tokens",
        "s_per_step_median",
        "s_per_step_min",
        "s_per_step_max",
        "gen_tokens_per_s",
        "peak_mem_mb",
    }
    generation = row["phases_median_s"]["generation"]
    assert (generation > 0) == (impl == "ours_sdft") and (row["gen_tokens_per_s"] > 0) == (impl == "ours_sdft")


def test_rows_name_the_processor_they_were_measured_on(bench):
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo on this system")
    names = [
        line.partition(":")[2].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
    ]
    described = bench.processor()
    assert described.startswith(names[0] if names else "")
    if platform.machine() == "x86_64":  # every x86-64 server CPU has at least SSE4.2
        assert any(f"({unit}" in described for unit in ("avx512f", "avx2", "sse4_2"))
