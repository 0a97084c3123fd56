import copy

import pytest
import torch

from sdft_core.config import LoraSettings
from sdft_core.decoding import position_ids
from sdft_core.models import apply_lora
from sdft_core.teacher import Teacher
from tests.tiny import make_model

INPUT_IDS = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
ATTENTION = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])


def perturb_(model, scale=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)


def test_ema_update_equals_the_formula(tiny_model):
    teacher = Teacher(tiny_model, "ema", ema_alpha=0.1)
    before = [t.clone() for t in teacher.params]
    perturb_(tiny_model)
    teacher.update()
    students = [p for p in tiny_model.parameters() if p.requires_grad]
    assert len(students) == len(teacher.params)
    for old, new, student in zip(before, teacher.params, students):
        want = 0.9 * old.double() + 0.1 * student.detach().double()
        torch.testing.assert_close(new.double(), want, rtol=1e-6, atol=1e-7)
    assert not torch.equal(teacher.params[0], students[0])


def test_frozen_teacher_never_changes(tiny_model):
    teacher = Teacher(tiny_model, "frozen")
    before = [t.clone() for t in teacher.params]
    for seed in range(3):
        perturb_(tiny_model, seed=seed)
        teacher.update()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.params))


def test_teacher_forward_matches_a_model_holding_the_teacher_weights(tiny_model):
    teacher = Teacher(tiny_model, "ema", ema_alpha=0.3)
    perturb_(tiny_model)
    teacher.update()
    reference = copy.deepcopy(tiny_model)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(teacher.state_dict()[name])
    got = teacher.hidden_states(INPUT_IDS, ATTENTION, position_ids(ATTENTION))
    want = reference.model(
        input_ids=INPUT_IDS, attention_mask=ATTENTION, position_ids=position_ids(ATTENTION)
    ).last_hidden_state
    torch.testing.assert_close(got, want)
    # the tied output head is the teacher's embedding, not the student's
    assert teacher.head()[0] is teacher.lm.get_input_embeddings().weight
    assert teacher.head()[0] is not tiny_model.get_output_embeddings().weight
    student_hidden = tiny_model.model(
        input_ids=INPUT_IDS, attention_mask=ATTENTION, position_ids=position_ids(ATTENTION)
    ).last_hidden_state
    assert not torch.allclose(got, student_hidden)


def test_teacher_runs_without_gradient_and_in_eval_mode(tokenizer):
    model = make_model(tokenizer)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    noisy = [model.model(input_ids=INPUT_IDS, attention_mask=ATTENTION).last_hidden_state for _ in range(2)]
    assert not torch.equal(*noisy)  # dropout is really active in training mode
    teacher = Teacher(model, "ema")
    first = teacher.hidden_states(INPUT_IDS, ATTENTION, position_ids(ATTENTION))
    second = teacher.hidden_states(INPUT_IDS, ATTENTION, position_ids(ATTENTION))
    assert torch.equal(first, second)  # no dropout: eval mode
    assert not first.requires_grad
    assert model.training  # the student's mode is restored
    assert all(not t.requires_grad for t in teacher.params)


def test_lora_teacher_holds_only_adapter_weights(tokenizer):
    base = make_model(tokenizer)
    reference = copy.deepcopy(base)
    model = apply_lora(base, LoraSettings(r=4, alpha=8))
    teacher = Teacher(model, "ema", ema_alpha=0.5)
    assert all("lora_" in name for name in teacher.names)
    student_tensors = {id(p) for p in model.parameters()}
    own = [p for p in teacher.lm.parameters() if id(p) not in student_tensors]
    assert sum(p.numel() for p in own) == sum(t.numel() for t in teacher.params)  # only the adapters are copies
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert all(any(p is q for q in teacher.lm.parameters()) for p in frozen)  # base weights are shared
    # At initialisation LoRA's B is zero, so the teacher is exactly the base model.
    hidden = teacher.hidden_states(INPUT_IDS, ATTENTION, position_ids(ATTENTION))
    want = reference.model(
        input_ids=INPUT_IDS, attention_mask=ATTENTION, position_ids=position_ids(ATTENTION)
    ).last_hidden_state
    torch.testing.assert_close(hidden, want)
    perturb_(model, scale=0.5)
    teacher.update()
    moved = teacher.hidden_states(INPUT_IDS, ATTENTION, position_ids(ATTENTION))
    assert not torch.allclose(moved, want)
    assert teacher.head()[0] is model.get_output_embeddings().weight  # the frozen head is shared too


def test_state_round_trip(tiny_model):
    teacher = Teacher(tiny_model, "ema")
    perturb_(tiny_model)
    teacher.update()
    other = Teacher(tiny_model, "ema")
    other.load_state_dict(teacher.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(teacher.params, other.params))
    with pytest.raises(KeyError, match="lacks"):
        other.load_state_dict({})
