#!/usr/bin/env bash
# The main job end to end on a fresh machine: install featcache into .venv, embed the
# 300-image Fashion-MNIST sample with the shipped pretrained MobileNet, show the cache, train a head.
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .  # editable, as .ci/run: one .venv serves both

.venv/bin/featcache extract examples/fashion-mnist \
  --backbone mobilenet \
  --weights examples/weights/mobilenet_1_0_224_imagenet_notop.weights.h5 \
  --output cache/mobilenet.h5
.venv/bin/featcache inspect cache/mobilenet.h5
# ...then train the tutorials' dense head on the cached features (seconds) and report on test.
.venv/bin/featcache train-head cache/mobilenet.h5 --output runs/example-dense --overwrite
