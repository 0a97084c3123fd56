"""The on-policy check: SDFT's implicit reward on the student's own samples, against a float64 brute force."""

import pytest
import torch

from sdft_core.config import PromptConfig
from sdft_core.evaluation import teacher_check as module
from sdft_core.evaluation.teacher_check import on_policy_check, on_policy_verdict, paired_auc
from sdft_core.prompts import encode_messages, encode_teacher
from sdft_core.records import validate_record


def _records(n=5):
    return [
        {
            "id": f"r{i}",
            "prompt": f"What is the capital of France? ({i})",
            "demonstration": "Paris",
            "answers": ["Paris"],
        }
        for i in range(n)
    ]


def test_rewards_match_a_float64_brute_force_and_the_pairs_are_counted(tiny_model, tokenizer, monkeypatch):
    # A stand-in scorer marks samples right by the parity of their length, so every prompt gets a mix.
    monkeypatch.setattr(module, "score_answer", lambda scorer, answer, record: {"correct": float(len(answer) % 2)})
    records, prompts = _records(), PromptConfig(teacher_mode="inline")
    result = on_policy_check(
        tiny_model,
        tokenizer,
        records,
        "stand-in",
        prompts,
        max_new_tokens=7,
        sample=4,
        samples_per_prompt=3,
        skip_first_tokens=2,
        batch_size=5,
    )
    assert result["n"] == 4 and len(result["examples"]) == 12
    chosen = {r["id"]: validate_record(r) for r in records}
    model64 = tiny_model.double()
    for example in result["examples"]:
        record, completion = chosen[example["id"]], example["completion_ids"]
        log_ratio = 0.0
        for sign, prompt in (
            (-1, encode_messages(tokenizer, record.messages)),
            (1, encode_teacher(record, tokenizer, prompts)[0]),
        ):
            with torch.no_grad():
                logits = model64(torch.tensor([prompt + completion[:-1]])).logits[0, len(prompt) - 1 :]
            picked = torch.log_softmax(logits, -1).gather(1, torch.tensor(completion)[:, None])[:, 0]
            log_ratio = log_ratio + sign * picked[2:]
        expected = float(log_ratio.mean()) if len(completion) > 2 else 0.0
        assert example["reward"] == pytest.approx(expected, rel=1e-4, abs=1e-5)
        assert example["correct"] == float(len(example["answer"]) % 2)
    tiny_model.float()
    rewards = [e["reward"] for e in result["examples"]]
    correct = [e["correct"] for e in result["examples"]]
    groups = [e["id"] for e in result["examples"]]
    assert (result["reward_auc"], result["informative_prompts"]) == paired_auc(rewards, correct, groups)
    assert result["student_sample_score"] == pytest.approx(sum(correct) / 12)
    stops = {"teacher": [], "student": []}  # P(EOS) right after each chosen record's whole demonstration
    model64 = tiny_model.double()
    for record in {chosen[e["id"]].id: chosen[e["id"]] for e in result["examples"]}.values():
        ended = tokenizer(record.demonstration, add_special_tokens=False)["input_ids"]
        for who, prompt in (
            ("student", encode_messages(tokenizer, record.messages)),
            ("teacher", encode_teacher(record, tokenizer, prompts)[0]),
        ):
            with torch.no_grad():
                logits = model64(torch.tensor([prompt + ended])).logits[0, -1]
            stops[who].append(float(torch.softmax(logits, -1)[tokenizer.eos_token_id]))
    tiny_model.float()
    for who in ("teacher", "student"):
        assert result[f"{who}_stop_probability"] == pytest.approx(sum(stops[who]) / len(stops[who]), rel=1e-4)
    lengths = [len(e["completion_ids"]) for e in result["examples"]]
    assert result["loss_token_share"] == pytest.approx(sum(max(0, n - 2) for n in lengths) / sum(lengths))


def test_paired_auc_compares_right_and_wrong_samples_of_the_same_prompt():
    # prompt a: right 3.0 beats wrong 1.0 and ties wrong 3.0; prompt b: right 0.0 loses to wrong 2.0; c: all wrong
    rewards = [3.0, 1.0, 3.0, 0.0, 2.0, 9.0]
    correct = [1, 0, 0, 1, 0, 0]
    groups = ["a", "a", "a", "b", "b", "c"]
    assert paired_auc(rewards, correct, groups) == (pytest.approx((1 + 0.5 + 0) / 3), 2)
    assert paired_auc([1.0, 2.0], [1, 1], ["a", "a"]) == (None, 0)


def test_the_verdict_names_the_masked_signal_and_a_teacher_that_does_not_stop():
    check = {
        "reward_auc": 0.5,
        "reward_auc_all_tokens": 0.8,
        "skip_first_tokens": 3,
        "informative_prompts": 10,
        "student_sample_score": 0.2,
        "teacher_stop_probability": 0.9,
    }
    assert on_policy_verdict(check).startswith("the signal is in the masked tokens")
    assert "loss.skip_first_tokens=0" in on_policy_verdict(check)
    assert on_policy_verdict(check | {"reward_auc": 0.7, "reward_auc_all_tokens": 0.7}) == (
        "signal: the teacher prefers the student's right samples (reward AUC 0.70 on the loss tokens)"
    )
    assert "consider loss.skip_first_tokens=0" in on_policy_verdict(check | {"reward_auc": 0.62})
    assert on_policy_verdict(check | {"reward_auc_all_tokens": 0.5}).startswith("no signal")
    assert "consider SFT" in on_policy_verdict(check | {"informative_prompts": 1})
    assert "does not stop" in on_policy_verdict(check | {"teacher_stop_probability": 0.1})
    assert "does not stop" not in on_policy_verdict(check)
