import json

import pandas as pd
import pytest

from sdft_core.records import (
    DemonstrationError,
    InvalidRecord,
    collect,
    read_demonstrations,
    read_rows,
    records_from_dicts,
)

GOOD = {"id": "a1", "prompt": "What is 2+2?", "demonstration": "2+2 is 4. So the answer is 4."}


def write_lines(path, lines: list[bytes]):
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_valid_records_with_chat_prompt_context_system_and_extra_fields(tmp_path):
    rows = [
        GOOD,
        {
            "id": 7,
            "prompt": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"},
                {"role": "user", "content": "Capital of France?"},
            ],
            "demonstration": "Paris.",
            "context": "France's capital is Paris.",
            "system": "Be brief.",
            "answer": "Paris",
        },
    ]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r).encode() for r in rows])
    result = read_demonstrations(path)
    assert result.rejected == []
    first, second = result.accepted
    assert first.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert second.id == "7" and second.question == "Capital of France?"
    assert second.messages[0] == {"role": "system", "content": "Be brief."}
    assert len(second.messages) == 4
    assert second.metadata == {"answer": "Paris"}
    assert second.to_dict()["answer"] == "Paris"


@pytest.mark.parametrize(
    "line,field,reason",
    [
        (json.dumps({"prompt": "q", "demonstration": "d"}), "id", "missing required field"),
        (json.dumps({"id": "x", "demonstration": "d"}), "prompt", "missing required field"),
        (json.dumps({"id": "x", "prompt": "q"}), "demonstration", "missing required field"),
        (json.dumps({"id": "x", "prompt": "q", "demonstration": "   "}), "demonstration", "must not be empty"),
        (json.dumps({"id": "x", "prompt": 42, "demonstration": "d"}), "prompt", "must be a string or a list"),
        (json.dumps({"id": "x", "prompt": "q", "demonstration": ["d"]}), "demonstration", "must be a string"),
        (json.dumps({"id": 1.5, "prompt": "q", "demonstration": "d"}), "id", "must be a string or an integer"),
        (json.dumps({"id": "x", "prompt": "q", "demonstration": "d", "context": 3}), "context", "must be a string"),
        (
            json.dumps({"id": "x", "prompt": [{"role": "assistant", "content": "a"}], "demonstration": "d"}),
            "prompt[0].role",
            "the last message must be a user turn",
        ),
        (
            json.dumps({"id": "x", "prompt": [{"role": "robot", "content": "a"}], "demonstration": "d"}),
            "prompt[0].role",
            "must be one of",
        ),
        (json.dumps(["not", "an", "object"]), None, "must be a JSON object"),
    ],
)
def test_each_bad_record_is_rejected_with_file_line_field_and_reason(tmp_path, line, field, reason):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD).encode(), line.encode()])
    result = read_demonstrations(path)
    assert [r.id for r in result.accepted] == ["a1"]
    (rejected,) = result.rejected
    assert rejected.location == "line 2" and rejected.field == field and reason in rejected.reason
    message = str(rejected)
    assert message.startswith(f"{path}:line 2: ") and reason in message
    if field:
        assert f"field '{field}'" in message


def test_non_utf8_and_truncated_json_lines_are_rejected_not_lost(tmp_path):
    truncated = json.dumps(GOOD | {"id": "b2"})[:-7].encode()
    path = write_lines(
        tmp_path / "d.jsonl",
        [b'{"id": "x", "prompt": "caf\xe9", "demonstration": "d"}', json.dumps(GOOD).encode(), b"", truncated],
    )
    result = read_demonstrations(path)
    assert [r.id for r in result.accepted] == ["a1"]
    bad_utf8, bad_json = result.rejected
    assert bad_utf8.location == "line 1" and "not valid UTF-8" in bad_utf8.reason
    assert bad_json.location == "line 4" and "invalid JSON" in bad_json.reason
    assert bad_json.raw == truncated.decode()  # the original text is kept for the rejected table


def test_duplicate_ids_keep_the_first_and_reject_the_rest(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD).encode()] * 3)
    result = read_demonstrations(path)
    assert len(result.accepted) == 1
    assert [r.location for r in result.rejected] == ["line 2", "line 3"]
    assert all("duplicate id 'a1' (first seen at line 1)" in r.reason for r in result.rejected)


def test_strict_use_raises_with_the_first_problem(tmp_path):
    path = write_lines(
        tmp_path / "d.jsonl", [json.dumps({"id": "x", "prompt": "q"}).encode(), json.dumps({"id": "y"}).encode()]
    )
    with pytest.raises(DemonstrationError, match=r"d\.jsonl:line 1: field 'demonstration': missing .*1 more"):
        read_demonstrations(path).raise_if_rejected()


def test_parquet_rows_are_read_and_validated(tmp_path):
    frame = pd.DataFrame(
        [
            GOOD,
            {"id": "b", "prompt": "q2", "demonstration": ""},
            {"id": "c", "prompt": "q3", "demonstration": "ok", "context": "ctx"},
        ]
    )
    path = tmp_path / "d.parquet"
    frame.to_parquet(path)
    result = read_demonstrations(path)
    assert [r.id for r in result.accepted] == ["a1", "c"]
    assert result.accepted[1].context == "ctx"
    (rejected,) = result.rejected
    assert rejected.location == "row 2" and rejected.field == "demonstration"


def test_parquet_chat_prompts(tmp_path):
    frame = pd.DataFrame(
        [
            {
                "id": "m",
                "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}],
                "demonstration": "A",
            }
        ]
    )
    path = tmp_path / "chat.parquet"
    frame.to_parquet(path)
    (record,) = read_demonstrations(path).accepted
    assert record.messages == [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_demonstrations(tmp_path / "nope.jsonl")
    (tmp_path / "d.csv").write_text("id\n")
    with pytest.raises(DemonstrationError, match="unsupported file type"):
        read_demonstrations(tmp_path / "d.csv")


def test_read_rows_parses_without_judging_and_collect_judges(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(GOOD).encode(), b"", b'{"id": ', b'{"id": "x"}'])
    rows = list(read_rows(path))
    assert [(location, raw) for location, _, raw in rows] == [
        ("line 1", json.dumps(GOOD)),
        ("line 3", '{"id": '),
        ("line 4", '{"id": "x"}'),
    ]
    assert rows[0][1] == GOOD and rows[2][1] == {"id": "x"}  # parsed, not yet validated
    assert isinstance(rows[1][1], InvalidRecord) and rows[1][1].reason.startswith("invalid JSON")
    assert collect(read_rows(path), str(path)) == read_demonstrations(path)
    with pytest.raises(FileNotFoundError, match="eval file not found"):
        read_rows(tmp_path / "eval.jsonl", kind="eval")  # at once, not when the rows are first read


def test_system_given_twice_is_rejected():
    result = records_from_dicts(
        [
            {
                "id": "s",
                "system": "A",
                "demonstration": "d",
                "prompt": [{"role": "system", "content": "B"}, {"role": "user", "content": "q"}],
            }
        ]
    )
    assert result.rejected[0].field == "system"
