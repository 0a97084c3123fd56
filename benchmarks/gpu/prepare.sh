#!/usr/bin/env bash
# Run here, where PyPI answers, before a GPU-machine call: it fills .bench/ (git-ignored; name it in `carry`)
# with what that machine lacks: wheels for TRL and its datasets stack (its own transformers, 5.17, runs sdft_core),
# the embedded model's tokenizer for the random-weight shapes, and TRL's anchor script from ../shared if present.
# About 60 MB: with the working tree it stays under the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .bench && mkdir -p .bench/whl
.venv/bin/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .bench/whl trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 pyarrow==26.0.1
.venv/bin/python -c "from sdft_core.models import load_tokenizer; load_tokenizer('smollm2-135m-instruct').save_pretrained('.bench/tok')"
cp ../shared/bench/trl_anchor.py .bench/ 2>/dev/null || echo "no ../shared/bench/trl_anchor.py: run.sh will skip the anchor"
du -sh .bench
