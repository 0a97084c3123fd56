"""Plain dataclass configs. Defaults follow the paper (arXiv 2601.19897) and the authors' code.

One place converts them to and from dicts (`to_dict`, `from_dict`), which is what the CLI, the pipeline's run
config and the experiment tracker see.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

PAPER_TEACHER_TEMPLATE = (
    "{question}\n\n"
    "This is an example for a response to the question:\n"
    "{demonstration}\n\n"
    "Now answer with a response of your own, including the thinking process:"
)
# Knowledge tasks: the teacher also reads the source text (paper App. A.2), placed before the question.
PAPER_TEACHER_TEMPLATE_WITH_CONTEXT = "Source text:\n{context}\n\n" + PAPER_TEACHER_TEMPLATE


@dataclass
class PromptConfig:
    """How the student and teacher prompts are built (see `sdft_core.prompts`)."""

    # "inline": the demonstration sits inside the last user turn (the paper's template).
    # "prior_turn": question and demonstration are an earlier user/assistant exchange, then the question is asked
    # again; small models transfer output formats (e.g. function calls) far better this way.
    teacher_mode: Literal["inline", "prior_turn"] = "inline"
    teacher_template: str = PAPER_TEACHER_TEMPLATE
    teacher_template_with_context: str = PAPER_TEACHER_TEMPLATE_WITH_CONTEXT
    prior_turn_template_with_context: str = "Source text:\n{context}\n\n{question}"
    use_context: bool = True
    max_prompt_tokens: int = 1024  # student prompt; never truncated, over-long records are rejected
    max_teacher_prompt_tokens: int = 2048  # demonstration/context are shortened to fit, never the question


@dataclass
class RolloutConfig:
    """On-policy sampling from the student (paper/official code: T=1.0, one sample per prompt)."""

    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables
    num_generations: int = 1
    batch_size: int | None = None  # rows per generate call; None = all rows of the step on this device


@dataclass
class LossConfig:
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    jsd_beta: float = 0.5  # mixture M = (1-beta)*student + beta*teacher; loss = beta*KL(T||M) + (1-beta)*KL(S||M)
    top_k: int | None = None  # approximate the divergence on the teacher's top-k tokens
    top_k_tail: bool = True  # keep the leftover probability mass as one extra bucket instead of renormalising
    skip_first_tokens: int = 3  # masks copied openings such as "Following the example..." (paper §5)
    chunk_size: int | None = None  # positions whose vocabulary-sized logits exist at once; None: ~64M logits


@dataclass
class TeacherConfig:
    kind: Literal["ema", "frozen"] = "ema"
    ema_alpha: float = 0.01  # teacher <- (1 - alpha) * teacher + alpha * student, after every optimizer step


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


@dataclass
class TrainConfig:
    method: Literal["sdft", "sft", "dft"] = "sdft"
    model: str = "smollm2-135m-instruct"
    output_dir: str = "runs/sdft"
    epochs: float = 2.0
    max_steps: int | None = None  # overrides epochs when set
    batch_size: int = 32  # prompts per optimizer step, over all processes
    micro_batch_size: int = 4  # sequences per forward/backward on one device
    learning_rate: float = 5e-5
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0  # cosine decays to learning_rate * min_lr_ratio
    max_grad_norm: float = 1.0
    seed: int = 42
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on a bf16-capable GPU, else fp32
    gradient_checkpointing: bool = False
    fsdp: bool = False  # shard weights, gradients and optimizer state over processes (PyTorch FSDP2)
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    trust_remote_code: bool = False
    lora: LoraSettings | None = None
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    # Fields that may change between a crash and its resume without changing the result.
    RESUMABLE_FIELDS = ("output_dir", "checkpoint_every", "keep_checkpoints")

    def validate(self) -> None:
        problems = []
        if self.method not in ("sdft", "sft", "dft"):
            problems.append(f"method must be sdft, sft or dft, not {self.method!r}")
        if self.batch_size < 1 or self.micro_batch_size < 1:
            problems.append("batch_size and micro_batch_size must be >= 1")
        if self.loss.divergence not in ("forward_kl", "reverse_kl", "jsd"):
            problems.append(f"loss.divergence must be forward_kl, reverse_kl or jsd, not {self.loss.divergence!r}")
        if self.loss.divergence == "jsd" and not 0.0 < self.loss.jsd_beta < 1.0:
            problems.append("loss.jsd_beta must lie strictly between 0 and 1 (use forward_kl or reverse_kl)")
        if self.loss.top_k is not None and self.loss.top_k < 1:
            problems.append("loss.top_k must be >= 1 or None")
        if self.teacher.kind not in ("ema", "frozen"):
            problems.append(f"teacher.kind must be ema or frozen, not {self.teacher.kind!r}")
        if not 0.0 <= self.teacher.ema_alpha <= 1.0:
            problems.append("teacher.ema_alpha must lie in [0, 1]")
        if self.rollout.temperature <= 0 and self.method == "sdft":
            problems.append("rollout.temperature must be > 0 for on-policy sampling")
        if self.rollout.num_generations < 1:
            problems.append("rollout.num_generations must be >= 1")
        if self.prompts.teacher_mode not in ("inline", "prior_turn"):
            problems.append(f"prompts.teacher_mode must be inline or prior_turn, not {self.prompts.teacher_mode!r}")
        if self.max_steps is None and self.epochs <= 0:
            problems.append("epochs must be > 0 (or set max_steps)")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        config = _from_dict(cls, data, path="")
        config.validate()
        return config

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights; a resumed run must match it."""
        data = self.to_dict()
        for name in self.RESUMABLE_FIELDS:
            data.pop(name, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


_NESTED = {"prompts": PromptConfig, "rollout": RolloutConfig, "loss": LossConfig, "teacher": TeacherConfig,
           "lora": LoraSettings}


def _from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"config section {path or '<root>'!r} must be a mapping, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown config key(s) {', '.join(path + k for k in unknown)}; known: {', '.join(known)}")
    kwargs = {}
    for name, value in data.items():
        if name in _NESTED and value is not None:
            value = _from_dict(_NESTED[name], value, path=f"{path}{name}.")
        elif name == "adam_betas":
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """A copy of `config` with dotted fields replaced, e.g. {"rollout.max_new_tokens": 128}; validated."""
    data = config.to_dict()
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        target = data
        for part in parents:
            if target.get(part) is None:
                target[part] = {}
            target = target[part]
        target[leaf] = value
    return TrainConfig.from_dict(data)
