"""Fully sharded training (PyTorch FSDP2) for models whose weights, gradients and optimizer state do not fit one
device with DDP.

Each decoder layer is sharded on its own and the root module (embeddings, final norm, LM head) as one group, so
that the root's weights stay gathered from the forward pass until backward, when the losses apply the LM head
outside the decoder. Rollouts gather every layer once per step (the way TRL gathers ZeRO-3 weights for
generation): per-token all-gathers would be slow, and ranks whose completions end early would stop issuing the
collectives the others wait for.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(module, FSDPModule)


def shard(root: nn.Module, lm: nn.Module) -> nn.Module:
    """Shard `root` (a `HiddenStates` around the causal LM `lm`) in place: one group per decoder layer, then the
    rest. Collective: every rank calls it at the same point."""
    from torch.distributed.fsdp import fully_shard

    layer_types = tuple(getattr(lm, "_no_split_modules", None) or ())
    layers = [m for m in lm.modules() if type(m).__name__ in layer_types]
    if not layers:
        raise ValueError(f"cannot find the decoder layers of {type(lm).__name__} to shard")
    for layer in layers:
        fully_shard(layer)
    fully_shard(root)
    # FSDP initialises its groups on the root's first forward; rollouts call the layers without the root.
    one_token = torch.zeros((1, 1), dtype=torch.long, device=next(lm.parameters()).device)
    with torch.no_grad():
        root(one_token, torch.ones_like(one_token), torch.zeros_like(one_token))
    root.reshard()  # back to sharded tensors before anyone (optimizer, EMA) collects the parameters
    return root


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded (DTensor) parameter; plain tensors as they are."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, gathered from all ranks if it is sharded."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


@contextmanager
def gathered_for_generation(root: nn.Module) -> Iterator[None]:
    """Keep every shard group of `root` gathered for the duration (no collectives inside)."""
    if not is_sharded(root):
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    # The root keeps FSDP's own setting (stay gathered after forward, for the losses' use of the LM head).
    layers = [m for m in root.modules() if isinstance(m, FSDPModule) and m is not root]
    for layer in layers:
        layer.set_reshard_after_forward(False, recurse=False)
    for group in [root, *layers]:
        group.unshard()
    try:
        yield
    finally:
        for group in [root, *layers]:
            group.reshard()
        for layer in layers:
            layer.set_reshard_after_forward(True, recurse=False)


@contextmanager
def gradient_sync(root: nn.Module, enabled: bool) -> Iterator[None]:
    """FSDP: skip the reduce-scatter on all but the last micro-batch of an accumulation."""
    if not is_sharded(root) or enabled:
        yield
        return
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Whole-model parameters on CPU; with sharding only rank 0 receives them (others get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(module: nn.Module, state: dict[str, torch.Tensor]) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True, strict=True))


def full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
