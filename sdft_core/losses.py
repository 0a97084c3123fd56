"""Per-token losses over the full vocabulary, computed in float32, chunk by chunk.

SDFT's loss is a divergence between the teacher's and the student's next-token distributions at every position
of the student's own completion. The published results use forward KL(teacher || student); reverse KL and a
generalised JSD are variants. The SFT and DFT baselines use cross-entropy on the demonstration tokens.

`chunked_head_loss` applies the LM head only to the positions that carry loss, a chunk of positions at a time,
and computes the gradient of each chunk right away, so vocabulary-sized tensors never exist for more than one
chunk (memory does not grow with batch x sequence x vocabulary). The head's products run in float32 (at least)
whatever autocast is on: in bf16 they put 4-8% relative error into the gradient at SmolLM2's widths.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .config import LossConfig

# exp() of this is 0 in float32, and differences between such values stay finite (no inf - inf = nan).
_LOG_ZERO = -1e30
_TARGET_LOGITS_PER_CHUNK = 1 << 26  # ~256 MB per float32 [positions, vocab] tensor


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32: bf16/fp16 logits are upcast, float64 (tests, references) stays float64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logits = _upcast(logits)
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).clamp(min=_LOG_ZERO)


def divergence_from_log_probs(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, jsd_beta: float = 0.5
) -> torch.Tensor:
    """Divergence per position (summed over the last dim) between two log-probability tensors."""
    if kind == "forward_kl":  # KL(teacher || student)
        return (teacher.exp() * (teacher - student)).sum(-1)
    if kind == "reverse_kl":  # KL(student || teacher)
        return (student.exp() * (student - teacher)).sum(-1)
    if kind == "jsd":
        mixture = torch.logaddexp(student + math.log1p(-jsd_beta), teacher + math.log(jsd_beta))
        kl_teacher = (teacher.exp() * (teacher - mixture)).sum(-1)
        kl_student = (student.exp() * (student - mixture)).sum(-1)
        return jsd_beta * kl_teacher + (1.0 - jsd_beta) * kl_student
    raise ValueError(f"unknown divergence {kind!r}")


def top_k_log_probs(
    student: torch.Tensor, teacher: torch.Tensor, k: int, tail: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions restricted to the teacher's k most likely tokens.

    With `tail`, the remaining mass of each distribution becomes one extra bucket (a coarser but exact
    distribution); without it both are renormalised on the k tokens.
    """
    k = min(k, teacher.shape[-1])
    support = teacher.topk(k, dim=-1).indices
    student_k, teacher_k = student.gather(-1, support), teacher.gather(-1, support)
    if tail:
        return (
            torch.cat([student_k, _log_remaining(student_k)], dim=-1),
            torch.cat([teacher_k, _log_remaining(teacher_k)], dim=-1),
        )
    return (student_k - student_k.logsumexp(-1, keepdim=True), teacher_k - teacher_k.logsumexp(-1, keepdim=True))


def _log_remaining(log_p: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(p)) from log-probabilities, stable when the kept mass is close to 1."""
    kept = log_p.logsumexp(-1, keepdim=True).clamp(max=-1e-12)
    return torch.log(-torch.expm1(kept)).clamp(min=_LOG_ZERO)


def token_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, config: LossConfig, temperature: float = 1.0
) -> torch.Tensor:
    """Per-position divergence (float32) between student and teacher logits of shape [..., vocab]."""
    student, teacher = log_probs(student_logits, temperature), log_probs(teacher_logits, temperature)
    if config.top_k is not None:
        student, teacher = top_k_log_probs(student, teacher, config.top_k, config.top_k_tail)
    return divergence_from_log_probs(student, teacher, config.divergence, config.jsd_beta)


def sequence_mean_weights(loss_mask: torch.Tensor, num_sequences: int | None = None) -> torch.Tensor:
    """Weights that turn a sum over tokens into the mean per sequence, then the mean over sequences."""
    loss_mask = _upcast(loss_mask)
    per_sequence = loss_mask.sum(-1, keepdim=True).clamp(min=1.0)
    return loss_mask / per_sequence / (num_sequences or loss_mask.shape[0])


def completion_loss_mask(completion_mask: torch.Tensor, skip_first_tokens: int) -> torch.Tensor:
    mask = completion_mask.clone()
    mask[:, :skip_first_tokens] = 0
    return mask


def auto_chunk_size(vocab_size: int) -> int:
    return max(1, _TARGET_LOGITS_PER_CHUNK // vocab_size)


TokenLoss = Callable[[torch.Tensor, int, int], torch.Tensor]
# (logits of rows start:end) -> (per-token values, d value / d logits per row): a loss that knows its gradient
# skips autograd inside the chunk (fewer passes over vocabulary-sized tensors, none of them kept for backward).
TokenLossWithGradient = Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]


class _ChunkedHeadLoss(torch.autograd.Function):
    """sum_i w_i * token_loss(hidden_i @ W^T + b) with gradients computed chunk by chunk in the forward pass."""

    @staticmethod
    def forward(
        ctx,
        hidden,
        weight,
        bias,
        token_weights,
        token_loss: TokenLoss,
        chunk_size: int,
        loss_with_gradient: TokenLossWithGradient | None,
    ):
        with torch.autocast(hidden.device.type, enabled=False):
            return _ChunkedHeadLoss._forward(
                ctx, hidden, weight, bias, token_weights, token_loss, chunk_size, loss_with_gradient
            )

    @staticmethod
    def _forward(ctx, hidden, weight, bias, token_weights, token_loss, chunk_size, loss_with_gradient):
        needs = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        grad_hidden = torch.zeros_like(_upcast(hidden)) if needs[0] else None
        grad_weight = torch.zeros_like(_upcast(weight)) if needs[1] else None
        grad_bias = torch.zeros_like(_upcast(bias)) if needs[2] else None
        w = _upcast(weight.detach()).requires_grad_(needs[1])
        b = None if bias is None else _upcast(bias.detach()).requires_grad_(needs[2])
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        total = torch.zeros((), dtype=dtype, device=hidden.device)
        values = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk_size):
            end = min(start + chunk_size, hidden.shape[0])
            h, chunk_weights = _upcast(hidden[start:end].detach()), token_weights[start:end]
            if loss_with_gradient is not None:
                per_token, chunk_loss, grads = _closed_form_chunk(
                    h, w, b, chunk_weights, needs, loss_with_gradient, start, end
                )
            else:
                per_token, chunk_loss, grads = _autograd_chunk(h, w, b, chunk_weights, needs, token_loss, start, end)
            chunk_hidden, chunk_weight, chunk_bias = grads
            if needs[0]:
                grad_hidden[start:end] = chunk_hidden
            if needs[1]:
                grad_weight += chunk_weight
            if needs[2]:
                grad_bias += chunk_bias
            values[start:end] = per_token
            total += chunk_loss
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        ctx.mark_non_differentiable(values)
        return total, values

    @staticmethod
    def backward(ctx, grad_total, _grad_values):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hidden_dtype, weight_dtype, bias_dtype = ctx.dtypes
        return (
            None if grad_hidden is None else (grad_hidden * grad_total).to(hidden_dtype),
            None if grad_weight is None else (grad_weight * grad_total).to(weight_dtype),
            None if grad_bias is None else (grad_bias * grad_total).to(bias_dtype),
            None,
            None,
            None,
            None,
        )


def _autograd_chunk(h, w, b, chunk_weights, needs, token_loss: TokenLoss, start: int, end: int):
    """(per-token values, weighted loss, gradients for hidden/weight/bias where needed) by autograd."""
    h = h.requires_grad_(needs[0])
    with torch.enable_grad():
        per_token = token_loss(F.linear(h, w, b), start, end)
        chunk_loss = (per_token * chunk_weights).sum()
    inputs = [x for x, need in zip((h, w, b), needs) if need]
    grads = iter(torch.autograd.grad(chunk_loss, inputs)) if inputs else iter(())
    return (per_token.detach(), chunk_loss.detach(), tuple(next(grads) if need else None for need in needs))


def _closed_form_chunk(h, w, b, chunk_weights, needs, loss_with_gradient: TokenLossWithGradient, start: int, end: int):
    """The same as `_autograd_chunk` from a loss that gives its gradient with respect to the logits."""
    w, b = w.detach(), None if b is None else b.detach()
    logits = F.linear(h, w, b)
    per_token, gradient = loss_with_gradient(logits, start, end)
    gradient = (gradient * chunk_weights[:, None]).to(logits.dtype)
    return (
        per_token,
        (per_token * chunk_weights).sum(),
        (
            gradient @ w.to(gradient.dtype) if needs[0] else None,
            gradient.T @ h.to(gradient.dtype) if needs[1] else None,
            gradient.sum(0) if needs[2] else None,
        ),
    )


def chunked_head_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    token_loss: TokenLoss,
    token_weights: torch.Tensor,
    chunk_size: int | None = None,
    loss_with_gradient: TokenLossWithGradient | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted sum of per-token losses over rows of `hidden` [N, H]; returns (loss, per-token values [N]).

    With `loss_with_gradient` (same values as `token_loss`, plus their gradient) no autograd runs per chunk."""
    chunk_size = chunk_size or auto_chunk_size(weight.shape[0])
    return _ChunkedHeadLoss.apply(
        hidden, weight, bias, _upcast(token_weights), token_loss, chunk_size, loss_with_gradient
    )


def distillation_loss(
    student_hidden: torch.Tensor,
    student_head: tuple[torch.Tensor, torch.Tensor | None],
    teacher_hidden: torch.Tensor,
    teacher_head: tuple[torch.Tensor, torch.Tensor | None],
    token_weights: torch.Tensor,
    config: LossConfig,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDFT loss on [N, H] hidden states of the positions that carry loss; the teacher gets no gradient."""
    teacher_hidden = teacher_hidden.detach()
    teacher_weight, teacher_bias = (None if t is None else t.detach() for t in teacher_head)

    def teacher_logits(start: int, end: int) -> torch.Tensor:  # in float32, like the student's (see the module)
        return F.linear(
            _upcast(teacher_hidden[start:end]),
            _upcast(teacher_weight),
            None if teacher_bias is None else _upcast(teacher_bias),
        )

    def token_loss(student_logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return token_divergence(student_logits, teacher_logits(start, end), config, temperature)

    def forward_kl_with_gradient(
        student_logits: torch.Tensor, start: int, end: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """KL(teacher || student) per position and its gradient, softmax(student / T) - p_teacher, over T."""
        teacher = log_probs(teacher_logits(start, end), temperature)
        student = log_probs(student_logits, temperature)
        teacher_probs = teacher.exp()
        values = (teacher - student).mul_(teacher_probs).sum(-1)
        gradient = student.exp_().sub_(teacher_probs)
        return values, gradient.div_(temperature) if temperature != 1.0 else gradient

    analytic = config.divergence == "forward_kl" and config.top_k is None
    return chunked_head_loss(
        student_hidden,
        *student_head,
        token_loss,
        token_weights,
        config.chunk_size,
        forward_kl_with_gradient if analytic else None,
    )


def cross_entropy_loss(
    hidden: torch.Tensor,
    head: tuple[torch.Tensor, torch.Tensor | None],
    targets: torch.Tensor,
    token_weights: torch.Tensor,
    chunk_size: int | None = None,
    dft: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SFT (cross-entropy) or DFT (cross-entropy scaled by the detached probability of the target token).

    Returns (loss, per-token cross-entropy); DFT reports plain cross-entropy too, so the methods compare.
    """
    cross_entropy = torch.empty(hidden.shape[0], dtype=_upcast(hidden).dtype, device=hidden.device)

    def token_loss(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        ce = F.cross_entropy(_upcast(logits), targets[start:end], reduction="none")
        cross_entropy[start:end] = ce.detach()
        return ce * torch.exp(-ce).detach() if dft else ce

    loss, _ = chunked_head_loss(hidden, *head, token_loss, token_weights, chunk_size)
    return loss, cross_entropy
