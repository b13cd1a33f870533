#!/usr/bin/env bash
# The demo (`make demo`): demo corpus -> manifests -> a tiny training run per learner on the CPU.
# Everything goes under $DEMO_DIR (default demo/):
#   corpus/                 wavs + clip_labels.tsv, frame_labels.tsv, labels.json
#   manifest/               train.tsv, valid.tsv, manifest_report.txt
#   <learner>/train.log     the whole output of its training run (the terminal shows progress only)
#   <learner>/checkpoints/  fairseq checkpoints (checkpoint_last.pt, ...) and hydra_train.log
#   <learner>/tb/           tensorboard logs
#   musichubert/            the HuBERT iterations: iter<i>/{features,kmeans,labels,checkpoints,tb,
#                           train.log,quality.json}; jooci trains on iter2's labels
# LEARNERS="..." picks a subset. Each run starts fresh (its folder is replaced).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${DEMO_DIR:-demo}
LEARNERS=${LEARNERS:-"musichubert music2vec mwmae audiojepa jooci"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

step() { printf '\n== %s\n' "$*"; }

step "demo corpus -> $DEMO_DIR/corpus"
python scripts/make_demo_corpus.py "$DEMO_DIR/corpus"

step "manifests -> $DEMO_DIR/manifest"
python scripts/make_manifest.py "$DEMO_DIR/corpus" "$DEMO_DIR/manifest" --valid-percent 0.1 --seed 0 --no-progress

train_tiny() {  # learner config_dir [overrides...]
  local learner=$1 config_dir=$2; shift 2
  step "$learner: fairseq-hydra-train --config-dir $config_dir --config-name tiny (whole output: $DEMO_DIR/$learner/train.log)"
  rm -rf "${DEMO_DIR:?}/$learner"
  python scripts/run_logged.py "$DEMO_DIR/$learner/train.log" --desc "$learner" -- \
    fairseq-hydra-train --config-dir "$config_dir" --config-name tiny \
    task.data="$DEMO_DIR/manifest" \
    checkpoint.save_dir="$DEMO_DIR/$learner/checkpoints" \
    common.tensorboard_logdir="$DEMO_DIR/$learner/tb" "$@"
  test -f "$DEMO_DIR/$learner/checkpoints/checkpoint_last.pt" \
    || { echo "$learner: no checkpoint written, see $DEMO_DIR/$learner/train.log"; exit 1; }
}

for learner in $LEARNERS; do
  case $learner in
    musichubert)
      # Two HuBERT iterations: MFCC k-means labels -> train -> layer k-means labels -> train.
      step "musichubert: scripts/hubert_iterations.py (2 iterations, tiny config)"
      rm -rf "${DEMO_DIR:?}/musichubert"
      python scripts/hubert_iterations.py "$DEMO_DIR/manifest" "$DEMO_DIR/musichubert" \
        --config-dir examples/musichubert --iterations 2 --demo-corpus "$DEMO_DIR/corpus" ;;
    music2vec) train_tiny music2vec examples/music2vec ;;
    mwmae) train_tiny mwmae examples/mwmae ;;
    audiojepa) train_tiny audiojepa examples/audiojepa ;;
    jooci)
      # Content's targets: the second musicHuBERT iteration's labels (a trained layer's k-means, 50 Hz).
      labels="$DEMO_DIR/musichubert/iter2/labels"
      test -f "$labels/dict.km.txt" \
        || { echo "jooci: no labels in $labels: run the musichubert step first (LEARNERS=\"musichubert jooci\")"; exit 1; }
      train_tiny jooci examples/jooci task.label_dir="$labels" task.label_rate=50 ;;
    *) echo "unknown learner '$learner'"; exit 2 ;;
  esac
done

step "outputs"
for learner in $LEARNERS; do
  if [ "$learner" = musichubert ]; then
    echo "musichubert: per iteration i, checkpoints in $DEMO_DIR/musichubert/iter<i>/checkpoints, labels in .../labels, label quality in .../quality.json, training output in .../train.log, tensorboard logs in .../tb"
  else
    echo "$learner: checkpoints in $DEMO_DIR/$learner/checkpoints, training output in $DEMO_DIR/$learner/train.log, tensorboard logs in $DEMO_DIR/$learner/tb"
  fi
done
echo "tensorboard --logdir $DEMO_DIR   # to look at the curves"
