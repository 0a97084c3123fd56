"""Plain dataclass configs. Defaults follow the paper (arXiv 2601.19897) and the authors' code.

Each field's metadata holds its help text, which the CLI shows beside the default (`sdft train --help`); each
enumeration is a `Literal` type, which both the checks and the CLI's choices read. Making a config checks it (see
`config_schema.Config`); `from_dict` and `with_overrides` convert values read as text or YAML by the declared types,
and are what the CLI, the pipeline's run config and the experiment tracker use.
"""

from __future__ import annotations

import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Literal

from .config_schema import Config, Range
from .config_schema import ConfigError as ConfigError  # re-exported: the error every config raises
from .config_schema import with_overrides as with_overrides  # re-exported: callers import it from here

PAPER_TEACHER_TEMPLATE = (
    "{question}\n\n"
    "This is an example for a response to the question:\n"
    "{demonstration}\n\n"
    "Now answer with a response of your own, including the thinking process:"
)
# Knowledge tasks: the teacher also reads the source text (paper App. A.2), placed before the question.
PAPER_TEACHER_TEMPLATE_WITH_CONTEXT = "Source text:\n{context}\n\n" + PAPER_TEACHER_TEMPLATE

TeacherMode = Literal["inline", "prior_turn"]
TEACHER_MODES: tuple[str, ...] = typing.get_args(TeacherMode)


@dataclass
class PromptConfig(Config):
    """How the student and teacher prompts are built (see `sdft_core.prompts`)."""

    teacher_mode: TeacherMode = field(
        default="inline",
        metadata={
            "help": "where the teacher sees the demonstration: inline, inside the last user turn (the paper's "
            "template); prior_turn, as an earlier user/assistant exchange, then the question is asked again "
            "(small models copy output formats such as function calls far better this way)",
            "aliases": ["--teacher-mode"],
        },
    )
    teacher_template: str = field(
        default=PAPER_TEACHER_TEMPLATE,
        metadata={"help": "inline mode: the teacher's last user turn, from {question} and {demonstration}"},
    )
    teacher_template_with_context: str = field(
        default=PAPER_TEACHER_TEMPLATE_WITH_CONTEXT,
        metadata={"help": "inline mode, for a record with a context (source text): also fills in {context}"},
    )
    prior_turn_template_with_context: str = field(
        default="Source text:\n{context}\n\n{question}",
        metadata={"help": "prior_turn mode: the first user turn of a record with a context"},
    )
    use_context: bool = field(
        default=True, metadata={"help": "show the teacher a record's context (source text) when it has one"}
    )
    max_prompt_tokens: int = field(
        default=1024,
        metadata={
            "help": "student prompt budget; prompts are never truncated, over-long records are rejected",
            "range": Range(1),
        },
    )
    max_teacher_prompt_tokens: int = field(
        default=2048,
        metadata={
            "help": "teacher prompt budget; the demonstration and context are shortened to fit, never the question",
            "range": Range(1),
        },
    )


@dataclass
class RolloutConfig(Config):
    """On-policy sampling from the student (paper/official code: T=1.0, one sample per prompt)."""

    max_new_tokens: int = field(
        default=1024,
        metadata={
            "help": "rollout length in tokens; also caps SFT targets",
            "range": Range(1),
            "aliases": ["--max-new-tokens"],
        },
    )
    temperature: float = field(
        default=1.0, metadata={"help": "sampling temperature; above 0 for sdft (0 decodes greedily)", "range": Range(0)}
    )
    top_p: float = field(
        default=1.0,
        metadata={
            "help": "nucleus sampling: the most likely tokens that hold this much probability; 1 disables",
            "range": Range(0, 1, "(]"),
        },
    )
    top_k: int = field(
        default=0, metadata={"help": "sample among the k most likely tokens; 0 disables", "range": Range(0)}
    )
    num_generations: int = field(
        default=1,
        metadata={
            "help": "samples per prompt (1, as in the paper)",
            "range": Range(1),
            "aliases": ["--num-generations"],
        },
    )
    batch_size: int | None = field(
        default=None,
        metadata={"help": "rows per generate call; none: all rows of the step on this device", "range": Range(1)},
    )


Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


@dataclass
class LossConfig(Config):
    """The distillation loss: a divergence between the student's and the teacher's next-token distributions."""

    divergence: Divergence = field(
        default="forward_kl",
        metadata={
            "help": "forward_kl: KL(teacher || student), the paper's; reverse_kl: KL(student || teacher); jsd: the "
            "generalised Jensen-Shannon divergence, weighted by jsd_beta",
            "aliases": ["--divergence"],
        },
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "jsd only, in (0, 1): M = (1-beta)*student + beta*teacher; loss = beta*KL(T||M) + (1-beta)*KL(S||M)"
        },
    )
    top_k: int | None = field(
        default=None,
        metadata={
            "help": "approximate the divergence on the teacher's top-k tokens; none: the whole vocabulary",
            "range": Range(1),
        },
    )
    top_k_tail: bool = field(
        default=True,
        metadata={
            "help": "with top_k: keep the leftover probability mass as one extra bucket instead of renormalising"
        },
    )
    skip_first_tokens: int = field(
        default=3,
        metadata={
            "help": "completion tokens left out of the loss at the start: masks copied openings such as "
            "'Following the example...' (paper, section 5)",
            "range": Range(0),
        },
    )
    chunk_size: int | None = field(
        default=None,
        metadata={
            "help": "positions whose vocabulary-sized logits exist at once; none: about 64M logits",
            "range": Range(1),
        },
    )

    def rules(self) -> list[str]:
        jsd_beta = Range(0, 1, "()")  # at 0 or 1 it is forward_kl or reverse_kl, which say so
        if self.divergence == "jsd" and self.jsd_beta not in jsd_beta:
            return [f"jsd_beta must be {jsd_beta} with divergence jsd, got {self.jsd_beta!r}"]
        return []


TeacherKind = Literal["ema", "frozen"]
TEACHER_KINDS: tuple[str, ...] = typing.get_args(TeacherKind)


@dataclass
class TeacherConfig(Config):
    """The teacher: the student's network with its own copy of the trainable weights (see `sdft_core.teacher`)."""

    kind: TeacherKind = field(
        default="ema",
        metadata={
            "help": "ema: follows the student by an exponential moving average; frozen: the initial weights",
            "aliases": ["--teacher"],
        },
    )
    ema_alpha: float = field(
        default=0.01,
        metadata={
            "help": "teacher <- (1 - alpha) * teacher + alpha * student, after every optimizer step",
            "range": Range(0, 1),
            "aliases": ["--ema-alpha"],
        },
    )


@dataclass
class LoraSettings(Config):
    """LoRA adapters trained instead of all weights; off unless a lora field is set."""

    r: int = field(default=16, metadata={"help": "adapter rank", "range": Range(1), "aliases": ["--lora-r"]})
    alpha: int = field(
        default=32, metadata={"help": "the adapters' updates are scaled by alpha / r", "range": Range(1)}
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout on the adapters' input", "range": Range(0, 1, "[)")})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "names of the linear layers that get adapters"},
    )

    def rules(self) -> list[str]:
        return [] if self.target_modules else ["target_modules must name at least one module"]


Method = Literal["sdft", "sft", "dft"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass
class TrainConfig(Config):
    """A training run: the method, the optimisation, and the prompt, rollout, loss, teacher and LoRA sections."""

    method: Method = field(
        default="sdft",
        metadata={
            "help": "sdft: on-policy self-distillation; sft: cross-entropy on the demonstrations; dft: SFT weighted by "
            "the model's token probability"
        },
    )
    model: str = field(
        default="smollm2-135m-instruct", metadata={"help": "embedded name, local directory or cached hub id"}
    )
    output_dir: str = field(
        default="runs/sdft",
        metadata={
            "help": "run directory: checkpoints, metrics, the final model (sdft train without it: runs/<method>)",
            "aliases": ["--output"],
        },
    )
    epochs: float = field(default=2.0, metadata={"help": "passes over the data (max_steps overrides it)"})
    max_steps: int | None = field(
        default=None, metadata={"help": "optimizer steps; overrides epochs", "range": Range(1)}
    )
    batch_size: int = field(
        default=32, metadata={"help": "prompts per optimizer step, over all processes", "range": Range(1)}
    )
    micro_batch_size: int = field(
        default=4, metadata={"help": "sequences per forward/backward on one device", "range": Range(1)}
    )
    learning_rate: float = field(
        default=5e-5,
        metadata={
            "help": "peak learning rate: linear warmup, then cosine decay",
            "range": Range(0),
            "aliases": ["--lr"],
        },
    )
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay", "range": Range(0)})
    adam_betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata={"help": "AdamW betas", "range": Range(0, 1, "[)")}
    )
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon", "range": Range(0)})
    warmup_steps: int = field(default=10, metadata={"help": "optimizer steps of linear warmup", "range": Range(0)})
    min_lr_ratio: float = field(
        default=0.0, metadata={"help": "cosine decays to learning_rate * min_lr_ratio", "range": Range(0, 1)}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"help": "gradients are clipped to this norm", "range": Range(0, math.inf, "(]")}
    )
    seed: int = field(default=42, metadata={"help": "seeds the data order, the sampling and LoRA's initialisation"})
    precision: Precision = field(
        default="auto", metadata={"help": "auto: bf16 autocast on a bf16-capable GPU, else fp32"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass: less memory, more compute"}
    )
    fsdp: bool = field(
        default=False, metadata={"help": "shard weights, gradients and optimizer state over processes (PyTorch FSDP2)"}
    )
    checkpoint_every: int = field(
        default=50, metadata={"help": "optimizer steps between checkpoints", "range": Range(1)}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"help": "checkpoints kept; older ones are deleted", "range": Range(1)}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "let a hub model run its own Python code"})
    lora: LoraSettings | None = None
    prompts: PromptConfig = field(default_factory=PromptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    # Fields that may change between a crash and its resume without changing the result.
    RESUMABLE_FIELDS = ("output_dir", "checkpoint_every", "keep_checkpoints")

    def rules(self) -> list[str]:
        problems = []
        if self.max_steps is None and self.epochs <= 0:
            problems.append(f"epochs must be > 0 (or set max_steps), got {self.epochs!r}")
        if self.method == "sdft" and self.rollout.temperature <= 0:
            problems.append("rollout.temperature must be > 0 for on-policy sampling (method sdft)")
        return problems

    def fingerprint(self) -> str:
        """Hash of everything that changes the trained weights; a resumed run must match it."""
        data = self.to_dict()
        for name in self.RESUMABLE_FIELDS:
            data.pop(name, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]
