import ast
import hashlib
import json
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from sdft_core import curation
from sdft_core.curation import CurationConfig, curate, curate_skill, near_duplicates
from sdft_core.records import DemonstrationError, read_demonstrations, write_jsonl

ALL_TRAIN = CurationConfig(eval_fraction=0.0)  # no split: every accepted row trains


def row(id_, prompt, demonstration="An answer.", **extra):
    return {"id": id_, "prompt": prompt, "demonstration": demonstration, **extra}


def jsonl(path, rows):
    write_jsonl(path, rows)
    return path


def where(result):
    return [(r.location, r.field, r.category, r.reason) for r in result.rejected]


def train_ids(result):
    return [d.id for d in result.train]


def assert_every_row_accounted_for(result):
    split_eval = len(result.eval) if result.eval_source == "split" else 0
    assert len(result.train) + split_eval + len(result.rejected) == result.rows_read


def draw(record_id, salt="sdft"):
    """The split draw as specified, computed independently of the module."""
    return int(hashlib.sha256((salt + record_id).encode()).hexdigest(), 16) / 2**256


# ------------------------------------------------------------------------------------------- rule 1: validation
def test_invalid_rows_are_exactly_what_read_demonstrations_rejects(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(
        b"\n".join(
            [
                json.dumps(row("a", "What is 2+2?")).encode(),
                b'{"id": "b", "prompt": ',
                json.dumps({"id": "c", "prompt": "q"}).encode(),
                b"   ",
                json.dumps(row("a", "Another question?")).encode(),
                json.dumps(row("f", "Last question?")).encode(),
            ]
        )
        + b"\n"
    )
    result = curate(path, config=ALL_TRAIN)
    expected = read_demonstrations(path).rejected
    assert [(r.location, r.field, r.reason, r.raw) for r in result.rejected] == [
        (r.location, r.field, r.reason, r.raw) for r in expected
    ]
    assert [(r.location, r.field, r.category) for r in result.rejected] == [
        ("line 2", None, "invalid"),
        ("line 3", "demonstration", "invalid"),
        ("line 5", "id", "invalid"),
    ]
    assert all(r.source == str(path) for r in result.rejected)
    assert train_ids(result) == ["a", "f"]
    assert result.rows_read == 5  # the blank line is not a row
    assert_every_row_accounted_for(result)


def test_missing_file_and_unsupported_type_raise_like_read_demonstrations(tmp_path):
    with pytest.raises(FileNotFoundError):
        curate(tmp_path / "absent.jsonl")
    (tmp_path / "d.csv").write_text("id,prompt\n")
    with pytest.raises(DemonstrationError, match="unsupported file type"):
        curate(tmp_path / "d.csv")


def test_curation_reads_through_the_public_records_seam():
    tree = ast.parse(Path(curation.__file__).read_text())
    imported = [
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "records"
        for alias in node.names
    ]
    assert "read_rows" in imported and not [name for name in imported if name.startswith("_")]


# ------------------------------------------------------------------------------------------- rule 2: lengths
def test_length_limits_name_the_field_and_keep_rows_at_the_limit(tmp_path):
    config = CurationConfig(
        max_prompt_chars=20,
        max_demonstration_chars=10,
        min_demonstration_chars=3,
        max_context_chars=15,
        eval_fraction=0.0,
    )
    path = jsonl(
        tmp_path / "d.jsonl",
        [
            row("at-limits", "p" * 20, "d" * 10, context="c" * 15),
            row("system-counts", "q" * 11, "fine", system="s" * 10),
            row("long-demo", "question two", "d" * 11),
            row("short-demo", "question three", " ab "),
            row("long-context", "question four", "fine", context="c" * 16),
            row(
                "chat",
                [
                    {"role": "user", "content": "u" * 10},
                    {"role": "assistant", "content": "a" * 5},
                    {"role": "user", "content": "v" * 6},
                ],
                "fine",
            ),
            row("at-minimum", "question five", "abc"),
        ],
    )
    result = curate(path, config=config)
    assert where(result) == [
        ("line 2", "prompt", "too_long", "21 characters, over the limit of 20"),
        ("line 3", "demonstration", "too_long", "11 characters, over the limit of 10"),
        ("line 4", "demonstration", "too_short", "2 characters, under the minimum of 3"),
        ("line 5", "context", "too_long", "16 characters, over the limit of 15"),
        ("line 6", "prompt", "too_long", "21 characters, over the limit of 20"),
    ]
    assert train_ids(result) == ["at-limits", "at-minimum"]
    assert_every_row_accounted_for(result)


# ------------------------------------------------------------------------------------------- rule 3: exact duplicates
def test_exact_duplicates_ignore_case_and_whitespace_and_name_the_first_row(tmp_path):
    path = jsonl(
        tmp_path / "d.jsonl",
        [
            row("a", "What is 2+2?", "It is 4."),
            row("b", "What is 2+2?", "It is four."),  # another answer: not a duplicate
            row("c", "  what IS\n2+2? ", "it is  4."),
            row("d", [{"role": "user", "content": "What is 2+2?"}], "It is 4."),  # the same prompt as chat messages
            row("e", "What is 2+2?", "It is 4.", system="Be brief."),  # another system message: another prompt
            row("f", "What is 2+2?", "It is four. "),
        ],
    )
    config = CurationConfig(near_duplicate_threshold=1.0, eval_fraction=0.0)
    result = curate(path, config=config)
    assert where(result) == [
        ("line 3", None, "duplicate", "duplicate of line 1 (id 'a')"),
        ("line 4", None, "duplicate", "duplicate of line 1 (id 'a')"),
        ("line 6", None, "duplicate", "duplicate of line 2 (id 'b')"),
    ]
    assert train_ids(result) == ["a", "b", "e"]
    assert_every_row_accounted_for(result)


# ------------------------------------------------------------------------------------------- rule 4: near duplicates
def test_near_duplicates_name_the_kept_row_and_only_kept_rows_remove_others(tmp_path):
    # With one-word shingles: J(a, b) = 4/6, J(b, c) = 4/6, J(a, c) = 3/7; b goes, so c stays.
    path = jsonl(
        tmp_path / "d.jsonl",
        [
            row("a", "alpha beta gamma", "delta epsilon"),
            row("b", "alpha beta gamma", "delta zeta"),
            row("c", "Alpha, beta, gamma?", "zeta eta"),
            row("d", "unrelated words here", "entirely"),
        ],
    )
    result = curate(path, config=CurationConfig(near_duplicate_threshold=0.6, shingle_size=1, eval_fraction=0.0))
    assert where(result) == [("line 2", None, "near_duplicate", "near-duplicate of line 1 (id 'a'), similarity 0.667")]
    assert train_ids(result) == ["a", "c", "d"]
    assert_every_row_accounted_for(result)


def test_near_duplicates_compare_words_and_a_threshold_of_one_disables_them(tmp_path):
    rows = [row("a", "What is 2+2?", "It is 4."), row("b", "What is 2 + 2 ?", "It is 4")]
    path = jsonl(tmp_path / "d.jsonl", rows)
    result = curate(path, config=ALL_TRAIN)
    assert where(result) == [("line 2", None, "near_duplicate", "near-duplicate of line 1 (id 'a'), similarity 1.000")]
    assert train_ids(curate(path, config=CurationConfig(near_duplicate_threshold=1.0, eval_fraction=0.0))) == ["a", "b"]


def test_near_duplicates_compare_the_last_user_turn_not_earlier_turns_or_the_system(tmp_path):
    shared = "a long shared preamble of many words that every prompt in this file repeats word for word " * 3
    path = jsonl(
        tmp_path / "d.jsonl",
        [
            row(
                "a",
                [
                    {"role": "user", "content": shared},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "first question"},
                ],
                "first answer",
                system=shared,
            ),
            row(
                "b",
                [
                    {"role": "user", "content": shared},
                    {"role": "assistant", "content": "ok"},
                    {"role": "user", "content": "second query"},
                ],
                "second reply",
                system=shared,
            ),
        ],
    )
    assert where(curate(path, config=ALL_TRAIN)) == []


def templated_tool_rows():
    schema = " ".join(
        f"parameter p{i} of type integer describes quantity number {i} used by the tool" for i in range(30)
    )
    rows = [
        row(f"t{i}", f"You can call this function: {schema}\nRequest: {request}", call)
        for i, (request, call) in enumerate(
            (f"Compute the {noun} of {a} and {b} for me", f"compute_{noun}(a={a}, b={b})")
            for noun in ("sum", "product", "ratio", "difference", "maximum", "minimum")
            for a, b in ((3, 4), (10, 20), (7, 1), (12, 5), (8, 9))
        )
    ]
    rows.append(row("same-words", rows[0]["prompt"] + "!", rows[0]["demonstration"]))  # not an exact duplicate
    return rows


def test_a_template_shared_by_most_rows_does_not_make_distinct_items_near_duplicates(tmp_path):
    path = jsonl(tmp_path / "d.jsonl", templated_tool_rows())
    result = curate(path, config=ALL_TRAIN)
    assert where(result) == [
        ("line 31", None, "near_duplicate", "near-duplicate of line 1 (id 't0'), similarity 1.000")
    ]
    compared_whole = curate(path, config=CurationConfig(template_share=1.0, eval_fraction=0.0))
    assert compared_whole.counts()["rejected_near_duplicate"] > 20  # what the template would have done


LONG = " ".join(f"w{i}" for i in range(25))
SUBSET = " ".join(f"w{i}" for i in range(18, 25))


@pytest.mark.parametrize("texts", [[LONG, SUBSET], [SUBSET, LONG]])
def test_near_duplicates_at_exactly_the_threshold_are_found(texts):
    # J = 7/25 = 0.28, and 0.28 * 25 is 7.000000000000001 in floating point: rounding that up to 8 shared shingles
    # would index one shingle too few, and the pair would never meet.
    assert near_duplicates(texts, 0.28, 1) == {1: (0, 0.28)}


def brute_force_near_duplicates(texts, threshold, size, template_share):
    """The definition, written out: every text against every earlier kept text."""

    def shingle_set(text):
        tokens = re.findall(r"\w+", text.lower())
        if len(tokens) <= size:
            return {tuple(tokens)} if tokens else set()
        return {tuple(tokens[i : i + size]) for i in range(len(tokens) - size + 1)}

    sets = [shingle_set(t) for t in texts]
    counts = {}
    for s in sets:
        for shingle in s:
            counts[shingle] = counts.get(shingle, 0) + 1
    template = {s for s, n in counts.items() if n > template_share * len(texts) and n >= 10}
    sets = [s - template for s in sets]
    kept, matches = [], {}
    for i, s in enumerate(sets):
        best = None
        for j in kept:
            similarity = len(s & sets[j]) / len(s | sets[j]) if s and sets[j] else 0.0
            if similarity >= threshold and (best is None or similarity > best[1]):
                best = (j, similarity)
        if best:
            matches[i] = best
        elif s:
            kept.append(i)
    return matches


def random_texts(n=200, seed=7):
    rng = random.Random(seed)
    vocabulary = [f"w{i}" for i in range(60)]
    bases = [[rng.choice(vocabulary) for _ in range(rng.randint(2, 24))] for _ in range(40)]
    template = "shared instructions that most rows carry along"
    texts = []
    for _ in range(n):
        words = list(rng.choice(bases))
        for _ in range(rng.choice((0, 0, 1, 1, 2, 4))):
            edit, position = rng.choice(("insert", "delete", "replace")), rng.randrange(len(words))
            if edit == "insert":
                words.insert(position, rng.choice(vocabulary))
            elif edit == "delete" and len(words) > 1:
                del words[position]
            else:
                words[position] = rng.choice(vocabulary)
        texts.append((template + " " if rng.random() < 0.7 else "") + " ".join(words))
    return texts


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("template_share", [1.0, 0.5])
def test_near_duplicate_index_finds_what_a_pairwise_scan_finds(threshold, size, template_share):
    texts = random_texts()
    expected = brute_force_near_duplicates(texts, threshold, size, template_share)
    assert 10 < len(expected) < 190  # the data must exercise both outcomes
    assert near_duplicates(texts, threshold, size, template_share) == expected


def test_near_duplicate_rule_in_curate_matches_the_pairwise_scan(tmp_path):
    texts = random_texts(seed=3)
    rows = [row(f"r{i}", text, "same answer") for i, text in enumerate(texts)]
    result = curate(
        jsonl(tmp_path / "d.jsonl", rows), config=CurationConfig(near_duplicate_threshold=0.8, eval_fraction=0.0)
    )
    exact = {r.location for r in result.rejected if r.category == "duplicate"}
    survivors = [i for i in range(len(rows)) if f"line {i + 1}" not in exact]
    reference = brute_force_near_duplicates([texts[i] + " same answer" for i in survivors], 0.8, 3, 0.5)
    expected = [
        (f"line {survivors[i] + 1}", f"line {survivors[j] + 1} (id 'r{survivors[j]}'), similarity {s:.3f}")
        for i, (j, s) in sorted(reference.items())
    ]
    assert [
        (r.location, r.reason.removeprefix("near-duplicate of "))
        for r in result.rejected
        if r.category == "near_duplicate"
    ] == expected
    assert len(expected) > 10
    assert_every_row_accounted_for(result)


def test_near_duplicate_search_compares_far_fewer_pairs_than_all(monkeypatch):
    rng = random.Random(0)
    texts = [" ".join(f"t{rng.randrange(50_000)}" for _ in range(30)) for _ in range(2000)]
    texts += texts[:100]  # copies: the search must still find them
    compared = []
    real_jaccard = curation.jaccard
    monkeypatch.setattr(curation, "jaccard", lambda a, b: compared.append(1) or real_jaccard(a, b))
    matches = near_duplicates(texts, 0.9, 3)
    assert sorted(matches) == list(range(2000, 2100))
    assert len(compared) < 2 * len(texts)  # a pairwise scan would make about 2.2 million comparisons


# ------------------------------------------------------------------------------------------- rule 5: leakage
def test_train_rows_asking_an_eval_question_are_rejected(tmp_path):
    demonstrations = jsonl(
        tmp_path / "d.jsonl",
        [
            row("a", "what is the capital of France", "Paris"),
            row("b", "What is the capital of Spain?", "Madrid"),
            row(
                "c",
                [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Name the largest planet."},
                ],
                "Jupiter",
            ),
        ],
    )
    eval_rows = [
        row("e1", "What is the capital of France?", "Paris", answer="Paris"),
        {"id": "e2", "prompt": [{"role": "user", "content": "name the LARGEST planet"}], "answers": ["x"]},
    ]
    result = curate(demonstrations, jsonl(tmp_path / "eval.jsonl", eval_rows), config=CurationConfig(eval_fraction=0.5))
    assert where(result) == [
        ("line 1", "prompt", "in_eval", "question also in the eval set: eval.jsonl line 1 (id 'e1')"),
        ("line 3", "prompt", "in_eval", "question also in the eval set: eval.jsonl line 2 (id 'e2')"),
    ]
    assert train_ids(result) == ["b"]  # with an eval file, no split: eval_fraction is ignored
    assert result.eval == eval_rows
    assert result.eval_source == "eval.jsonl"
    assert_every_row_accounted_for(result)


@pytest.mark.parametrize(
    "line,message",
    [
        (b'{"id": "e1", "prompt": ', r"eval.jsonl:line 2: invalid JSON"),
        (b'["not", "an", "object"]', r"eval.jsonl:line 2: an eval row must be a JSON object, got list"),
        (b'{"id": "e1", "answer": "A"}', r"eval.jsonl:line 2: field 'prompt': missing required field"),
        (
            b'{"id": "e1", "prompt": [{"role": "assistant", "content": "x"}]}',
            r"eval.jsonl:line 2: field 'prompt\[0\].role': the last message must be a user turn",
        ),
    ],
)
def test_a_bad_eval_line_raises_naming_file_and_line(tmp_path, line, message):
    demonstrations = jsonl(tmp_path / "d.jsonl", [row("a", "q")])
    eval_path = tmp_path / "eval.jsonl"
    eval_path.write_bytes(json.dumps(row("ok", "fine")).encode() + b"\n" + line + b"\n")
    with pytest.raises(ValueError, match=message):
        curate(demonstrations, eval_path)


# ------------------------------------------------------------------------------------------- rule 6: split
def numbered_rows(start, stop):
    return [
        row(f"item-{i}", f"Question number {i} about topic {i * 7919 % 1000}?", f"Answer {i}.", answer=str(i))
        for i in range(start, stop)
    ]


def test_split_holds_out_rows_by_salted_hash_of_the_id(tmp_path):
    rows = numbered_rows(0, 400)
    result = curate(jsonl(tmp_path / "d.jsonl", rows), config=CurationConfig(eval_fraction=0.3))
    expected_eval = [r["id"] for r in rows if draw(r["id"]) < 0.3]
    assert [r["id"] for r in result.eval] == expected_eval
    assert 80 < len(expected_eval) < 160
    assert train_ids(result) == [r["id"] for r in rows if draw(r["id"]) >= 0.3]
    assert result.eval[0] == next(r for r in rows if r["id"] == expected_eval[0])  # raw dicts, answer field kept
    assert result.eval_source == "split"
    assert result.rejected == []
    assert_every_row_accounted_for(result)

    resalted = curate(tmp_path / "d.jsonl", config=CurationConfig(eval_fraction=0.3, split_salt="other"))
    assert [r["id"] for r in resalted.eval] != expected_eval


def test_split_is_deterministic_and_adding_rows_never_moves_old_ones(tmp_path):
    config = CurationConfig(eval_fraction=0.2)
    first = curate(jsonl(tmp_path / "v1.jsonl", numbered_rows(0, 150)), config=config)
    again = curate(tmp_path / "v1.jsonl", config=config)
    assert (train_ids(again), again.eval) == (train_ids(first), first.eval)

    grown = curate(jsonl(tmp_path / "v2.jsonl", numbered_rows(150, 300) + numbered_rows(0, 150)), config=config)
    old_ids = {f"item-{i}" for i in range(150)}
    assert {r["id"] for r in grown.eval} & old_ids == {r["id"] for r in first.eval}
    assert set(train_ids(grown)) & old_ids == set(train_ids(first))
    assert len(grown.eval) > len(first.eval)  # new rows are split too
    assert_every_row_accounted_for(grown)


def test_split_rejects_a_train_row_whose_question_was_held_out(tmp_path):
    held_out = next(f"x{i}" for i in range(1000) if draw(f"x{i}") < 0.5)
    trained = next(f"y{i}" for i in range(1000) if draw(f"y{i}") >= 0.5)
    path = jsonl(
        tmp_path / "d.jsonl",
        [
            row(trained, "Why is the sky blue?", "Rayleigh scattering."),
            row(held_out, "why is the sky blue", "Because of scattering."),
        ],
    )
    result = curate(path, config=CurationConfig(eval_fraction=0.5))
    assert where(result) == [
        (
            "line 1",
            "prompt",
            "in_eval",
            f"question also in the eval set: line 2 (id '{held_out}'), held out by the split",
        )
    ]
    assert [r["id"] for r in result.eval] == [held_out]
    assert result.train == []
    assert_every_row_accounted_for(result)


# ------------------------------------------------------------------------------------------- results
def every_kind_of_row():
    return [
        row("leak", "Held out question?", "Answer."),  # rejected last, listed first: file order
        row("ok", "A fine question?", "A fine answer."),
        "not json",
        row("long", "x" * 50, "An answer."),
        row("dup", "a fine QUESTION?", "A fine answer."),
        row("near", "A fine question!", "A fine answer"),
        row("ok2", "Another question?", "Another answer."),
    ]


def write_every_kind(path):
    rows = every_kind_of_row()
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_counts_and_rejected_share(tmp_path):
    demonstrations = write_every_kind(tmp_path / "d.jsonl")
    eval_path = jsonl(tmp_path / "eval.jsonl", [row("e", "Held out question?", "Answer.")])
    result = curate(demonstrations, eval_path, CurationConfig(max_prompt_chars=40))
    assert result.counts() == {
        "read": 7,
        "accepted": 2,
        "eval": 1,
        "rejected": 5,
        "rejected_invalid": 1,
        "rejected_too_long": 1,
        "rejected_too_short": 0,
        "rejected_duplicate": 1,
        "rejected_near_duplicate": 1,
        "rejected_in_eval": 1,
    }
    assert result.rejected_share() == pytest.approx(5 / 7)
    assert [r.location for r in result.rejected] == ["line 1", "line 3", "line 4", "line 5", "line 6"]
    assert train_ids(result) == ["ok", "ok2"]
    assert_every_row_accounted_for(result)


def test_rejected_rows_round_trip_through_parquet(tmp_path):
    demonstrations = write_every_kind(tmp_path / "d.jsonl")
    eval_path = jsonl(tmp_path / "eval.jsonl", [row("e", "Held out question?", "Answer.")])
    rows = curate(demonstrations, eval_path, CurationConfig(max_prompt_chars=40)).rejected_rows()
    assert [(r["location"], r["category"], r["field"]) for r in rows] == [
        ("line 1", "in_eval", "prompt"),
        ("line 3", "invalid", None),
        ("line 4", "too_long", "prompt"),
        ("line 5", "duplicate", None),
        ("line 6", "near_duplicate", None),
    ]
    assert rows[1]["raw"] == "not json"  # the line as read
    assert json.loads(rows[2]["raw"])["id"] == "long"

    pd.DataFrame(rows).to_parquet(tmp_path / "rejected.parquet")
    back = pd.read_parquet(tmp_path / "rejected.parquet")
    assert list(back.columns) == ["source", "location", "field", "reason", "category", "raw"]
    assert back.astype(object).where(back.notna(), None).to_dict("records") == rows


def test_parquet_input_gives_the_same_result_with_row_locations(tmp_path):
    rows = [
        row("a", "What is 2+2?", "4", answer="4"),
        row("b", "x" * 50, "long"),
        row("c", "what is 2+2?", "4", answer="4"),
        row("d", "Something else?", "else", answer="e"),
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    config = CurationConfig(max_prompt_chars=40, eval_fraction=0.0)
    from_parquet = curate(tmp_path / "d.parquet", config=config)
    from_jsonl = curate(jsonl(tmp_path / "d.jsonl", rows), config=config)
    assert where(from_parquet) == [
        ("row 2", "prompt", "too_long", "50 characters, over the limit of 40"),
        ("row 3", None, "duplicate", "duplicate of row 1 (id 'a')"),
    ]
    assert from_parquet.train == from_jsonl.train
    assert from_parquet.train[1].metadata == {"answer": "e"}
    assert json.loads(from_parquet.rejected_rows()[0]["raw"]) == rows[1]
    assert_every_row_accounted_for(from_parquet)


# ------------------------------------------------------------------------------------------- skill folders
def test_skill_folder_with_eval_jsonl(tmp_path):
    folder = tmp_path / "skills" / "geography"
    demonstrations = [
        row("a", "Capital of France?", "Paris"),
        row("b", "Capital of Spain?", "Madrid"),
        row("c", "Capital of Italy?", "Rome"),
    ]
    eval_rows = [row("e1", "capital of italy", "Rome", answer="Rome"), row("e2", "Capital of Peru?", "Lima")]
    jsonl(folder / "demonstrations.jsonl", demonstrations)
    jsonl(folder / "eval.jsonl", eval_rows)
    jsonl(folder / "validation.jsonl", [row("v1", "Capital of Spain?", "Madrid")])  # not the eval set
    (folder / "skill.yaml").write_text("name: geography\nscorer: short_answer\n")
    result = curate_skill(folder, CurationConfig(eval_fraction=0.9))
    assert result.eval_source == "eval.jsonl"
    assert result.eval == eval_rows
    assert train_ids(result) == ["a", "b"]
    assert where(result) == [
        ("line 3", "prompt", "in_eval", "question also in the eval set: eval.jsonl line 1 (id 'e1')")
    ]
    assert result.rejected[0].source == str(folder / "demonstrations.jsonl")
    assert_every_row_accounted_for(result)


def test_skill_folder_with_an_empty_eval_jsonl_is_split(tmp_path):
    jsonl(tmp_path / "demonstrations.jsonl", numbered_rows(0, 50))
    (tmp_path / "eval.jsonl").write_text("\n")
    result = curate_skill(tmp_path, CurationConfig(eval_fraction=0.5))
    assert result.eval_source == "split"
    assert [r["id"] for r in result.eval] == [f"item-{i}" for i in range(50) if draw(f"item-{i}") < 0.5]


def test_skill_folder_reads_parquet_and_refuses_ambiguity(tmp_path):
    with pytest.raises(FileNotFoundError, match="no demonstrations"):
        curate_skill(tmp_path)
    pd.DataFrame(numbered_rows(0, 5)).to_parquet(tmp_path / "demonstrations.parquet")
    assert train_ids(curate_skill(tmp_path, ALL_TRAIN)) == [f"item-{i}" for i in range(5)]
    jsonl(tmp_path / "demonstrations.jsonl", numbered_rows(0, 5))
    with pytest.raises(FileNotFoundError, match="both"):
        curate_skill(tmp_path)


@pytest.mark.parametrize(
    "field,value",
    [
        ("near_duplicate_threshold", 0.0),
        ("near_duplicate_threshold", 1.5),
        ("shingle_size", 0),
        ("eval_fraction", 1.0),
        ("template_share", 0.0),
    ],
)
def test_config_refuses_values_that_cannot_work(field, value):
    with pytest.raises(ValueError, match=field):
        CurationConfig(**{field: value})
