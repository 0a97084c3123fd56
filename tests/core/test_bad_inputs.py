"""A corpus of bad demonstration files, read as `sdft train` and curation read them (`read_rows`).

Each case ends in one of two outcomes: the file is read, every bad row is rejected with its line (or Parquet row)
and the reason, and accepted + rejected = the rows read; or, where no row can come from the file, one error that
names the file. Never a traceback from deep inside, a hang, or memory spent on a runaway line.
"""

import json
import os
import re
import subprocess
import sys

import pandas as pd
import pytest

from sdft_core.records import DemonstrationError, ReadLimits, read_demonstrations, read_rows
from tests.readiness import HANG_GUARD_S

GOOD = {"id": "good", "prompt": "What is 2 + 2?", "demonstration": "4"}


def line(**fields) -> str:
    return json.dumps(GOOD | fields, ensure_ascii=False)


def without(name: str) -> str:
    return json.dumps({k: v for k, v in GOOD.items() if k != name})


# (case, the bad line as written in the file, the field named, a piece of the reason)
BAD_ROWS = [
    ("invalid JSON", '{"id": "x", "prompt": ', None, "invalid JSON"),
    ("not an object", '["a", "list"]', None, "must be a JSON object"),
    ("missing id", without("id"), "id", "missing required field"),
    ("missing prompt", without("prompt"), "prompt", "missing required field"),
    ("missing demonstration", without("demonstration"), "demonstration", "missing required field"),
    ("null demonstration", line(demonstration=None), "demonstration", "missing required field"),
    ("boolean id", line(id=True), "id", "string or an integer"),
    ("float id", line(id=1.5), "id", "string or an integer"),
    ("empty id", line(id="  "), "id", "must not be empty"),
    ("empty prompt", line(prompt=" \t"), "prompt", "must not be empty"),
    ("zero-width prompt", line(prompt="\u200b\u200b"), "prompt", "must not be empty"),
    ("byte-order-mark demonstration", line(demonstration="\ufeff "), "demonstration", "must not be empty"),
    ("number demonstration", line(demonstration=4), "demonstration", "must be a string"),
    ("NaN demonstration", '{"id": "n", "prompt": "p", "demonstration": NaN}', "demonstration", "must be a string"),
    ("empty message list", line(prompt=[]), "prompt", "message list is empty"),
    ("message without a role", line(prompt=[{"content": "hi"}]), "prompt[0]", "'role' and 'content'"),
    ("unknown role", line(prompt=[{"role": "robot", "content": "hi"}]), "prompt[0].role", "must be one of"),
    ("assistant last", line(prompt=[{"role": "assistant", "content": "hi"}]), "prompt[0].role", "last message"),
    (
        "system not first",
        line(
            prompt=[
                {"role": "user", "content": "a"},
                {"role": "system", "content": "s"},
                {"role": "user", "content": "b"},
            ]
        ),
        "prompt[1].role",
        "only come first",
    ),
    ("zero-width message", line(prompt=[{"role": "user", "content": "\u2060"}]), "prompt[0].content", "non-empty"),
    ("context not text", line(context=["a"]), "context", "must be a string"),
    ("empty system", line(system=""), "system", "must not be empty"),
    ("deep nesting", "[" * 100_000 + "]" * 100_000, None, "nested too deeply"),
    ("5,000-digit integer", '{"id": ' + "9" * 5000 + ', "prompt": "p", "demonstration": "d"}', None, "invalid JSON"),
    ("lone surrogate", '{"id": "s", "prompt": "\\ud800", "demonstration": "d"}', None, "lone surrogate"),
]


@pytest.mark.parametrize("case,bad,field,reason", BAD_ROWS, ids=[c[0] for c in BAD_ROWS])
def test_a_bad_row_is_rejected_with_its_line_field_and_reason_and_the_rest_is_read(tmp_path, case, bad, field, reason):
    path = tmp_path / "demos.jsonl"
    path.write_text("\n".join([line(id="a"), bad, line(id="b")]) + "\n", encoding="utf-8")
    loaded = read_demonstrations(path)
    assert [r.id for r in loaded.accepted] == ["a", "b"]
    (rejected,) = loaded.rejected
    assert (rejected.location, rejected.field) == ("line 2", field) and reason in rejected.reason, rejected
    assert str(path) in str(rejected)
    json.dumps(rejected.to_dict(), ensure_ascii=False).encode("utf-8")  # it can be written to rejected.jsonl


def test_invalid_utf8_and_duplicate_ids_are_rejected_rows(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_bytes(line(id="a").encode() + b"\n" + b'{"id": "\xff"}\n' + line(id="a").encode() + b"\n")
    loaded = read_demonstrations(path)
    assert [(r.location, r.reason.split(" (")[0]) for r in loaded.rejected] == [
        ("line 2", "not valid UTF-8"),
        ("line 3", "duplicate id 'a'"),
    ]
    assert len(loaded.accepted) + len(loaded.rejected) == 3


def test_a_runaway_line_is_rejected_without_being_held_whole(tmp_path):
    path = tmp_path / "demos.jsonl"
    runaway = line(id="big", demonstration="x" * 300_000)
    path.write_text("\n".join([line(id="a"), runaway, line(id="b")]) + "\n")
    loaded = read_demonstrations_with(path, ReadLimits(max_line_bytes=10_000))
    assert [r.id for r in loaded.accepted] == ["a", "b"]
    (rejected,) = loaded.rejected
    assert rejected.location == "line 2" and "longer than the limit of 10000 bytes" in rejected.reason
    assert len(rejected.raw) < 300  # what is kept of it


def read_demonstrations_with(path, limits):
    from sdft_core.records import collect

    return collect(read_rows(path, limits=limits), source=str(path))


def test_line_endings_a_byte_order_mark_and_blank_lines_are_read_as_meant(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + line(id="a").encode() + b"\r\n\r\n  \r\n" + line(id="b").encode() + b"\r\n")
    loaded = read_demonstrations(path)
    assert [r.id for r in loaded.accepted] == ["a", "b"] and not loaded.rejected


def test_parquet_rows_are_rejected_by_row_number(tmp_path):
    import pandas as pd

    path = tmp_path / "demos.parquet"
    pd.DataFrame([GOOD | {"id": "a"}, GOOD | {"id": "b", "demonstration": " "}]).to_parquet(path)
    loaded = read_demonstrations(path)
    assert [r.id for r in loaded.accepted] == ["a"]
    assert [(r.location, r.field) for r in loaded.rejected] == [("row 2", "demonstration")]


def fifo(tmp_path):
    path = tmp_path / "demos.jsonl"
    os.mkfifo(path)
    return path


def device(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.symlink_to("/dev/zero")  # an endless device behind an innocent name
    return path


def folder(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.mkdir()
    return path


def utf16(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(line() + "\n", encoding="utf-16")
    return path


def cr_only(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_bytes((line(id="a") + "\r" + line(id="b") + "\r").encode())
    return path


def empty_parquet(tmp_path):
    path = tmp_path / "demos.parquet"
    path.write_bytes(b"")
    return path


def corrupt_parquet(tmp_path):
    path = tmp_path / "demos.parquet"
    path.write_bytes(b"PAR1" + os.urandom(512))
    return path


def csv(tmp_path):
    path = tmp_path / "demos.csv"
    path.write_text("id,prompt,demonstration\n")
    return path


# (case, the file, a piece of the one error)
BAD_FILES = [
    ("missing", lambda tmp_path: tmp_path / "nope.jsonl", "file not found"),
    ("a folder", folder, "a folder, not a regular file"),
    ("a pipe", fifo, "a pipe, not a regular file"),
    ("a device", device, "a device or socket, not a regular file"),
    ("UTF-16", utf16, "UTF-16 or UTF-32"),
    ("CR-only line endings", cr_only, "CR only"),
    ("0-byte Parquet", empty_parquet, "not a readable Parquet file"),
    ("corrupt Parquet", corrupt_parquet, "not a readable Parquet file"),
    ("another type", csv, "unsupported file type '.csv'"),
]


@pytest.mark.parametrize("case,make,error", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_file_no_row_can_come_from_is_one_error_naming_it(tmp_path, case, make, error):
    path = make(tmp_path)
    with pytest.raises((DemonstrationError, FileNotFoundError), match=error) as raised:
        read_demonstrations(path)
    assert str(path) in str(raised.value)


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text((line() + "\n") * 100)
    with pytest.raises(DemonstrationError, match="more than the limit of 1000 per file"):
        read_rows(path, limits=ReadLimits(max_file_bytes=1000))


def sdft(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "sdft_core.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=HANG_GUARD_S
    )


@pytest.mark.parametrize(
    "contents", ["", "\n\n", "not json\n" + line(prompt="") + "\n"], ids=["empty", "blank", "all bad"]
)
def test_sdft_train_on_a_file_without_one_valid_row_exits_clearly_and_keeps_every_rejected_row(tmp_path, contents):
    (tmp_path / "demos.jsonl").write_text(contents)
    done = sdft("train", "--data", "demos.jsonl", "--output", "run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "demos.jsonl: no valid demonstration to train on" in done.stderr
    rejected = [json.loads(r) for r in (tmp_path / "run" / "rejected.jsonl").read_text().splitlines()]
    assert len(rejected) == sum(1 for text in contents.splitlines() if text.strip())


@pytest.mark.parametrize("make", [folder, utf16], ids=["a folder", "UTF-16"])
def test_sdft_train_refuses_a_bad_file_in_one_line(tmp_path, make):
    path = make(tmp_path)
    done = sdft("train", "--data", str(path), "--output", "run", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {path}:")


def test_sdft_train_and_sdft_curate_take_the_read_limits_as_flags(tmp_path):
    skill = tmp_path / "skill"
    skill.mkdir()
    rows = [line(id=f"r{i}") for i in range(5)] + [line(id="long", demonstration="y" * 500)]
    (skill / "demonstrations.jsonl").write_text("\n".join(rows) + "\n")
    (skill / "skill.yaml").write_text("scorer: short_answer\n")
    size = (skill / "demonstrations.jsonl").stat().st_size
    # the file limit: refused in one line that names the file, its size, the limit and the setting
    done = sdft(
        "train", "--data", "skill/demonstrations.jsonl", "--output", "run", "--read.max-file-bytes", "100", cwd=tmp_path
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: skill/demonstrations.jsonl: {size} bytes, more than the limit of 100 per file (max_file_bytes)"
    )
    # the line limit in curation: the long row is rejected with its line and the setting, the rest is kept
    curated = sdft("curate", "--skill", "skill", "--out", "curated", "--read.max-line-bytes", "400", cwd=tmp_path)
    assert curated.returncode == 0, curated.stderr
    rejected = pd.read_parquet(tmp_path / "curated" / "rejected.parquet")
    invalid = rejected[rejected["category"] == "invalid"]  # the short rows are near-duplicates of each other
    assert invalid["location"].tolist() == ["line 6"]
    assert "longer than the limit of 400 bytes (max_line_bytes)" in invalid["reason"].iloc[0]


# ------------------------------------------------------------------------------------------------ skill.yaml
SPEC_CASES = [
    ("alias bomb", 'a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\n', "anchors and aliases are not allowed"),
    ("unknown key", "scorer: short_answer\nlearning_rate: 1e-3\n", "unknown key(s) learning_rate"),
    ("unknown scorer", "scorer: exact\n", "scorer: expected one of choice_letter"),
    ("text budget", 'max_new_tokens: "256"\n', "max_new_tokens: expected int, got '256'"),
    ("zero budget", "max_new_tokens: 0\n", "max_new_tokens: expected at least 1"),
    ("boolean budget", "max_new_tokens: true\n", "max_new_tokens: expected int"),
    ("unknown task type", "task_type: chat\n", "task_type: expected one of qa"),
    ("training not a mapping", "training: [1, 2]\n", "training: expected dict"),
    ("training value", "training:\n  learning_rate: fast\n", "learning_rate must be a number, got 'fast'"),
    ("training key", "training:\n  loss.nope: 1\n", "training:"),
    ("not a mapping", "- a\n- b\n", "expected a mapping of settings"),
    ("name with a path", "name: ../x\n", "skill name '../x' is refused"),
]


@pytest.mark.parametrize("case,text,error", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_a_bad_skill_yaml_is_one_error_naming_the_file_and_key(tmp_path, case, text, error):
    from sdft_core.skills import read_spec

    (tmp_path / "skill.yaml").write_text(text)
    with pytest.raises(ValueError, match=re.escape(error)) as raised:
        read_spec(tmp_path)
    assert str(tmp_path / "skill.yaml") in str(raised.value)


def test_a_huge_skill_yaml_is_refused_unread(tmp_path):
    from sdft_core.skills import read_spec

    (tmp_path / "skill.yaml").write_text("description: " + "x" * 100_000 + "\n")
    with pytest.raises(ValueError, match="more than the limit of 65536 for a skill.yaml"):
        read_spec(tmp_path)


def test_text_numbers_in_training_settings_are_read_by_type(tmp_path):
    from sdft_core.skills import read_spec

    (tmp_path / "skill.yaml").write_text("training:\n  learning_rate: '1e-3'\n  loss.skip_first_tokens: 0\n")
    assert read_spec(tmp_path).training == {"learning_rate": "1e-3", "loss.skip_first_tokens": 0}


def test_the_readmes_add_a_skill_example_works_as_written(tmp_path):
    """The README's skill.yaml, with demonstrations as it describes them (no `answers`): the spec reads, and the
    teacher check's scoring of a training record works (it used to fail with KeyError: 'answers')."""
    from pathlib import Path

    from sdft_core.evaluation.suite import score_answer
    from sdft_core.skills import read_spec

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"cat > data/skills/sql/skill.yaml <<'YAML'\n(.*?)\nYAML\n", readme, re.S)
    assert example, "the README's Add a skill example moved: update this test"
    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "skill.yaml").write_text(example.group(1) + "\n")
    spec = read_spec(folder)
    assert (spec.name, spec.scorer) == ("sql", "short_answer")
    record = {"id": 1, "prompt": "All users?", "demonstration": "SELECT * FROM users"}
    assert score_answer(spec.scorer, "Here: SELECT * FROM users;", record)["correct"] == 1.0
    assert score_answer(spec.scorer, "DROP TABLE users", record)["correct"] == 0.0
    with pytest.raises(ValueError, match="record 1 has no 'answer', which the choice_letter scorer needs"):
        score_answer("choice_letter", "B", record)


# ------------------------------------------------------------------------------------------------ skill folders
def test_a_skill_folders_links_must_stay_inside_its_data_folder(tmp_path):
    from sdft_core.curation import curate_skill

    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    (data / "shared").mkdir(parents=True)
    outside.mkdir()
    rows = "\n".join(line(id=f"r{i}", prompt=f"Question number {i}?", demonstration=f"answer {i}") for i in range(20))
    (data / "shared" / "demos.jsonl").write_text(rows + "\n")
    (outside / "secret.jsonl").write_text(rows + "\n")
    inside, escaping = data / "skills" / "sql", data / "skills" / "leak"
    for folder, target in ((inside, data / "shared" / "demos.jsonl"), (escaping, outside / "secret.jsonl")):
        folder.mkdir(parents=True)
        (folder / "demonstrations.jsonl").symlink_to(target)
    assert curate_skill(inside, within=data).counts()["read"] == 20
    with pytest.raises(DemonstrationError, match="outside .*data, is not read"):
        curate_skill(escaping, within=data)
    with pytest.raises(DemonstrationError, match="outside"):
        curate_skill(inside)  # by default, a skill folder's links stay inside the folder itself


def test_an_eval_file_that_is_a_pipe_is_refused_not_waited_on(tmp_path):
    from sdft_core.curation import curate_skill

    folder = tmp_path / "sql"
    folder.mkdir()
    (folder / "demonstrations.jsonl").write_text(line() + "\n")
    os.mkfifo(folder / "eval.jsonl")
    with pytest.raises(DemonstrationError, match="eval.jsonl: a pipe, not a regular file"):
        curate_skill(folder)
