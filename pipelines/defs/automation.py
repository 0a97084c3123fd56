"""When skills retrain: a sensor on the skill folders' DVC hashes, a nightly catch-up schedule, and the manual
promote / rollback job."""

import json

import dagster as dg

from pipelines.defs.resources import MlflowRegistry, SkillData
from pipelines.partitions import SKILL_CHAIN, skills

DATA_VERSION_TAG = "sdft/skill_md5"

retrain_skill = dg.define_asset_job(
    "retrain_skill",
    selection=dg.AssetSelection.groups(SKILL_CHAIN),
    description="One skill's chain, from its DVC-tracked data to a registered (and maybe promoted) model.",
)


@dg.sensor(job=retrain_skill, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def skill_data_sensor(context: dg.SensorEvaluationContext, skill_data: SkillData) -> dg.SensorResult:
    """A new skill folder gets a partition; a skill whose DVC hash changed gets one run for that hash."""
    seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    known = set(context.instance.get_dynamic_partitions(skills.name))
    new_skills, requests = [], []
    for skill in skill_data.skills():
        version = skill_data.version(skill)
        if skill not in known:
            new_skills.append(skill)
        if seen.get(skill) != version:
            requests.append(
                dg.RunRequest(partition_key=skill, run_key=f"{skill}:{version}", tags={DATA_VERSION_TAG: version})
            )
            seen[skill] = version
    return dg.SensorResult(
        run_requests=requests,
        cursor=json.dumps(seen, sort_keys=True),
        dynamic_partitions_requests=[skills.build_add_request(new_skills)] if new_skills else [],
    )


@dg.schedule(job=retrain_skill, cron_schedule="0 2 * * *", default_status=dg.DefaultScheduleStatus.STOPPED)
def nightly_retrain(context: dg.ScheduleEvaluationContext, skill_data: SkillData, registry: MlflowRegistry):
    """Retrain skills whose data changed since their last registered version (and have no run on the way)."""
    available = set(skill_data.skills())
    for skill in context.instance.get_dynamic_partitions(skills.name):
        if skill not in available:
            continue
        version = skill_data.version(skill)
        registered = registry.latest_version_tags(skill) or {}
        if registered.get("dvc_skill_md5") == version:
            continue
        pending = context.instance.get_run_records(
            dg.RunsFilter(
                tags={"dagster/partition": skill, DATA_VERSION_TAG: version},
                statuses=[
                    dg.DagsterRunStatus.QUEUED,
                    dg.DagsterRunStatus.NOT_STARTED,
                    dg.DagsterRunStatus.STARTING,
                    dg.DagsterRunStatus.STARTED,
                ],
            ),
            limit=1,
        )
        if not pending:
            yield dg.RunRequest(partition_key=skill, run_key=f"{skill}:{version}", tags={DATA_VERSION_TAG: version})


class ChampionChange(dg.Config):
    version: int = 0  # the version to make champion; 0 with rollback=true: the champion's predecessor
    rollback: bool = False
    reason: str = "manual"


@dg.op
def set_champion(context: dg.OpExecutionContext, config: ChampionChange, registry: MlflowRegistry) -> None:
    if config.rollback == bool(config.version):
        raise ValueError("give either version (promote it) or rollback: true, not both or neither")
    change = registry.rollback(config.reason) if config.rollback else registry.promote(config.version, config.reason)
    context.log.info(f"champion of {registry.model_name}: {change}")
    context.add_output_metadata({"champion": change["champion"], "previous": change["previous"] or 0})


@dg.job(description="Promote a registered version to champion by hand, or roll the champion back.")
def change_champion():
    set_champion()
