"""Run config in the Dagster launchpad is the dataclass configs' fields, with the same defaults."""

import dataclasses

import pytest

from pipelines.config import config_class, to_dataclass
from sdft_core.config import TrainConfig
from sdft_core.curation import CurationConfig


def test_defaults_round_trip_to_the_dataclass():
    train = config_class(TrainConfig, ("model", "output_dir"))
    assert to_dataclass(TrainConfig, train(), model="m", output_dir="o") == TrainConfig(model="m", output_dir="o")
    assert to_dataclass(CurationConfig, config_class(CurationConfig)()) == CurationConfig()
    assert set(train.model_fields) == {f.name for f in dataclasses.fields(TrainConfig)} - {"model", "output_dir"}


def test_nested_and_optional_sections_and_validation():
    train = config_class(TrainConfig, ("model", "output_dir"))
    config = to_dataclass(
        TrainConfig,
        train(loss={"divergence": "jsd", "jsd_beta": 0.3}, lora={"r": 4}, adam_betas=[0.8, 0.9]),
        model="m",
        output_dir="o",
    )
    assert (config.loss.divergence, config.loss.jsd_beta, config.lora.r, config.lora.alpha) == ("jsd", 0.3, 4, 32)
    assert config.adam_betas == (0.8, 0.9)
    with pytest.raises(ValueError, match="jsd_beta"):
        to_dataclass(TrainConfig, train(loss={"divergence": "jsd", "jsd_beta": 1.5}), model="m", output_dir="o")
    with pytest.raises(Exception, match="divergence"):
        train(loss={"divergence": "l2"})


def test_a_partition_key_or_folder_that_is_not_a_skill_name_never_becomes_a_path(tmp_path, caplog):
    from pipelines.cli import main
    from pipelines.defs.resources import SkillData
    from sdft_core.names import InvalidName

    skills = tmp_path / "data" / "skills"
    for name in ("sql", "Bad Name"):
        (skills / name).mkdir(parents=True)
        (skills / name / "demonstrations.jsonl").write_text('{"id": 1, "prompt": "p", "demonstration": "d"}\n')
    data = SkillData(root=str(tmp_path / "data"), work_dir=str(tmp_path / "work"))
    with caplog.at_level("WARNING"):
        assert data.skills() == ["sql"]  # what the sensor sees
    assert "'Bad Name' is refused" in caplog.text
    for key in ("../../x", "sql/../..", "Bad Name"):
        with pytest.raises(InvalidName, match="partition key: skill name"):
            data.folder(key)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--skill", "../../x"])
    assert exit_info.value.code == 2
