"""Student and teacher prompts.

The student sees the task prompt through the tokenizer's chat template, exactly as at inference. The teacher is
the same network shown the demonstration as well (the paper's template inside the last user turn, or the
demonstration as an earlier assistant turn). The teacher prompt has its own token budget: when it is too long the
demonstration and context are shortened from the middle, never the question.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import PromptConfig
from .records import Demonstration

TRUNCATION_MARK = " [...] "


class PromptTooLongError(ValueError):
    pass


@dataclass(frozen=True)
class EncodedPrompts:
    student_ids: list[int]
    teacher_ids: list[int]
    teacher_truncated: bool  # the demonstration or context was shortened to fit the teacher budget


def student_messages(record: Demonstration) -> list[dict[str, str]]:
    return record.messages


def teacher_messages(
    record: Demonstration, config: PromptConfig, demonstration: str | None = None, context: str | None = None
) -> list[dict[str, str]]:
    """The teacher's chat messages; `demonstration`/`context` override the record's (shortened) texts."""
    demonstration = record.demonstration if demonstration is None else demonstration
    if context is None:
        context = record.context if config.use_context else None
    messages = record.messages
    question = messages[-1]["content"]
    if config.teacher_mode == "inline":
        template = config.teacher_template_with_context if context is not None else config.teacher_template
        messages[-1] = {
            "role": "user",
            "content": template.format(question=question, demonstration=demonstration, context=context),
        }
        return messages
    if config.teacher_mode == "prior_turn":
        first_turn = question
        if context is not None:
            first_turn = config.prior_turn_template_with_context.format(question=question, context=context)
        return messages[:-1] + [
            {"role": "user", "content": first_turn},
            {"role": "assistant", "content": demonstration},
            {"role": "user", "content": question},
        ]
    raise ValueError(f"unknown teacher_mode {config.teacher_mode!r}")


def encode_messages(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Chat template with the generation prompt, tokenized the way generation sees it."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_completion(tokenizer, text: str, eos_token_id: int) -> list[int]:
    """Tokens of an assistant answer followed by EOS, as the student would emit them after the prompt."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [eos_token_id]


def encode_student(record: Demonstration, tokenizer, config: PromptConfig) -> list[int]:
    ids = encode_messages(tokenizer, student_messages(record))
    if len(ids) > config.max_prompt_tokens:
        raise PromptTooLongError(
            f"record {record.id!r}: the student prompt has {len(ids)} tokens, more than "
            f"max_prompt_tokens={config.max_prompt_tokens}; the question is never truncated"
        )
    return ids


def encode_teacher(record: Demonstration, tokenizer, config: PromptConfig) -> tuple[list[int], bool]:
    """Teacher prompt ids within `max_teacher_prompt_tokens`, and whether anything had to be shortened."""
    budget = config.max_teacher_prompt_tokens
    ids = encode_messages(tokenizer, teacher_messages(record, config))
    if len(ids) <= budget:
        return ids, False

    pieces = {"demonstration": record.demonstration}
    if config.use_context and record.context is not None:
        pieces["context"] = record.context
    piece_tokens = {name: tokenizer(text, add_special_tokens=False)["input_ids"] for name, text in pieces.items()}

    def encode_with_cap(cap: int) -> list[int]:
        texts = {
            name: pieces[name] if len(tokens) <= cap else _shorten(tokenizer, tokens, cap)
            for name, tokens in piece_tokens.items()
        }
        return encode_messages(tokenizer, teacher_messages(record, config, **texts))

    minimal = encode_with_cap(0)
    if len(minimal) > budget:
        raise PromptTooLongError(
            f"record {record.id!r}: the teacher prompt needs {len(minimal)} tokens for the question and template "
            f"alone, more than max_teacher_prompt_tokens={budget}; the question is never truncated"
        )
    # Largest per-piece token cap that fits: long pieces are cut to the cap, short ones stay whole.
    fits, too_long = 0, max(len(tokens) for tokens in piece_tokens.values())
    best = minimal
    while too_long - fits > 1:
        cap = (fits + too_long) // 2
        candidate = encode_with_cap(cap)
        if len(candidate) <= budget:
            fits, best = cap, candidate
        else:
            too_long = cap
    return best, True


def _shorten(tokenizer, tokens: list[int], cap: int) -> str:
    """Keep the first and last cap/2 tokens: demonstrations often end with their final answer."""
    if cap == 0:
        return ""
    head = (cap + 1) // 2
    tail = cap - head
    text = tokenizer.decode(tokens[:head]) + TRUNCATION_MARK
    return text + tokenizer.decode(tokens[len(tokens) - tail :]) if tail else text


def encode_record(record: Demonstration, tokenizer, config: PromptConfig) -> EncodedPrompts:
    student = encode_student(record, tokenizer, config)
    teacher, truncated = encode_teacher(record, tokenizer, config)
    return EncodedPrompts(student, teacher, truncated)


def teacher_context_rows(
    records: list[Demonstration], tokenizer, config: PromptConfig
) -> tuple[list[dict], list[dict]]:
    """What the student and the teacher will read for each record, with token counts.

    Returns (rows, refused): a refused record's prompt does not fit its budget even with the demonstration cut.
    `question_kept` says whether the teacher prompt still contains the question verbatim.
    """
    rows, refused = [], []
    for record in records:
        try:
            encoded = encode_record(record, tokenizer, config)
        except PromptTooLongError as err:
            refused.append({"id": record.id, "reason": str(err)})
            continue
        teacher_text = tokenizer.decode(encoded.teacher_ids)
        rows.append(
            {
                "id": record.id,
                "student_prompt": tokenizer.decode(encoded.student_ids),
                "teacher_prompt": teacher_text,
                "student_tokens": len(encoded.student_ids),
                "teacher_tokens": len(encoded.teacher_ids),
                "teacher_truncated": encoded.teacher_truncated,
                "question_kept": record.question.strip() in teacher_text,
            }
        )
    return rows, refused
