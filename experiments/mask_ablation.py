"""Ablation: SDFT on tool_use with N masked completion tokens, otherwise the experiment's seed-0 run at 2e-4.

    .venv/bin/python experiments/mask_ablation.py 0    # no masking (the experiment itself uses the paper's 3)

Trains from the embedded model (8 steps of 6 prompts, lr 2e-4, seed 0, teacher_mode prior_turn) and scores the
same 60 tool_use eval items as experiments/sdft_vs_sft.py; prints one JSON line.
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sdft_core.config import LossConfig, PromptConfig, RolloutConfig, TrainConfig
from sdft_core.evaluation.suite import evaluate_records
from sdft_core.evaluation.tasks import subsample
from sdft_core.models import load_model, load_tokenizer
from sdft_core.records import records_from_dicts
from sdft_core.skills import BUILDERS, read_skill
from sdft_core.trainer import train

skip = int(sys.argv[1])
out = f"reports/experiment/runs/ablation-tool_use-sdft-skip{skip}-lr0.0002-seed0"
folder = Path("data/skills/tool_use")
spec = read_skill(folder) if (folder / "skill.yaml").exists() else BUILDERS["tool_use"](0)
config = TrainConfig(method="sdft", model="smollm2-135m-instruct", output_dir=out, max_steps=8, batch_size=6,
                     micro_batch_size=6, learning_rate=2e-4, warmup_steps=2, seed=0, checkpoint_every=4,
                     rollout=RolloutConfig(max_new_tokens=64), prompts=PromptConfig(teacher_mode="prior_turn"),
                     loss=LossConfig(skip_first_tokens=skip))
started = time.time()
train(config, records_from_dicts(spec.splits["demonstrations"], source="tool_use").accepted)
model, tok = load_model(out + "/model").eval(), load_tokenizer(out + "/model")
result = evaluate_records(model, tok, "tool_use", subsample(spec.splits["eval"], 60, seed=1234), spec.scorer, 64,
                          output_dir=f"reports/experiment/evals/ablation-tool_use-sdft-skip{skip}/eval", batch_size=16)
print(json.dumps({"skip_first_tokens": skip, "tool_use_eval": result.score, "n": result.n,
                  "seconds": time.time() - started}))
