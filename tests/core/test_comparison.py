"""The side-by-side comparison the pipeline's benchmark_evaluation shows and the gate decides on: its display tables,
its per-model score cache and its drift caches."""

import json

from sdft_core.evaluation.comparison import (
    build_comparison,
    drift_on_prompts,
    evaluate_models,
    model_labels,
)
from sdft_core.evaluation.suite import TaskResult
from sdft_core.lineage import content_key
from tests.tiny import toy_records


def _result(task: str, scores: list[float]) -> TaskResult:
    return TaskResult(task, "acc", sum(scores) / len(scores), len(scores), [str(i) for i in range(len(scores))], scores)


def _table(with_base: bool):
    results = {
        "parent": {"toy": _result("toy", [0.0] * 4), "arc": _result("arc", [1.0, 0.0] * 2)},
        "candidate": {"toy": _result("toy", [1.0] * 3 + [0.0]), "arc": _result("arc", [1.0, 0.0] * 2)},
        "baseline": {"toy": _result("toy", [1.0, 0.0] * 2), "arc": _result("arc", [0.0] * 4)},
    }
    if with_base:
        results["base"] = {"toy": _result("toy", [0.0] * 4), "arc": _result("arc", [1.0] * 4)}
    drift = {"candidate": {"mean": 0.01, "ci": [0.005, 0.02]}}
    return build_comparison(results, "toy", ["arc"], drift)


def test_the_display_tables_are_in_points_and_name_each_model_by_its_label():
    table = _table(with_base=True)
    rows = {row["benchmark"]: row for row in table.benchmark_table()}
    assert list(rows) == ["toy (new skill)", "arc", "prior average"]
    skill = rows["toy (new skill)"]
    assert (skill["base"], skill["parent"], skill["candidate"], skill["delta"]) == (0.0, 0.0, 75.0, 75.0)
    assert skill["delta_ci_low"] == round(100 * table.new_skill_ci[0], 2)
    assert skill["sft_baseline"] == 50.0 and skill["baseline_delta"] == 50.0 and "baseline_delta_ci_high" in skill

    labels = model_labels("sdft/3", parent_is_base=False)
    models = {row["model"]: row for row in table.model_table(labels)}
    assert list(models) == ["base", "parent sdft/3", "SDFT candidate", "SFT baseline"]
    assert models["SDFT candidate"] == {
        "model": "SDFT candidate",
        "new_skill": 75.0,
        "prior_average": 50.0,
        "kl_to_base": 0.01,
        "kl_ci_low": 0.005,
        "kl_ci_high": 0.02,
    }
    assert "kl_to_base" not in models["parent sdft/3"]  # no drift measured for it

    first_skill = _table(with_base=False)
    assert "base" not in first_skill.benchmark_table()[0]
    assert model_labels("base:tiny", parent_is_base=True)["parent"] == "base (parent)"


def test_scores_are_kept_per_model_folder_and_read_back_instead_of_evaluating_again(tiny_model_dir, tmp_path):
    records = [r | {"answers": [r["demonstration"]]} for r in toy_records(3)]
    folders = {"parent": tmp_path / "parent", "candidate": tmp_path / "candidate"}
    for folder in folders.values():
        folder.mkdir()
    progress = []
    skills = {"toy": (records, "short_answer", 4)}
    first = evaluate_models(
        {"parent": str(tiny_model_dir), "candidate": str(tiny_model_dir)},
        skills,
        {},
        folders,
        batch_size=2,
        progress=lambda who: lambda task, done, total: progress.append(who),
    )
    assert set(progress) == {"parent", "candidate"} and first["parent"]["toy"].n == 3
    assert (folders["parent"] / "toy.predictions.jsonl").exists()
    # a model whose folder holds its scores is not loaded again: a spec that no longer loads still answers
    again = evaluate_models(
        {"parent": str(tmp_path / "gone"), "candidate": str(tmp_path / "gone")}, skills, {}, folders
    )
    assert again["candidate"]["toy"].to_dict() == first["candidate"]["toy"].to_dict()


def test_the_drift_is_kept_per_model_under_a_key_of_the_base_the_prompts_and_the_capped_budget(tmp_path):
    records = toy_records(2)
    models = {"parent": "base-model", "candidate": str(tmp_path / "candidate")}
    folders = {who: tmp_path / who for who in models}
    key = content_key("base-model", ["r0", "r1"], 64)  # max_new_tokens 256, capped at 64
    measured = {"parent": {"mean": 0.0, "ci": [0.0, 0.0]}, "candidate": {"mean": 0.3, "ci": [0.2, 0.4]}}
    for who, folder in folders.items():
        folder.mkdir()
        (folder / f"drift-{key}.json").write_text(json.dumps(measured[who]))
    # every result is on disk: no model is loaded, and the base (here the parent) reads the parent's
    drift = drift_on_prompts("base-model", models, records, folders, tmp_path / "samples", max_new_tokens=256)
    assert drift == {"base": measured["parent"], "parent": measured["parent"], "candidate": measured["candidate"]}
    assert not (tmp_path / "samples").exists()
