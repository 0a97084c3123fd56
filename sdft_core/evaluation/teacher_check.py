"""The paper's in-context assumption, checked before training: does the model answer better when it is shown
the demonstration (the teacher prompt) than from the task prompt alone (the student prompt)?

If the teacher is not clearly better, the teacher's token distributions carry no better answer for the student to
learn, and SDFT cannot help; the pipeline warns before spending compute on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import PromptConfig
from ..prompts import encode_completion, encode_messages, encode_teacher
from ..records import validate_record
from .engine import greedy_completions
from .suite import score_answer
from .tasks import subsample


def teacher_check(
    model,
    tokenizer,
    records: Sequence[dict],
    scorer: str,
    prompts: PromptConfig | None = None,
    max_new_tokens: int = 128,
    sample: int = 32,
    min_gain: float = 0.10,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Greedy answers to the student and the teacher prompt of `sample` training records, scored alike.

    `teacher_clearly_better` is true when the teacher's score exceeds the student's by at least `min_gain`.
    """
    prompts = prompts or PromptConfig()
    chosen = subsample(list(records), sample, seed)
    demonstrations = [validate_record(r) for r in chosen]
    student_ids = [encode_messages(tokenizer, d.messages) for d in demonstrations]
    teacher_ids = [encode_teacher(d, tokenizer, prompts)[0] for d in demonstrations]
    student = greedy_completions(model, tokenizer, student_ids, max_new_tokens, batch_size)
    teacher = greedy_completions(model, tokenizer, teacher_ids, max_new_tokens, batch_size)
    student_scores = [score_answer(scorer, answer, r)["correct"] for answer, r in zip(student, chosen)]
    teacher_scores = [score_answer(scorer, answer, r)["correct"] for answer, r in zip(teacher, chosen)]
    n = len(chosen)
    student_score, teacher_score = sum(student_scores) / n, sum(teacher_scores) / n
    return {
        "n": n,
        "teacher_mode": prompts.teacher_mode,
        "student_score": student_score,
        "teacher_score": teacher_score,
        "gain": teacher_score - student_score,
        "min_gain": min_gain,
        "teacher_clearly_better": teacher_score - student_score >= min_gain,
        "examples": [
            {"id": str(r["id"]), "student": s, "teacher": t, "student_correct": sc, "teacher_correct": tc}
            for r, s, t, sc, tc in zip(chosen, student, teacher, student_scores, teacher_scores)
        ],
    }


def on_policy_check(
    model,
    tokenizer,
    records: Sequence[dict],
    scorer: str,
    prompts: PromptConfig | None = None,
    max_new_tokens: int = 128,
    sample: int = 32,
    samples_per_prompt: int = 4,
    skip_first_tokens: int = 3,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Does the teacher's correction point toward right answers on the student's own samples?

    SDFT never trains on the teacher's answers, only on the student's samples (temperature 1), pushing every
    token toward the teacher's distribution there. Read as reinforcement learning, its per-token reward is
    log pi_teacher(y_t) - log pi_student(y_t) (the paper, §3.1). So SDFT can raise the score only if, among the
    student's own samples of a prompt, the right ones earn more of that reward than the wrong ones, on the tokens
    that carry loss (the first `skip_first_tokens` do not). `teacher_check` cannot see this: a teacher that copies
    the demonstration greedily says nothing about how it scores what the student actually writes.

    Per prompt, `samples_per_prompt` completions are sampled and scored; `reward_auc` is the share of (right,
    wrong) pairs of the same prompt in which the right one has the higher mean reward over its loss tokens (ties
    count half; 0.5 = no signal), `reward_auc_all_tokens` the same with every token counted.
    """
    import torch

    from ..models import eos_token_ids
    from ..rollout import sample_key
    from .drift import completion_log_probs, sample_token_lists

    prompts = prompts or PromptConfig()
    chosen = subsample(list(records), sample, seed)
    demonstrations = [validate_record(r) for r in chosen]
    student_ids = [encode_messages(tokenizer, d.messages) for d in demonstrations]
    teacher_ids = [encode_teacher(d, tokenizer, prompts)[0] for d in demonstrations]
    rows = [(i, g) for i in range(len(chosen)) for g in range(samples_per_prompt)]
    completions = sample_token_lists(
        model,
        tokenizer,
        [student_ids[i] for i, _ in rows],
        [sample_key(seed, i, g) for i, g in rows],
        max_new_tokens,
        batch_size,
    )
    eos = eos_token_ids(model, tokenizer)
    answers = [tokenizer.decode(c, skip_special_tokens=True).strip() for c in completions]
    correct = [score_answer(scorer, answer, chosen[i])["correct"] for answer, (i, _) in zip(answers, rows)]

    def sampled_log_probs(prompt_ids: list[list[int]]) -> list[torch.Tensor]:
        out = []
        batches = completion_log_probs(model, prompt_ids, completions, tokenizer.pad_token_id, batch_size)
        for start, log_probs in zip(range(0, len(rows), batch_size), batches):
            cursor = 0
            for completion in completions[start : start + batch_size]:
                picked = log_probs[cursor : cursor + len(completion)].gather(1, torch.tensor(completion)[:, None])
                out.append(picked[:, 0].double())
                cursor += len(completion)
        return out

    student = sampled_log_probs([student_ids[i] for i, _ in rows])
    teacher = sampled_log_probs([teacher_ids[i] for i, _ in rows])
    rewards = {
        skip: [float((t[skip:] - s[skip:]).mean()) if len(t) > skip else 0.0 for s, t in zip(student, teacher)]
        for skip in {skip_first_tokens, 0}
    }

    # Where a demonstration ends, does the teacher end too? SDFT copies the teacher's wish to go on into the student.
    ended = [encode_completion(tokenizer, d.demonstration, tokenizer.eos_token_id) for d in demonstrations]

    def stop_probability(prompt_ids: list[list[int]]) -> float:
        probabilities = []
        batches = completion_log_probs(model, prompt_ids, ended, tokenizer.pad_token_id, batch_size)
        for start, log_probs in zip(range(0, len(ended), batch_size), batches):
            cursor = 0
            for completion in ended[start : start + batch_size]:
                cursor += len(completion)
                probabilities.append(float(log_probs[cursor - 1, completion[-1]].exp()))
        return sum(probabilities) / len(probabilities)

    groups = [i for i, _ in rows]
    reward_auc, informative = paired_auc(rewards[skip_first_tokens], correct, groups)
    lengths = [len(c) for c in completions]
    result = {
        "n": len(chosen),
        "samples_per_prompt": samples_per_prompt,
        "teacher_mode": prompts.teacher_mode,
        "skip_first_tokens": skip_first_tokens,
        "student_sample_score": sum(correct) / len(correct),
        "coverage": sum(any(correct[k] for k, (j, _) in enumerate(rows) if j == i) for i in range(len(chosen)))
        / len(chosen),
        "informative_prompts": informative,
        "reward_auc": reward_auc,
        "reward_auc_all_tokens": paired_auc(rewards[0], correct, groups)[0],
        "mean_completion_tokens": sum(lengths) / len(lengths),
        "loss_token_share": sum(max(0, n - skip_first_tokens) for n in lengths) / max(1, sum(lengths)),
        "teacher_stop_probability": stop_probability(teacher_ids),
        "student_stop_probability": stop_probability(student_ids),
        "eos_fraction": sum(c[-1] in eos for c in completions if c) / len(completions),
    }
    examples = [
        {"id": str(chosen[i]["id"]), "answer": a, "completion_ids": ids, "correct": c, "reward": r}
        for (i, _), a, ids, c, r in zip(rows, answers, completions, correct, rewards[skip_first_tokens])
    ]
    return result | {"verdict": on_policy_verdict(result), "examples": examples}


def paired_auc(rewards: Sequence[float], correct: Sequence[float], groups: Sequence[Any]) -> tuple[float | None, int]:
    """Share of (right, wrong) pairs within a group (a prompt) in which the right one has the higher reward, ties
    counting half (None without any pair), and how many groups hold both a right and a wrong one."""
    by_group: dict[Any, tuple[list[float], list[float]]] = {}
    for reward, right, group in zip(rewards, correct, groups):
        by_group.setdefault(group, ([], []))[0 if right else 1].append(reward)
    wins, pairs = 0.0, 0
    for right, wrong in by_group.values():
        for a in right:
            for b in wrong:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
                pairs += 1
    return (wins / pairs if pairs else None), sum(bool(r and w) for r, w in by_group.values())


def on_policy_verdict(
    check: dict[str, Any], min_auc: float = 0.6, min_informative: int = 3, min_stop: float = 0.5
) -> str:
    """Whether SDFT has a signal to learn from on these samples, and what to change if not (findings joined by
    "; "; the first one is the signal)."""
    auc, auc_all, skip = check["reward_auc"], check["reward_auc_all_tokens"], check["skip_first_tokens"]
    if check["informative_prompts"] < min_informative:
        findings = [
            f"no signal to compare: only {check['informative_prompts']} prompts have both right and wrong "
            f"samples (the student's samples score {100 * check['student_sample_score']:.0f}%); SDFT can only "
            "reweight what the student already samples: consider SFT first"
        ]
    elif auc is not None and auc >= min_auc:
        findings = [
            f"signal: the teacher prefers the student's right samples (reward AUC {auc:.2f} on the loss tokens)"
        ]
    elif skip and auc_all is not None and auc_all >= min_auc:
        findings = [
            f"the signal is in the masked tokens: reward AUC {auc:.2f} on the loss tokens but {auc_all:.2f} "
            "on all tokens; set loss.skip_first_tokens=0 for this skill"
        ]
    else:
        findings = [
            f"no signal: the teacher does not prefer the student's right samples (reward AUC {auc:.2f}); "
            "SDFT is unlikely to raise the score"
        ]
    if skip and findings[0].startswith("signal") and auc_all is not None and auc_all - auc >= 0.15:
        findings.append(
            f"the first {skip} tokens, out of the loss, hold much of the signal (reward AUC "
            f"{auc_all:.2f} with them); consider loss.skip_first_tokens=0"
        )
    stop = check.get("teacher_stop_probability")
    if stop is not None and stop < min_stop:
        findings.append(
            f"the teacher does not stop where a demonstration ends (P(end) {stop:.2f} after a whole "
            "demonstration): SDFT will teach the student to run on past its answer; use "
            "prompts.teacher_mode=prior_turn or a teacher template that does not ask for more"
        )
    return "; ".join(findings)
