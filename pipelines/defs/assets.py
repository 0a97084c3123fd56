"""One skill's chain, one partition per skill: data -> curated -> prompts -> trained -> evaluated -> registered.

Each asset reads its inputs, calls one `sdft_core` function, attaches metadata and lineage and hands a small dict
on; the files it writes live under the SkillData resource's work folder.
"""

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pydantic

from pipelines.config import config_class, to_dataclass
from pipelines.defs.resources import Compute, MlflowRegistry, SkillData, tags_json
from pipelines.metadata import (
    comparison_tables,
    delta_plot,
    lineage,
    markdown_table,
    png_markdown,
    progress_log,
    skill_versus_prior_plot,
    table_metadata,
    training_curve_plot,
)
from pipelines.partitions import SKILL_CHAIN, skills
from sdft_core.config import PromptConfig, TrainConfig, with_overrides
from sdft_core.curation import CurationConfig, curate_skill, save_curated
from sdft_core.evaluation.tasks import PRIOR_SUITE
from sdft_core.lineage import dvc_dir_manifest, dvc_dir_md5, file_md5, git_commit
from sdft_core.promotion import GateConfig, champion_outcome, promotion_gate
from sdft_core.records import read_demonstrations, read_jsonl, write_jsonl
from sdft_core.skills import read_spec

PROJECT = Path(__file__).resolve().parents[2]
TRAIN_ENTRY = PROJECT / "pipelines" / "train_entry.py"
CurationRunConfig = config_class(CurationConfig)
PromptRunConfig = pydantic.create_model(
    "PromptRunConfig", __base__=config_class(PromptConfig), __module__=__name__,
    # training records the parent answers greedily with and without the demonstration (0: skip the check)
    teacher_check_sample=(int, 16))
GateRunConfig = config_class(GateConfig)
TrainRunConfig = pydantic.create_model(
    "TrainRunConfig", __base__=config_class(TrainConfig, exclude=("model", "output_dir", "prompts")),
    __module__=__name__,
    # applied last, over the skill.yaml's own `training` overrides: {dotted TrainConfig field: value}
    overrides=(dict[str, Any], {}))


DRIFT_MAX_NEW_TOKENS = 64  # the drift's completion budget: the skill's max_new_tokens, capped here


class EvaluationRunConfig(dg.Config):
    skill_limit: int | None = None  # items of the skill's eval split (None: all)
    prior_tasks: list[str] = list(PRIOR_SUITE)
    prior_limit: int | None = None  # items per prior-capability task (None: each task's default, ~400)
    batch_size: int = 16
    # eval prompts (at most) on which each model's drift KL(base || model) is measured, on completions the base
    # model samples once (max_new_tokens capped at 64; the cache holds the base's full-vocabulary log-probabilities,
    # about tokens x vocabulary x 4 bytes); 0: no drift
    drift_items: int = 32


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dg.asset(partitions_def=skills, group_name=SKILL_CHAIN, kinds={"dvc"})
def demonstrations(context: dg.AssetExecutionContext, skill_data: SkillData) -> dg.Output[dict]:
    """The skill folder as DVC tracks it; its data version is the folder's DVC hash."""
    skill = context.partition_key
    folder = skill_data.folder(skill)
    manifest = dvc_dir_manifest(folder)  # each file read once, for the folder's hash and the file table
    value = {"skill": skill, "folder": str(folder), "skill_md5": dvc_dir_md5(folder, manifest),
             "dataset_md5": skill_data.dataset_version(), "git_commit": git_commit(PROJECT),
             "files": {entry["relpath"]: entry["md5"] for entry in manifest}}
    files = [{"file": name, "md5": md5, "bytes": (folder / name).stat().st_size}
             for name, md5 in value["files"].items()]
    return dg.Output(value, data_version=dg.DataVersion(value["skill_md5"]), metadata={
        **lineage(value), "folder": dg.MetadataValue.path(str(folder)),
        "files": dg.MetadataValue.md(markdown_table(files))})


@dg.asset(partitions_def=skills, group_name=SKILL_CHAIN, kinds={"pandas", "parquet"},
          check_specs=[dg.AssetCheckSpec("rejected_share_within_limit", asset="curated_demonstrations",
                                         blocking=True, description="no more than max_rejected_share of the rows "
                                                                    "were rejected")])
def curated_demonstrations(context: dg.AssetExecutionContext, config: CurationRunConfig, demonstrations: dict,
                           skill_data: SkillData):
    """Valid, deduplicated, length-limited demonstrations and the eval split; rejected rows are quarantined."""
    settings = to_dataclass(CurationConfig, config)
    result = curate_skill(demonstrations["folder"], settings)
    out = save_curated(result, demonstrations["folder"],
                       skill_data.work(demonstrations["skill"], demonstrations["skill_md5"][:12], "curated"))
    rejected = result.rejected_rows()
    spec = read_spec(demonstrations["folder"])
    counts = result.counts()
    value = {**demonstrations, "train_path": str(out / "train.jsonl"), "eval_path": str(out / "eval.jsonl"),
             "rejected_path": str(out / "rejected.parquet"), "counts": counts,
             "spec": {"name": spec.name, "scorer": spec.scorer, "max_new_tokens": spec.max_new_tokens,
                      "task_type": spec.task_type, "training": spec.training}}
    sample = [{"id": r.id, "question": r.question, "demonstration": r.demonstration} for r in result.train[:5]]
    yield dg.Output(value, metadata={
        **lineage(value), **{f"rows_{k}": v for k, v in counts.items()}, "eval_source": result.eval_source,
        "rejected_share": result.rejected_share(), "quarantine": dg.MetadataValue.path(value["rejected_path"]),
        "sample": dg.MetadataValue.md(markdown_table(sample)),
        "rejected_sample": dg.MetadataValue.md(markdown_table(rejected, ["location", "field", "category", "reason"],
                                                              limit=10))})
    share = result.rejected_share()
    yield dg.AssetCheckResult(
        check_name="rejected_share_within_limit", passed=share <= settings.max_rejected_share,
        description=f"{counts['rejected']} of {counts['read']} rows rejected ({100 * share:.1f}%, limit "
                    f"{100 * settings.max_rejected_share:.0f}%); reasons in {value['rejected_path']}",
        metadata={"rejected_share": share, "limit": settings.max_rejected_share,
                  "first_rejections": dg.MetadataValue.md(markdown_table(
                      rejected, ["location", "field", "reason"], limit=10))})


@dg.asset(partitions_def=skills, group_name=SKILL_CHAIN, kinds={"transformers"},
          check_specs=[dg.AssetCheckSpec("teacher_prompts_keep_question", asset="teacher_contexts", blocking=True,
                                         description="every teacher prompt still contains its question verbatim"),
                       dg.AssetCheckSpec("teacher_beats_student", asset="teacher_contexts",
                                         description="the parent answers better with the demonstration in its "
                                                     "prompt (SDFT's in-context assumption); a warning only"),
                       dg.AssetCheckSpec("teacher_signal_on_student_samples", asset="teacher_contexts",
                                         description="on the student's own samples, SDFT's implicit reward ranks "
                                                     "right answers above wrong ones on the loss tokens, and the "
                                                     "teacher stops where a demonstration ends; a warning only")])
def teacher_contexts(context: dg.AssetExecutionContext, config: PromptRunConfig, curated_demonstrations: dict,
                     skill_data: SkillData, registry: MlflowRegistry):
    """Student and teacher prompts, as the parent model's tokenizer sees them; the parent is fixed here."""
    import pandas as pd

    from sdft_core.models import load_tokenizer
    from sdft_core.prompts import teacher_context_rows

    value = curated_demonstrations
    parent = registry.parent()
    skill_prompts = {k.removeprefix("prompts."): v for k, v in value["spec"]["training"].items()
                     if k.startswith("prompts.")}
    settings = config.model_dump()
    sample = settings.pop("teacher_check_sample")
    prompts = PromptConfig(**(settings | skill_prompts))
    records = read_demonstrations(value["train_path"]).accepted
    tokenizer = load_tokenizer(parent["model"])
    rows, refused = teacher_context_rows(records, tokenizer, prompts)
    out = skill_data.work(value["skill"], value["skill_md5"][:12], "contexts", _key(parent["label"], prompts))
    frame = pd.DataFrame(rows)
    frame.to_parquet(out / "contexts.parquet", index=False)
    write_jsonl(out / "refused.jsonl", refused)
    lost = [r["id"] for r in rows if not r["question_kept"]]
    stats = {f"{who}_tokens_{stat}": float(getattr(frame[f"{who}_tokens"], stat)()) if rows else 0.0
             for who in ("student", "teacher") for stat in ("mean", "max")}
    yield dg.Output({**value, "parent": parent, "prompts": dataclasses.asdict(prompts), "contexts_path":
                     str(out / "contexts.parquet")}, metadata={
        **lineage(value), "parent": parent["label"], "teacher_mode": prompts.teacher_mode, "prompts": len(rows),
        "refused_too_long": len(refused), "teacher_truncated": int(frame["teacher_truncated"].sum()) if rows else 0,
        **stats, "contexts": dg.MetadataValue.path(str(out / "contexts.parquet")),
        "example_teacher_prompt": dg.MetadataValue.md("```\n" + (rows[0]["teacher_prompt"] if rows else "") + "\n```")})
    yield dg.AssetCheckResult(check_name="teacher_prompts_keep_question", passed=not lost,
                              description=f"{len(lost)} teacher prompts lost their question" if lost else
                              f"all {len(rows)} teacher prompts contain their question",
                              metadata={"lost": dg.MetadataValue.json(lost[:50])})
    yield from _teacher_checks(parent["model"], tokenizer, value, prompts, sample)


def _teacher_checks(model_spec: str, tokenizer, value: dict, prompts: PromptConfig, sample: int):
    """The greedy teacher check and the on-policy check (`sdft_core.evaluation.teacher_check`), as warnings."""
    if sample <= 0:
        for name in ("teacher_beats_student", "teacher_signal_on_student_samples"):
            yield dg.AssetCheckResult(check_name=name, passed=True, description="skipped (teacher_check_sample: 0)")
        return
    from sdft_core.config import LossConfig
    from sdft_core.evaluation.teacher_check import on_policy_check, teacher_check
    from sdft_core.models import load_inference_model

    spec = value["spec"]
    model, records = load_inference_model(model_spec), read_jsonl(value["train_path"])
    result = teacher_check(model, tokenizer, records, spec["scorer"], prompts, spec["max_new_tokens"], sample)
    yield dg.AssetCheckResult(
        check_name="teacher_beats_student", passed=result["teacher_clearly_better"],
        severity=dg.AssetCheckSeverity.WARN,
        description=f"with the demonstration {100 * result['teacher_score']:.0f}%, without "
                    f"{100 * result['student_score']:.0f}% on {result['n']} training records"
                    + ("" if result["teacher_clearly_better"] else
                       "; SDFT needs a clearly better teacher (try prompts.teacher_mode: prior_turn, or SFT)"),
        metadata={"teacher_score": result["teacher_score"], "student_score": result["student_score"],
                  "gain": result["gain"], "min_gain": result["min_gain"], "teacher_mode": prompts.teacher_mode})
    # The loss mask of the skill's training overrides (else the paper's 3 tokens): the signal must be where the loss is.
    skip = int(spec["training"].get("loss.skip_first_tokens", LossConfig().skip_first_tokens))
    check = on_policy_check(model, tokenizer, records, spec["scorer"], prompts, spec["max_new_tokens"], sample,
                            samples_per_prompt=4, skip_first_tokens=skip)
    clean = check["verdict"].startswith("signal") and ";" not in check["verdict"]
    yield dg.AssetCheckResult(
        check_name="teacher_signal_on_student_samples", passed=clean, severity=dg.AssetCheckSeverity.WARN,
        description=check["verdict"],
        metadata={k: check[k] for k in ("reward_auc", "reward_auc_all_tokens", "student_sample_score", "coverage",
                                        "informative_prompts", "teacher_stop_probability", "skip_first_tokens")
                  if check[k] is not None})


@dg.asset(partitions_def=skills, group_name=SKILL_CHAIN, kinds={"pytorch", "accelerate", "mlflow"})
def sdft_model(context: dg.AssetExecutionContext, config: TrainRunConfig, teacher_contexts: dict,
               skill_data: SkillData, registry: MlflowRegistry, compute: Compute,
               pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.Output[dict]:
    """SDFT from the parent (the champion, or the base model), in `accelerate launch`; a rerun resumes."""
    value = teacher_contexts
    settings = config.model_dump()
    overrides = settings.pop("overrides")
    train_config = TrainConfig.from_dict(settings | {"model": value["parent"]["model"], "output_dir": "",
                                                     "prompts": value["prompts"]})
    skill_training = {k: v for k, v in value["spec"]["training"].items() if not k.startswith("prompts.")}
    train_config = with_overrides(with_overrides(train_config, skill_training), overrides)
    trained, metadata = _train(context, value, train_config, "candidate", skill_data, registry, compute,
                               pipes_subprocess_client)
    return dg.Output({**value, **trained}, metadata={**lineage(value), **metadata})


class BaselineRunConfig(dg.Config):
    # Train the SFT baseline: sdft_model's own training config (same parent, data, steps, batch, learning rate,
    # skill.yaml and run-config overrides) with method sft, evaluated beside the candidate, never registered. Off:
    # nothing is trained (it doubles the training time) and the chain goes on without the comparison.
    enabled: bool = True


@dg.asset(partitions_def=skills, group_name=SKILL_CHAIN, kinds={"pytorch", "accelerate", "mlflow"})
def sft_baseline(context: dg.AssetExecutionContext, config: BaselineRunConfig, sdft_model: dict,
                 skill_data: SkillData, registry: MlflowRegistry, compute: Compute,
                 pipes_subprocess_client: dg.PipesSubprocessClient) -> dg.Output[dict]:
    """SFT on the same curated data, from the same parent, with the same budget as `sdft_model` (its training config,
    method sft): the baseline every candidate is compared with. Its own run folder and MLflow run (role=baseline);
    never registered. It reads sdft_model's config rather than a copy of its run config, so the budgets match."""
    value = sdft_model
    if not config.enabled:
        context.log.info("sft_baseline disabled: no SFT baseline trained for %s", value["skill"])
        return dg.Output({"enabled": False}, metadata={**lineage(value), "enabled": False})
    if value["train_config"]["method"] == "sft":
        context.log.info("sdft_model itself trained with method sft: no separate baseline")
        return dg.Output({"enabled": False}, metadata={**lineage(value), "enabled": False,
                                                       "reason": "sdft_model trains with method sft"})
    train_config = TrainConfig.from_dict(value["train_config"] | {"method": "sft", "output_dir": ""})
    trained, metadata = _train(context, value, train_config, "baseline", skill_data, registry, compute,
                               pipes_subprocess_client)
    return dg.Output({"enabled": True, "method": "sft", **trained}, metadata={
        **lineage(value), "enabled": True, **metadata, "sdft_run_id": value["run_id"]})


def _train(context: dg.AssetExecutionContext, value: dict, train_config: TrainConfig, role: str,
           skill_data: SkillData, registry: MlflowRegistry, compute: Compute,
           pipes_subprocess_client: dg.PipesSubprocessClient) -> tuple[dict, dict]:
    """Train `train_config` on the skill's curated data in `accelerate launch` (through Pipes), in the run folder and
    MLflow run of its run key (a rerun resumes or reuses them); returns what the asset hands on and its metadata."""
    parent = value["parent"]
    run_key = _key(value["skill"], value["skill_md5"], parent["label"], train_config.fingerprint())
    run_dir = skill_data.work(value["skill"], "runs", run_key)
    train_config.output_dir = str(run_dir)
    (run_dir / "train_config.json").write_text(json.dumps(train_config.to_dict(), indent=2))

    tags = {"skill": value["skill"], "dvc_skill_md5": value["skill_md5"], "dvc_data_md5": value["dataset_md5"],
            "git_commit": value["git_commit"] or "unknown", "parent": parent["label"], "role": role,
            "method": train_config.method, "dagster.run_id": context.run.run_id,
            "dagster.partition": context.partition_key}
    name = f"{value['skill']}-{run_key[:8]}" if role == "candidate" else \
        f"{value['skill']}-{train_config.method}-{role}-{run_key[:8]}"
    run_id = registry.run_for_key(run_key, tags, run_name=name)
    client = registry.client()
    if not client.get_run(run_id).data.params:
        from mlflow.entities import Param

        flat = _flatten(train_config.to_dict())
        params = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for start in range(0, len(params), 100):
            client.log_batch(run_id, params=params[start:start + 100])
    metadata: dict[str, Any] = {}
    model_dir = run_dir / "model"
    if (model_dir / "model.safetensors").exists():
        context.log.info("%s already trained (run key %s); reusing it", model_dir, run_key)
    else:
        command = compute.launch_command(TRAIN_ENTRY, ["--config", str(run_dir / "train_config.json"),
                                                       "--data", value["train_path"], "--mlflow-run-id", run_id])
        try:
            invocation = pipes_subprocess_client.run(command=command, context=context,
                                                     env={"MLFLOW_TRACKING_URI": registry.tracking_uri})
        except Exception:
            client.set_terminated(run_id, status="FAILED")
            raise
        for result in invocation.get_results():
            metadata |= dict(result.metadata or {})
    source = registry.log_model_dir(run_id, model_dir)
    history = _all_metrics(run_dir / "metrics.jsonl")
    if history:
        png = training_curve_plot(history, f"{value['skill']}: {train_config.method} from {parent['label']}")
        curve = run_dir / "plots" / "training_curve.png"
        curve.parent.mkdir(exist_ok=True)
        curve.write_bytes(png)
        client.log_artifact(run_id, str(curve), "plots")
        metadata["training_curve"] = png_markdown(png, "loss and KL by step")
    client.set_terminated(run_id, status="FINISHED")
    final = history[-1] if history else {}
    trained = {"run_id": run_id, "run_key": run_key, "model_dir": str(model_dir), "model_source": source,
               "train_config": train_config.to_dict()}
    return trained, {
        **metadata, "mlflow_run_id": run_id, "parent": parent["label"], "method": train_config.method,
        "run_dir": dg.MetadataValue.path(str(run_dir)), "model_source": source, "steps": int(final.get("step", 0)),
        "final_loss": float(final.get("loss", float("nan"))), "config": dg.MetadataValue.json(train_config.to_dict())}


@dg.asset(partitions_def=skills, group_name=SKILL_CHAIN, kinds={"pytorch", "mlflow"})
def benchmark_evaluation(context: dg.AssetExecutionContext, config: EvaluationRunConfig, sdft_model: dict,
                         sft_baseline: dict, skill_data: SkillData, registry: MlflowRegistry) -> dg.Output[dict]:
    """The candidate, its parent, the base model and the SFT baseline (when trained) on the skill's eval split and
    the prior-capability suite, side by side, each with its drift KL(base || model) on the skill's eval prompts."""
    from sdft_core.evaluation.comparison import build_comparison, drift_from_base
    from sdft_core.evaluation.suite import TaskResult, evaluate_model
    from sdft_core.evaluation.tasks import subsample

    value = sdft_model
    skill, spec = value["skill"], value["spec"]
    eval_records = subsample(read_jsonl(value["eval_path"]), config.skill_limit, seed=1234)
    if not eval_records:
        raise ValueError(f"skill {skill!r} has no eval rows ({value['eval_path']}): add eval.jsonl or raise "
                         "eval_fraction in the curation config")
    prior_limits = {task: config.prior_limit for task in config.prior_tasks}
    evaluation = config.model_dump(exclude={"drift_items"})  # the drift settings do not change the scores
    plan = (file_md5(value["eval_path"]), evaluation)
    baseline = sft_baseline if sft_baseline and sft_baseline.get("enabled") else None
    parent_is_base = value["parent"]["version"] is None
    base = (registry.base_model, f"base:{registry.base_model}")
    # who -> (model spec, label); the base model's own scores only when it is not the parent (for the picture)
    models = {"parent": (value["parent"]["model"], value["parent"]["label"]),
              "candidate": (value["model_dir"], f"run:{value['run_id']}")}
    if baseline is not None:
        models["baseline"] = (baseline["model_dir"], f"run:{baseline['run_id']}")
    if not parent_is_base:
        models["base"] = base
    folders = {who: skill_data.work("evals", _key(label, plan)) for who, (_, label) in models.items()}
    results: dict[str, dict[str, TaskResult]] = {}
    for who, (model, label) in models.items():
        cache = folders[who] / "results.json"
        if cache.exists():
            results[who] = {k: TaskResult.from_dict(v) for k, v in json.loads(cache.read_text()).items()}
            context.log.info("%s (%s): cached scores from %s", who, label, cache)
            continue
        results[who] = evaluate_model(model, {skill: (eval_records, spec["scorer"], spec["max_new_tokens"])},
                                      prior_limits, output_dir=folders[who],
                                      benchmarks_dir=skill_data.benchmarks_dir(), batch_size=config.batch_size,
                                      progress=progress_log(context.log, who))
        cache.write_text(json.dumps({k: r.to_dict() for k, r in results[who].items()}))

    drift: dict[str, dict] = {}
    if config.drift_items > 0:
        drift_records = eval_records[:config.drift_items]
        budget = min(int(spec["max_new_tokens"]), DRIFT_MAX_NEW_TOKENS)
        drift_key = _key(registry.base_model, [str(r["id"]) for r in drift_records], budget)
        samples = skill_data.work(skill, value["skill_md5"][:12], "drift") / f"base-{drift_key}.safetensors"
        specs = {"base": base[0], **{who: model for who, (model, _) in models.items() if who != "base"}}
        caches = {who: folders[who] / f"drift-{drift_key}.json" for who in models}
        caches.setdefault("base", caches["parent"])  # the base is the parent: one measurement, ~0
        drift = drift_from_base(registry.base_model, specs, drift_records, samples, max_new_tokens=budget,
                                batch_size=config.batch_size, caches=caches)

    table = build_comparison(results, skill, config.prior_tasks, drift)
    rows = table.rows
    out_dir = skill_data.work(skill, "runs", value["run_key"], "evaluation")
    png = delta_plot(rows, f"{skill}: against the parent ({value['parent']['label']})")
    (out_dir / "deltas.png").write_bytes(png)
    labels = {"base": "base", "parent": f"parent {value['parent']['label']}", "candidate": "SDFT candidate",
              "baseline": "SFT baseline"}
    if parent_is_base:
        labels["parent"] = "base (parent)"
    picture = skill_versus_prior_plot(table.points(labels), f"{skill}: new skill against prior capabilities")
    (out_dir / "skill_vs_prior.png").write_bytes(picture)
    (out_dir / "comparison.json").write_text(json.dumps(table.to_dict(), indent=2))
    summary = {**table.summary(), "n_eval": len(eval_records), "baseline_run_id": baseline and baseline["run_id"]}

    client = registry.client()
    metrics = _metrics(results["candidate"], "eval") + _metrics(results["parent"], "parent_eval")
    for who, prefix in (("baseline", "baseline_eval"), ("base", "base_eval")):
        if who in results:
            metrics += _metrics(results[who], prefix)
    metrics += _named_metrics({f"kl_to_base/{who}": d["mean"] for who, d in drift.items()})
    client.log_batch(value["run_id"], metrics=metrics)
    client.log_artifacts(value["run_id"], str(out_dir), "evaluation")
    if baseline is not None:  # the baseline's own run gets its scores and drift too
        client.log_batch(baseline["run_id"], metrics=_metrics(results["baseline"], "eval") + _named_metrics(
            {"kl_to_base": drift["baseline"]["mean"]} if "baseline" in drift else {}))

    deltas, model_rows = comparison_tables(table, labels)
    scores = table.scores("new_skill"), table.scores("prior_average")
    return dg.Output({**value, "evaluation": summary, "comparison": rows, "comparison_path":
                      str(out_dir / "comparison.json")}, metadata={
        **lineage(value), "mlflow_run_id": value["run_id"], "parent": value["parent"]["label"],
        "new_skill_candidate": scores[0]["candidate"], "new_skill_parent": scores[0]["parent"],
        "prior_average_candidate": scores[1]["candidate"], "prior_average_parent": scores[1]["parent"],
        "new_skill_ci_low": table.new_skill_ci[0], "new_skill_ci_high": table.new_skill_ci[1],
        "prior_average_ci_low": table.prior_average_ci[0], "prior_average_ci_high": table.prior_average_ci[1],
        **({"new_skill_baseline": scores[0]["baseline"], "prior_average_baseline": scores[1]["baseline"],
            "baseline_run_id": baseline["run_id"]} if baseline is not None else {}),
        **{f"kl_to_base_{who}": d["mean"] for who, d in drift.items()},
        "kl_to_base": dg.MetadataValue.json(drift),
        "models": table_metadata(model_rows),
        "deltas": table_metadata(deltas), "plot": png_markdown(png, "per-benchmark deltas"),
        "skill_vs_prior": png_markdown(picture, "new skill against prior-capability average"),
        "comparison": dg.MetadataValue.path(str(out_dir / "comparison.json"))})


@dg.asset(partitions_def=skills, group_name=SKILL_CHAIN, kinds={"mlflow"})
def registered_model(context: dg.AssetExecutionContext, config: GateRunConfig, benchmark_evaluation: dict,
                     registry: MlflowRegistry) -> dg.MaterializeResult:
    """A registry version per SDFT training run (`candidate`), promoted to `champion` only through the gate; the
    SFT baseline is compared in the gate (when configured) but never registered."""
    value = benchmark_evaluation
    scores = value["evaluation"]
    if "new_skill_ci" not in scores:
        raise ValueError("benchmark_evaluation was materialized by an older version without the paired intervals "
                         "the gate decides on: materialize benchmark_evaluation again")
    new_skill, prior = scores["new_skill"], scores["prior_average"]
    decision = promotion_gate(new_skill["candidate"], new_skill["parent"], prior["candidate"], prior["parent"],
                              to_dataclass(GateConfig, config), skill_ci=tuple(scores["new_skill_ci"]),
                              prior_ci=tuple(scores["prior_average_ci"]),
                              baseline=(new_skill["baseline"], prior["baseline"]) if "baseline" in new_skill
                              else None)
    tags = {"skill": value["skill"], "dvc_skill_md5": value["skill_md5"], "dvc_data_md5": value["dataset_md5"],
            "git_commit": value["git_commit"] or "unknown", "parent_version": str(value["parent"]["version"] or ""),
            "parent": value["parent"]["label"], "mlflow_run_id": value["run_id"],
            "train_config": tags_json(value["train_config"]), "dagster.run_id": context.run.run_id}
    version = registry.register(value["run_id"], value["model_source"], tags)
    number = int(version.version)
    registry.set_alias("candidate", number)
    client = registry.client()
    version_tags = {"gate.passed": str(decision.passed).lower(), "gate.reasons": decision.summary(),
                    "eval.new_skill": f"{new_skill['candidate']:.4f}",
                    "eval.prior_average": f"{prior['candidate']:.4f}",
                    "eval.new_skill_ci": json.dumps([round(x, 4) for x in scores["new_skill_ci"]]),
                    "eval.prior_average_ci": json.dumps([round(x, 4) for x in scores["prior_average_ci"]])}
    if "baseline" in new_skill:
        version_tags |= {"baseline.mlflow_run_id": str(scores.get("baseline_run_id")),
                         "baseline.new_skill": f"{new_skill['baseline']:.4f}",
                         "baseline.prior_average": f"{prior['baseline']:.4f}"}
    for key, tag in version_tags.items():
        client.set_model_version_tag(registry.model_name, str(number), key, tag)

    champion = registry.version_by_alias("champion")
    outcome = champion_outcome(decision, number, int(champion.version) if champion else None,
                               value["parent"]["version"], value["parent"]["label"])
    if outcome.promote:
        registry.promote(number, decision.summary())
    context.log.info(outcome.summary)
    champion = registry.version_by_alias("champion")
    return dg.MaterializeResult(metadata={
        **lineage(value), "model_version": number, "model_uri": f"models:/{registry.model_name}/{number}",
        "mlflow_run_id": value["run_id"], "parent": value["parent"]["label"], "gate_passed": decision.passed,
        "gate": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)), "outcome": outcome.summary,
        "champion": int(champion.version) if champion else 0,
        "aliases": dg.MetadataValue.json(sorted(client.get_model_version(registry.model_name, str(number)).aliases))})


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat |= _flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _all_metrics(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def _metrics(results: dict, prefix: str) -> list:
    return _named_metrics({f"{prefix}/{task}": result.score for task, result in results.items()})


def _named_metrics(values: dict[str, float]) -> list:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(name, float(value), now, 0) for name, value in values.items()]
