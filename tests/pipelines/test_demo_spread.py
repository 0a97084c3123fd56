"""experiments/demo_spread.py: the spread of `make demo`'s result across seeds, its summary and its report."""

import importlib.util
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location("demo_spread", ROOT / "experiments" / "demo_spread.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _result(seed: int, candidate: float, prior: float, promoted: bool) -> dict:
    return {
        "seed": seed,
        "exit_code": 0 if promoted else 1,
        "minutes": 8.0,
        "new_skill": {"parent": 0.17, "candidate": candidate},
        "prior_average": {"parent": 0.42, "candidate": prior},
        "new_skill_ci": [candidate - 0.17 - 0.1, candidate - 0.17 + 0.1],
        "prior_average_ci": [-0.01, 0.02],
        "promoted": promoted,
    }


def test_the_summary_is_the_spread_of_the_gain_in_points_and_counts_promotions(tmp_path):
    demo = _module()
    results = [_result(42, 0.14, 0.426, False), _result(1, 0.16, 0.423, False), _result(2, 0.30, 0.42, True)]
    summary = demo.summarize(results)
    gains = [-3.0, -1.0, 13.0]
    assert summary["seeds"] == [42, 1, 2] and summary["promoted"] == 1
    gain = summary["new_skill_gain_points"]
    assert abs(gain["mean"] - 3.0) < 1e-9 and abs(gain["sd"] - statistics.stdev(gains)) < 1e-9
    assert (round(gain["min"], 9), round(gain["max"], 9)) == (-3.0, 13.0)
    assert abs(summary["prior_change_points"]["max"] - 0.6) < 1e-9

    demo.write_report(results, summary, "science", tmp_path / "spread")
    written = json.loads((tmp_path / "spread.json").read_text())
    assert written["skill"] == "science" and written["runs"] == results
    table = (tmp_path / "spread.md").read_text()
    assert "| 42 | 17.0 | 14.0 | -3.0 | [-13.0, +7.0] | +0.6 |" in table
    assert "| 2 | 17.0 | 30.0 | +13.0 | [+3.0, +23.0] | +0.0 | [-1.0, +2.0] | promoted |" in table
    assert "mean +3.0 points, sd 8.7, range [-3.0, +13.0]" in table and "promoted 1 of 3" in table


def test_a_finished_seed_is_read_back_not_run_again(tmp_path):
    demo = _module()
    finished = _result(7, 0.2, 0.42, False)
    (tmp_path / "seed7").mkdir()
    (tmp_path / "seed7" / "result.json").write_text(json.dumps(finished))
    # no run config and no pipeline exist here: anything but reading the result back would fail
    assert demo.run_seed(7, "science", tmp_path / "missing.yaml", tmp_path) == finished
