"""Ablation: SDFT on tool_use with N masked completion tokens, otherwise the experiment's seed-0 run at 2e-4.

    .venv/bin/python experiments/mask_ablation.py 0    # no masking (the experiment itself uses the paper's 3)

Trains and scores through experiments/sdft_vs_sft.py's Experiment with its default config (the same steps, batch,
data and 60 tool_use eval items) plus `loss.skip_first_tokens=N`; prints one JSON line.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sdft_vs_sft import Experiment, ExperimentConfig  # noqa: E402

skip = int(sys.argv[1])
config = ExperimentConfig(overrides={"loss.skip_first_tokens": skip})
experiment = Experiment(config, Path(__file__).resolve().parents[1] / "reports" / "experiment")
name = f"ablation-tool_use-sdft-skip{skip}"
with experiment.mlflow.start_run(run_name=name):
    model = experiment.train_run("tool_use", "sdft", 2e-4, config.seeds[0], config.model, name)
scores = experiment.evaluate(str(model), name, ["tool_use"], prior=False)
print(json.dumps({"skip_first_tokens": skip, "tool_use_eval": scores["skills"]["tool_use"]["score"],
                  "n": scores["skills"]["tool_use"]["n"]}))
