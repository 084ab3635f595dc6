#!/usr/bin/env sh
# The seed study as a DVC experiment queue: the pipeline three times (learning rate x batch size),
# one experiment at a time, then the results table. Run from the repository root:
#     sh scripts/seed_study.sh
# Each experiment is a git-backed DVC experiment: `dvc exp apply <name>` restores one, `dvc exp push`
# shares them. The queue runs in the background; `dvc queue status` / `dvc queue logs <name>` follow it.
set -eu
CONFIG=configs/fashion_mnist.yaml

queue() {  # name, learning rate, batch size
    uv run dvc exp run --queue --name "$1" -S "$CONFIG:model.lr=$2" -S "$CONFIG:data.batch_size=$3"
}
queue lr0.001-bs64 0.001 64
queue lr0.01-bs64 0.01 64
queue lr0.001-bs128 0.001 128

uv run dvc queue start --jobs 1  # one at a time: each training already uses every core
while uv run dvc queue status | grep -qE "Queued|Running"; do sleep 30; done
uv run dvc queue status
uv run dvc exp show --only-changed --drop 'fit_seconds|.*top5.*'
