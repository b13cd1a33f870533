"""audio_ssl_ext: self-supervised audio learners as a fairseq user dir.

Importing the package registers its tasks, models and criteria with fairseq's registries, so
``common.user_dir`` pointing here (or ``import audio_ssl_ext``) is all fairseq needs. Where fairseq
is not imported yet, registration waits for its import (``_registry.py``): data preparation and
exported models (``export/``, ``inference/``) never load fairseq.

    data/        manifests, checked audio reading, label files, the fairseq dataset
    features/    spectral frontends (log-mel, MFCC+deltas, chroma, CQT), batched, any device
    modules/     what the learners share: the Learner base and feature interface (learner.py),
                 the two feature families (conv_features.py, spectrogram_frontend.py), masking,
                 EMA teacher, collapse guard, patches, ViT blocks, multi-window attention
    models/      one file per learner, registered by name: config, architecture, loss
    criterions/  only where fairseq's own criteria do not fit
    tasks/       the waveform task (frame labels optional) and the fixed-crop task
    clustering/  feature dumping, faiss k-means, label writing, cluster quality, iterations
    downstream/  load_model over the feature interface, s3prl upstream, probe, HEAR task folders
    hear.py      the HEAR API module (HEAR imports it by this name: audio_ssl_ext.hear)
    inference/   the models' inference code without fairseq, hydra or omegaconf (what an
                 exported folder carries next to its weights; load_model uses it for folders)
    export/      a checkpoint -> safetensors, config.json, model card and a transformers AutoModel
    atomic_checkpoint.py, cpu_distributed.py
                 applied with the registration: fairseq's checkpoint writes made atomic; fairseq's
                 distributed trainer on CPUs (gloo)
    logged_run.py  a training command's whole output to a log, a progress bar to the terminal
    tools/       demo corpus and evaluation-task builders for scripts and tests; nothing above
                 imports them
"""

__version__ = "0.1.0"

from audio_ssl_ext._registry import watch_for_fairseq  # noqa: E402
from audio_ssl_ext.downstream.load import load_model  # noqa: E402,F401  (public API)

# Registration and the two fairseq patches happen now if fairseq is loaded, otherwise right after
# its import (``_registry.py``): a script that never needs fairseq does not pay for its import.
watch_for_fairseq()
