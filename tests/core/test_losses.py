import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdft_core.config import LossConfig
from sdft_core.losses import (
    completion_loss_mask,
    cross_entropy_loss,
    distillation_loss,
    sequence_mean_weights,
    token_divergence,
)


def reference_divergence(student_logits, teacher_logits, kind, beta=0.5, top_k=None, tail=True, temperature=1.0):
    """Brute force in float64, one position at a time."""
    out = []
    for s_row, t_row in zip(student_logits.double().numpy(), teacher_logits.double().numpy()):
        s_row, t_row = s_row / temperature, t_row / temperature
        ps = np.exp(s_row - s_row.max()) / np.exp(s_row - s_row.max()).sum()
        pt = np.exp(t_row - t_row.max()) / np.exp(t_row - t_row.max()).sum()
        if top_k is not None:
            keep = np.argsort(-pt, kind="stable")[:top_k]
            ps_k, pt_k = ps[keep], pt[keep]
            if tail:
                ps, pt = np.append(ps_k, 1 - ps_k.sum()), np.append(pt_k, 1 - pt_k.sum())
            else:
                ps, pt = ps_k / ps_k.sum(), pt_k / pt_k.sum()
        if kind == "forward_kl":
            value = np.sum(pt * np.log(pt / ps))
        elif kind == "reverse_kl":
            value = np.sum(ps * np.log(ps / pt))
        else:
            m = (1 - beta) * ps + beta * pt
            value = beta * np.sum(pt * np.log(pt / m)) + (1 - beta) * np.sum(ps * np.log(ps / m))
        out.append(value)
    return torch.tensor(out, dtype=torch.float64)


def random_logits(rows=7, vocab=50, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=g) * scale, torch.randn(rows, vocab, generator=g) * scale


@pytest.mark.parametrize(
    "kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 0.9)]
)
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_divergence_matches_float64_reference(kind, beta, temperature):
    student, teacher = random_logits()
    got = token_divergence(student, teacher, LossConfig(divergence=kind, jsd_beta=beta), temperature)
    want = reference_divergence(student, teacher, kind, beta, temperature=temperature)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    assert (want > 0).all()


@pytest.mark.parametrize("tail", [True, False])
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_top_k_divergence_matches_reference(kind, tail):
    student, teacher = random_logits(vocab=64, seed=1)
    config = LossConfig(divergence=kind, top_k=8, top_k_tail=tail)
    got = token_divergence(student, teacher, config)
    want = reference_divergence(student, teacher, kind, top_k=8, tail=tail)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def test_top_k_over_whole_vocabulary_equals_full_divergence():
    student, teacher = random_logits(vocab=32, seed=2)
    full = token_divergence(student, teacher, LossConfig())
    torch.testing.assert_close(token_divergence(student, teacher, LossConfig(top_k=32)), full, atol=1e-5, rtol=1e-5)


def test_bf16_logits_are_upcast_before_the_divergence():
    student, teacher = random_logits(vocab=40, seed=3)
    got = token_divergence(student.bfloat16(), teacher.bfloat16(), LossConfig())
    assert got.dtype == torch.float32
    want = reference_divergence(student.bfloat16().float(), teacher.bfloat16().float(), "forward_kl")
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)


def _batch(seed=0, batch=3, length=9, hidden=6, vocab=23):
    g = torch.Generator().manual_seed(seed)
    student_hidden = torch.randn(batch, length, hidden, generator=g, dtype=torch.float64)
    teacher_hidden = torch.randn(batch, length, hidden, generator=g, dtype=torch.float64)
    weight = torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    teacher_weight = weight + 0.3 * torch.randn(vocab, hidden, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 5, 2])[:batch]  # the last row is shorter than the 3 skipped tokens
    completion_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return student_hidden, teacher_hidden, weight, teacher_weight, completion_mask


def reference_masked_loss(student_hidden, teacher_hidden, weight, teacher_weight, completion_mask, skip, kind):
    """Masked mean per sequence, then mean over sequences, all in float64 with full logits."""
    per_sequence = []
    for b in range(student_hidden.shape[0]):
        values = reference_divergence(student_hidden[b] @ weight.T, teacher_hidden[b] @ teacher_weight.T, kind)
        mask = completion_mask[b].double().clone()
        mask[:skip] = 0
        per_sequence.append((values * mask).sum() / mask.sum().clamp(min=1))
    return torch.stack(per_sequence).mean()


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_chunked_loss_masks_padding_and_skipped_tokens(kind, chunk_size):
    student_hidden, teacher_hidden, weight, teacher_weight, completion_mask = _batch()
    loss_mask = completion_loss_mask(completion_mask, skip_first_tokens=3)
    selected = loss_mask.bool()
    config = LossConfig(divergence=kind, chunk_size=chunk_size)
    loss, per_token = distillation_loss(
        student_hidden[selected],
        (weight, None),
        teacher_hidden[selected],
        (teacher_weight, None),
        sequence_mean_weights(loss_mask)[selected],
        config,
    )
    want = reference_masked_loss(student_hidden, teacher_hidden, weight, teacher_weight, completion_mask, 3, kind)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-7)
    assert per_token.shape[0] == int(selected.sum()) == 6 + 2 + 0


def test_gradient_reaches_only_the_student_and_matches_autograd():
    student_hidden, teacher_hidden, weight, teacher_weight, completion_mask = _batch(seed=4)
    loss_mask = completion_loss_mask(completion_mask, 3)
    selected = loss_mask.bool()
    weights = sequence_mean_weights(loss_mask)[selected]

    s_h = student_hidden[selected].clone().requires_grad_()
    s_w = weight.clone().requires_grad_()
    t_h = teacher_hidden[selected].clone().requires_grad_()
    t_w = teacher_weight.clone().requires_grad_()
    loss, _ = distillation_loss(s_h, (s_w, None), t_h, (t_w, None), weights, LossConfig(chunk_size=2))
    loss.backward()
    assert t_h.grad is None and t_w.grad is None

    # Plain autograd through full float64 logits: forward KL(teacher || student).
    r_h, r_w = student_hidden[selected].clone().requires_grad_(), weight.clone().requires_grad_()
    teacher_logp = torch.log_softmax(teacher_hidden[selected] @ teacher_weight.T, -1)
    student_logp = torch.log_softmax(r_h @ r_w.T, -1)
    reference = ((teacher_logp.exp() * (teacher_logp - student_logp)).sum(-1) * weights).sum()
    reference.backward()
    torch.testing.assert_close(s_h.grad, r_h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s_w.grad, r_w.grad.float().to(s_w.grad.dtype), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_loss_passes_finite_difference_gradcheck(kind, temperature):
    """forward_kl takes the analytic-gradient path, the others autograd per chunk: both must be exact."""
    g = torch.Generator().manual_seed(5)
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    teacher_hidden = torch.randn(5, 4, generator=g, dtype=torch.float64)
    teacher_weight = torch.randn(7, 4, generator=g, dtype=torch.float64)
    weights = torch.rand(5, generator=g, dtype=torch.float64)
    config = LossConfig(divergence=kind, chunk_size=2)

    def loss_of(h, w):
        return distillation_loss(h, (w, None), teacher_hidden, (teacher_weight, None), weights, config, temperature)[0]

    assert torch.autograd.gradcheck(loss_of, (hidden, weight), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dft", [False, True])
def test_cross_entropy_and_dft_match_reference(dft):
    g = torch.Generator().manual_seed(6)
    hidden = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 5, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (6,), generator=g)
    weights = torch.full((6,), 1 / 6, dtype=torch.float64)
    loss, ce = cross_entropy_loss(hidden, (weight, None), targets, weights, chunk_size=4, dft=dft)
    loss.backward()

    ref_h, ref_w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    ref_ce = F.cross_entropy(ref_h @ ref_w.T, targets, reduction="none")
    per_token = ref_ce * torch.exp(-ref_ce).detach() if dft else ref_ce
    (per_token * weights).sum().backward()
    torch.testing.assert_close(ce.double(), ref_ce.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), (per_token * weights).sum().detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad, ref_h.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, ref_w.grad, rtol=1e-5, atol=1e-6)


def test_loss_memory_does_not_hold_logits_of_all_positions():
    """Chunking: the autograd graph keeps only [N, H] gradients, never [N, V] logits."""
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(64, 8, generator=g, requires_grad=True)
    weight = torch.randn(5000, 8, generator=g, requires_grad=True)
    teacher_hidden = torch.randn(64, 8, generator=g)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = distillation_loss(
            hidden,
            (weight, None),
            teacher_hidden,
            (weight.detach(), None),
            torch.full((64,), 1 / 64),
            LossConfig(chunk_size=8),
        )
    loss.backward()
    assert max(saved) <= weight.numel()  # the weight-sized gradient, nothing of size 64 x 5000
    assert hidden.grad is not None and weight.grad is not None


@pytest.mark.parametrize("kind", ["forward_kl", "jsd"])  # the closed-form gradient, and autograd per chunk
def test_under_bf16_autocast_the_head_and_its_gradient_stay_float32(kind):
    """At SmolLM2's hidden width (576), a bf16 head product puts percent-level error into the gradient; the loss
    promises float32, whatever autocast the training forward runs under."""
    g = torch.Generator().manual_seed(8)
    rows, hidden_size, vocab = 24, 576, 2048
    hidden = torch.randn(rows, hidden_size, generator=g)
    weight = torch.randn(vocab, hidden_size, generator=g) * hidden_size**-0.5
    teacher_hidden = hidden + 0.3 * torch.randn(rows, hidden_size, generator=g)
    weights = torch.full((rows,), 1 / rows)
    config = LossConfig(divergence=kind, chunk_size=8)

    def gradients(dtype, autocast):
        h = hidden.to(dtype).clone().requires_grad_()
        w = weight.to(dtype).clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = distillation_loss(
                h, (w, None), teacher_hidden.to(dtype), (weight.to(dtype), None), weights, config
            )
        loss.backward()
        return loss.detach().double(), h.grad.double(), w.grad.double()

    want = gradients(torch.float64, autocast=False)
    got = gradients(torch.float32, autocast=True)
    for reference, value in zip(want, got):
        assert ((value - reference).norm() / reference.norm()).item() < 1e-5
