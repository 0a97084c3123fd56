"""The paper's in-context assumption, checked before training: does the model answer better when it is shown
the demonstration (the teacher prompt) than from the task prompt alone (the student prompt)?

If the teacher is not clearly better, the teacher's token distributions carry no better answer for the student to
learn, and SDFT cannot help; the pipeline warns before spending compute on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..config import PromptConfig
from ..prompts import encode_messages, encode_teacher
from ..records import validate_record
from .engine import greedy_completions
from .suite import score_answer
from .tasks import subsample


def teacher_check(model, tokenizer, records: Sequence[dict], scorer: str, prompts: PromptConfig | None = None,
                  max_new_tokens: int = 128, sample: int = 32, min_gain: float = 0.10, seed: int = 0,
                  batch_size: int = 16) -> dict[str, Any]:
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
    return {"n": n, "teacher_mode": prompts.teacher_mode, "student_score": student_score,
            "teacher_score": teacher_score, "gain": teacher_score - student_score, "min_gain": min_gain,
            "teacher_clearly_better": teacher_score - student_score >= min_gain,
            "examples": [{"id": str(r["id"]), "student": s, "teacher": t, "student_correct": sc,
                          "teacher_correct": tc}
                         for r, s, t, sc, tc in zip(chosen, student, teacher, student_scores, teacher_scores)]}
