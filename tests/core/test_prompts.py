import pytest

from sdft_core.config import PromptConfig
from sdft_core.prompts import (
    TRUNCATION_MARK,
    PromptTooLongError,
    encode_messages,
    encode_record,
    encode_student,
    encode_teacher,
    teacher_messages,
)
from sdft_core.records import Demonstration

QUESTION = "What is the capital of France?"
DEMO = "The capital of France is Paris. So the answer is C. Paris."


def record(**overrides):
    fields = {"id": "q1", "prompt": QUESTION, "demonstration": DEMO} | overrides
    return Demonstration(**fields)


def decode(tokenizer, ids):
    return tokenizer.decode(ids)


def test_student_prompt_is_exactly_the_chat_template_at_inference(tokenizer):
    rec = record(system="Answer briefly.")
    ids = encode_student(rec, tokenizer, PromptConfig())
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": QUESTION}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert decode(tokenizer, ids) == text
    assert text.endswith("<|im_start|>assistant\n")


def test_inline_teacher_prompt_uses_the_paper_template_in_the_last_user_turn(tokenizer):
    rec = record(
        prompt=[
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": QUESTION},
        ],
        system="Be kind.",
    )
    messages = teacher_messages(rec, PromptConfig())
    assert messages[:3] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
    assert messages[3] == {
        "role": "user",
        "content": (
            f"{QUESTION}\n\nThis is an example for a response to the question:\n{DEMO}\n\n"
            "Now answer with a response of your own, including the thinking process:"
        ),
    }


def test_knowledge_variant_puts_the_source_text_first(tokenizer):
    rec = record(context="France is a country in Europe. Its capital is Paris.")
    content = teacher_messages(rec, PromptConfig())[-1]["content"]
    assert content.index("France is a country") < content.index(QUESTION) < content.index(DEMO)
    without = teacher_messages(rec, PromptConfig(use_context=False))[-1]["content"]
    assert "France is a country" not in without


def test_prior_turn_mode_shows_the_demonstration_as_an_earlier_exchange(tokenizer):
    rec = record(system="S")
    messages = teacher_messages(rec, PromptConfig(teacher_mode="prior_turn"))
    assert messages == [
        {"role": "system", "content": "S"},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": DEMO},
        {"role": "user", "content": QUESTION},
    ]
    ids, truncated = encode_teacher(rec, tokenizer, PromptConfig(teacher_mode="prior_turn"))
    assert not truncated and decode(tokenizer, ids).endswith(f"{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def test_long_demonstration_is_shortened_never_the_question(tokenizer):
    long_demo = "Step one. " + " ".join(f"fact{i}" for i in range(2000)) + " So the answer is C. Paris."
    rec = record(demonstration=long_demo)
    config = PromptConfig(max_teacher_prompt_tokens=200)
    ids, truncated = encode_teacher(rec, tokenizer, config)
    text = decode(tokenizer, ids)
    assert truncated and len(ids) <= 200
    assert len(ids) >= 190  # the budget is used, not wasted
    assert QUESTION in text and TRUNCATION_MARK in text
    assert "Step one." in text and "So the answer is C. Paris." in text  # head and final answer kept
    assert text.rstrip().endswith("<|im_start|>assistant")


def test_long_context_and_demonstration_share_the_budget(tokenizer):
    rec = record(
        context=" ".join(f"source{i}" for i in range(1500)), demonstration=" ".join(f"demo{i}" for i in range(1500))
    )
    ids, truncated = encode_teacher(rec, tokenizer, PromptConfig(max_teacher_prompt_tokens=300))
    text = decode(tokenizer, ids)
    assert truncated and 280 <= len(ids) <= 300
    assert QUESTION in text and text.count(TRUNCATION_MARK) == 2
    assert "source0" in text and "demo0" in text


def test_short_demonstration_stays_whole_when_the_context_is_cut(tokenizer):
    rec = record(context=" ".join(f"source{i}" for i in range(1500)))
    ids, _ = encode_teacher(rec, tokenizer, PromptConfig(max_teacher_prompt_tokens=300))
    assert DEMO in decode(tokenizer, ids)


def test_question_that_alone_exceeds_the_teacher_budget_raises(tokenizer):
    rec = record(prompt=" ".join(["question"] * 300))
    with pytest.raises(PromptTooLongError, match=r"record 'q1'.*question and template alone.*max_teacher"):
        encode_teacher(rec, tokenizer, PromptConfig(max_teacher_prompt_tokens=100))


def test_student_prompt_over_budget_raises(tokenizer):
    with pytest.raises(PromptTooLongError, match=r"record 'q1': the student prompt has \d+ tokens"):
        encode_student(record(), tokenizer, PromptConfig(max_prompt_tokens=5))


def test_encode_record_fits_without_truncation(tokenizer):
    encoded = encode_record(record(), tokenizer, PromptConfig())
    assert not encoded.teacher_truncated
    assert encoded.student_ids == encode_messages(tokenizer, record().messages)
    assert len(encoded.teacher_ids) > len(encoded.student_ids)
