"""The config dataclasses are the one source of help, defaults, types, ranges and choices: the CLI's flags are made
from them, values read as text are converted by the declared types, and bad values are refused naming the field."""

import argparse
import dataclasses
import pickle
import typing

import pytest

from sdft_core.cli import build_parser, config_from_args
from sdft_core.config import (
    TEACHER_KINDS,
    TEACHER_MODES,
    ConfigError,
    Divergence,
    LoraSettings,
    LossConfig,
    Method,
    Precision,
    TeacherKind,
    TrainConfig,
    with_overrides,
)
from sdft_core.config_flags import add_config_flags, flag_name, given_fields
from sdft_core.config_schema import help_of, leaf_fields
from sdft_core.curation import CurationConfig


def subcommand(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def flat(text: str) -> str:
    return " ".join(text.split())


def train_args(*flags: str) -> argparse.Namespace:
    return build_parser().parse_args(["train", "--data", "demos.jsonl", *flags])


# ------------------------------------------------------------------------------------------- flags from fields
@pytest.mark.parametrize(
    "command,cls,example",
    [
        (
            "train",
            TrainConfig,
            "--lr X, --learning-rate X peak learning rate: linear warmup, then cosine decay "
            "(default: 5e-05; at least 0)",
        ),
        ("curate", CurationConfig, "--shingle-size N words per shingle (default: 3; at least 1)"),
    ],
)
def test_help_shows_every_fields_help_text_and_default(command, cls, example):
    text = flat(subcommand(command).format_help())
    for dotted, f, _ in leaf_fields(cls):
        assert help_of(f), f"{dotted} has no help text"
        assert flag_name(dotted) in text
        assert flat(f"{help_of(f)} (default: ") in text, dotted
    assert example in text


def test_a_field_added_to_a_config_is_a_flag_without_touching_the_cli():
    extended = dataclasses.make_dataclass(
        "Extended",
        [
            (
                "warmup_ratio",
                float,
                dataclasses.field(default=0.0, metadata={"help": "share of the steps spent warming up"}),
            )
        ],
        bases=(TrainConfig,),
    )
    parser = argparse.ArgumentParser()
    add_config_flags(parser, extended)
    assert "share of the steps spent warming up (default: 0.0)" in flat(parser.format_help())
    given = given_fields(parser.parse_args(["--warmup-ratio", "0.1", "--loss.top-k", "20"]), extended)
    assert given == {"warmup_ratio": 0.1, "loss.top_k": 20}


def test_the_flags_of_the_readme_and_the_tests_set_their_fields():
    args = train_args(
        "--method",
        "sft",
        "--model",
        "m",
        "--output",
        "o",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--micro-batch-size",
        "2",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "1",
        "--seed",
        "7",
        "--precision",
        "fp32",
        "--checkpoint-every",
        "2",
        "--max-new-tokens",
        "8",
        "--num-generations",
        "2",
        "--divergence",
        "jsd",
        "--teacher",
        "frozen",
        "--ema-alpha",
        "0.1",
        "--teacher-mode",
        "prior_turn",
        "--lora-r",
        "4",
        "--gradient-checkpointing",
    )
    config = config_from_args(args)
    assert (config.method, config.model, config.output_dir, config.epochs, config.max_steps) == ("sft", "m", "o", 1, 3)
    assert (config.batch_size, config.micro_batch_size, config.learning_rate, config.warmup_steps) == (4, 2, 3e-3, 1)
    assert (config.seed, config.precision, config.checkpoint_every, config.gradient_checkpointing) == (
        7,
        "fp32",
        2,
        True,
    )
    assert (config.rollout.max_new_tokens, config.rollout.num_generations, config.loss.divergence) == (8, 2, "jsd")
    assert (config.teacher.kind, config.teacher.ema_alpha, config.prompts.teacher_mode) == ("frozen", 0.1, "prior_turn")
    assert config.lora == LoraSettings(r=4)


def test_nested_bool_and_sequence_flags():
    config = config_from_args(
        train_args(
            "--loss.skip-first-tokens",
            "0",
            "--loss.top-k",
            "20",
            "--loss.top-k-tail",
            "false",
            "--fsdp",
            "--adam-betas",
            "0.8",
            "0.9",
            "--lora.target-modules",
            "q_proj",
            "v_proj",
            "--rollout.batch-size",
            "none",
        )
    )
    assert (config.loss.skip_first_tokens, config.loss.top_k, config.loss.top_k_tail) == (0, 20, False)
    assert config.fsdp is True and config.adam_betas == (0.8, 0.9) and config.rollout.batch_size is None
    assert config.lora.target_modules == ["q_proj", "v_proj"] and config.lora.r == 16


def test_config_file_then_flags_then_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("max_steps: 7\nlearning_rate: 1e-3\nloss:\n  top_k: 5\n")  # YAML 1.1 reads 1e-3 as a string
    config = config_from_args(train_args("--config", str(path)))
    assert (config.max_steps, config.learning_rate, config.loss.top_k, config.output_dir) == (7, 1e-3, 5, "runs/sdft")
    config = config_from_args(
        train_args(
            "--config", str(path), "--max-steps", "9", "--set", "loss.top_k=6", "--loss.top-k", "8", "--method", "sft"
        )
    )
    assert (config.max_steps, config.loss.top_k, config.output_dir) == (9, 6, "runs/sft")


def test_curate_flags_and_set_make_the_curation_config():
    args = build_parser().parse_args(
        ["curate", "--skill", "s", "--out", "o", "--near-duplicate-threshold", "0.95", "--set", "eval_fraction=2e-1"]
    )
    given = given_fields(args, CurationConfig)
    assert given == {"near_duplicate_threshold": 0.95}
    config = CurationConfig.from_dict({**given, "eval_fraction": "2e-1"})
    assert (config.near_duplicate_threshold, config.eval_fraction) == (0.95, 0.2)


# ------------------------------------------------------------------------------------------- conversion by type
def test_values_given_as_text_are_converted_by_the_declared_type():
    config = with_overrides(
        TrainConfig(),
        {
            "learning_rate": "1e-3",
            "max_steps": "5",
            "epochs": "1.5",
            "loss.top_k": "null",
            "fsdp": "true",
            "adam_betas": ["0.8", "0.9"],
            "lora.r": "8",
            "rollout.batch_size": 4.0,
        },
    )
    assert (config.learning_rate, config.max_steps, config.epochs, config.loss.top_k) == (1e-3, 5, 1.5, None)
    assert config.fsdp is True and config.adam_betas == (0.8, 0.9) and config.lora.r == 8
    assert config.rollout.batch_size == 4 and type(config.rollout.batch_size) is int
    assert config_from_args(train_args("--set", "learning_rate=1e-3", "--set", "max_steps=5")).learning_rate == 1e-3


def test_valid_values_are_kept_as_they_are_so_fingerprints_do_not_move():
    assert TrainConfig().fingerprint() == "dc68031d8555cacf"  # as before the configs were generated from metadata
    assert with_overrides(TrainConfig(), {"epochs": 1}).epochs == 1  # an int is a valid float: not made 1.0


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"learning_rate": "fast"}, "learning_rate must be a number, got 'fast'"),
        ({"max_steps": "5.5"}, "max_steps must be an integer or none, got '5.5'"),
        ({"fsdp": "maybe"}, "fsdp must be true or false, got 'maybe'"),
        ({"adam_betas": [0.9]}, "adam_betas must be a list of 2, each a number"),
        ({"loss": "big"}, "loss must be a mapping of LossConfig fields"),
        ({"loss.nope": 1}, "unknown config key(s) loss.nope"),
        ({"method.x": 1}, "method is not a section"),
    ],
)
def test_values_that_cannot_be_converted_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as raised:
        with_overrides(TrainConfig(), overrides)
    assert message in str(raised.value)
    assert pickle.loads(pickle.dumps(raised.value)).problems == raised.value.problems  # survives a process boundary


# ------------------------------------------------------------------------------------------- checks
@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"method": "rl"}, "method must be one of sdft, sft, dft, got 'rl'"),
        ({"precision": "fp16"}, "precision must be one of auto, fp32, bf16"),
        ({"loss.divergence": "l2"}, "loss.divergence must be one of forward_kl, reverse_kl, jsd"),
        ({"teacher.kind": "ewma"}, "teacher.kind must be one of ema, frozen"),
        ({"prompts.teacher_mode": "system"}, "prompts.teacher_mode must be one of inline, prior_turn"),
        ({"batch_size": 0}, "batch_size must be at least 1, got 0"),
        ({"teacher.ema_alpha": 1.5}, "teacher.ema_alpha must be in [0, 1], got 1.5"),
        ({"rollout.top_p": 0.0}, "rollout.top_p must be in (0, 1], got 0.0"),
        ({"adam_betas": [0.9, 1.0]}, "adam_betas must be in [0, 1) each"),
        ({"max_grad_norm": 0}, "max_grad_norm must be above 0"),
        ({"lora.r": 0}, "lora.r must be at least 1"),
        ({"lora.target_modules": []}, "lora.target_modules must name at least one module"),
        ({"loss.divergence": "jsd", "loss.jsd_beta": 1.0}, "loss.jsd_beta must be in (0, 1) with divergence jsd"),
        ({"epochs": 0}, "epochs must be > 0 (or set max_steps)"),
        ({"rollout.temperature": 0}, "rollout.temperature must be > 0 for on-policy sampling"),
    ],
)
def test_bad_values_are_refused_naming_the_field_and_what_is_allowed(overrides, message):
    with pytest.raises(ValueError) as raised:
        with_overrides(TrainConfig(), overrides)
    assert message in str(raised.value)


def test_configs_check_themselves_when_made_and_when_asked():
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        LossConfig(top_k=0)
    with pytest.raises(ValueError, match="learning_rate must be a number, got '1e-3'"):
        TrainConfig(learning_rate="1e-3")  # made in Python, nothing converts: refused, not a TypeError later
    with_overrides(TrainConfig(), {"method": "sft", "rollout.temperature": 0})  # greedy rollouts are fine for SFT
    config = TrainConfig()
    config.loss.divergence = "l2"
    with pytest.raises(ValueError, match="loss.divergence must be one of"):
        config.validate()


def test_the_bad_flag_is_named_by_argparse(capsys):
    with pytest.raises(SystemExit):
        train_args("--lr", "fast")
    assert "argument --lr/--learning-rate: learning_rate must be a number, got 'fast'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- enumerations
def test_each_enumeration_is_listed_once_and_the_cli_offers_it():
    train = {a.dest: a for a in subcommand("train")._actions}
    for dotted, literal in [
        ("method", Method),
        ("precision", Precision),
        ("loss.divergence", Divergence),
        ("teacher.kind", TeacherKind),
    ]:
        assert tuple(train[dotted].choices) == typing.get_args(literal)
    assert tuple(train["prompts.teacher_mode"].choices) == TEACHER_MODES == ("inline", "prior_turn")
    check = {a.dest: a for a in subcommand("teacher-check")._actions}
    assert tuple(check["teacher_mode"].choices) == TEACHER_MODES
    assert TEACHER_KINDS == ("ema", "frozen")
