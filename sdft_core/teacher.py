"""The teacher: the student's own network with its own copy of the trainable weights.

`ema` (default): teacher <- (1 - alpha) * teacher + alpha * student after every optimizer step, alpha = 0.01.
`frozen`: the initial weights, never updated.

Only the student's *trainable* tensors are copied. In full fine-tuning that is every weight; with LoRA it is the
adapters, and the teacher's forward pass borrows the student's frozen base weights, so no second copy of the base
model exists. (With LoRA the EMA averages the A and B matrices separately, like TRL; EMA(B)·EMA(A) is not
EMA(B·A), but it tracks it once the adapters settle.)
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from .models import output_head


class Teacher:
    def __init__(self, lm: nn.Module, kind: str = "ema", ema_alpha: float = 0.01):
        if kind not in ("ema", "frozen"):
            raise ValueError(f"teacher kind must be 'ema' or 'frozen', not {kind!r}")
        self.kind, self.ema_alpha = kind, ema_alpha
        named = [(name, p) for name, p in lm.named_parameters() if p.requires_grad]
        self.names = [name for name, _ in named]
        self._student = [p for _, p in named]
        with torch.no_grad():
            self.params = [p.detach().clone() for p in self._student]
        decoder = lm.get_decoder()
        self._decoder_prefix = next(name for name, module in lm.named_modules() if module is decoder) + "."
        self._head_index = next((i for i, p in enumerate(self._student) if p is output_head(lm)[0]), None)

    @torch.no_grad()
    def update(self) -> None:
        """The EMA step, in place, as a few foreach kernels over all tensors."""
        if self.kind == "ema":
            torch._foreach_lerp_(self.params, self._student, self.ema_alpha)

    def head(self, lm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        weight, bias = output_head(lm)
        if self._head_index is not None:
            weight = self.params[self._head_index]
        return weight, bias

    @torch.no_grad()
    def hidden_states(self, lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      position_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states of the decoder run with the teacher's weights, in eval mode, without gradient."""
        decoder = lm.get_decoder()
        prefix = self._decoder_prefix
        weights = {name[len(prefix):]: tensor for name, tensor in zip(self.names, self.params)
                   if name.startswith(prefix)}
        was_training = decoder.training
        decoder.eval()
        try:
            out = functional_call(decoder, weights, args=(), strict=False, tie_weights=True, kwargs={
                "input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "use_cache": False})
        finally:
            decoder.train(was_training)
        return out.last_hidden_state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.params))

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.names) - set(state))
        if missing:
            raise KeyError(f"teacher checkpoint lacks {len(missing)} tensors, e.g. {missing[0]}")
        for name, tensor in zip(self.names, self.params):
            tensor.copy_(state[name])
