"""When skills retrain: a sensor on the skill folders' DVC hashes, a sensor that retrains a skill whose candidate
found the champion moved on, a nightly catch-up schedule, and the manual promote / rollback job."""

import json

import dagster as dg

from pipelines.defs.resources import OUTCOME_TAG, MlflowRegistry, SkillData
from pipelines.partitions import SKILL_CHAIN, skills
from sdft_core.promotion import CHAMPION_MOVED_ON, needs_retrain_from_champion

DATA_VERSION_TAG = "sdft/skill_md5"
RETRAIN_REASON_TAG = "sdft/retrain_reason"
IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]

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
        if not _in_progress(context.instance, skill):
            yield dg.RunRequest(partition_key=skill, run_key=f"{skill}:{version}", tags={DATA_VERSION_TAG: version})


def _in_progress(instance: dg.DagsterInstance, skill: str) -> bool:
    """A run of this skill's partition is queued or running."""
    return bool(
        instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": skill}, statuses=IN_PROGRESS), limit=1)
    )


@dg.sensor(job=retrain_skill, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def champion_moved_on_sensor(
    context: dg.SensorEvaluationContext, skill_data: SkillData, registry: MlflowRegistry
) -> dg.SensorResult | dg.SkipReason:
    """A candidate that passed its gate while another skill's candidate became champion is not dropped: its skill
    is retrained from the new champion, once per champion version, so the champion ends holding both skills."""
    champion = registry.version_by_alias("champion")
    if champion is None:
        return dg.SkipReason("no champion yet")
    requests = []
    for skill in skill_data.skills():
        latest = registry.latest_version_tags(skill) or {}
        if latest.get(OUTCOME_TAG) != CHAMPION_MOVED_ON:
            continue  # the usual case, every minute: decided without hashing the folder or walking the lineage
        current = skill_data.version(skill)
        held = registry.champion_has(skill, current) is not None
        if not needs_retrain_from_champion(latest.get(OUTCOME_TAG), latest.get("dvc_skill_md5"), current, held):
            continue
        if _in_progress(context.instance, skill):
            continue  # the run on its way reads the champion when it starts; the next evaluation looks again
        requests.append(
            dg.RunRequest(
                partition_key=skill,
                # once per skill, data version and champion: a champion that moves again gets another retrain
                run_key=f"{skill}:{current}:champion-{champion.version}",
                tags={DATA_VERSION_TAG: current, RETRAIN_REASON_TAG: f"champion moved on to {champion.version}"},
            )
        )
    return dg.SensorResult(run_requests=requests)


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
