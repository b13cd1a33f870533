#!/usr/bin/env bash
# Debian packages for the evaluation tasks (scripts/build_eval_tasks.py) and the s3prl test set:
# fluidsynth + two independent GM soundfonts (FluidR3: train/valid, TimGM6mb: test) and flite;
# for the multi-speaker speech set (audio_ssl_ext/tools/speech_corpus.py, DEBIAN_PACKAGES there):
# festival with nine voices of distinct speakers, and real recorded speech (tuxpaint-stamps-default,
# klettres-data).
# Idempotent: installs only what is missing (apt-get update first, once). Needs root or sudo.
set -euo pipefail
PACKAGES=(fluidsynth fluid-soundfont-gm timgm6mb-soundfont flite
  festival festival-czech festvox-kdlpc16k festvox-italp16k festvox-itapc16k festvox-suopuhe-lj
  festvox-suopuhe-mv festvox-czech-dita festvox-czech-krb festvox-czech-machac festvox-czech-ph
  tuxpaint-stamps-default klettres-data)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup_eval: ${PACKAGES[*]} already installed"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup_eval: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
