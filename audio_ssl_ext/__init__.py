"""audio_ssl_ext: self-supervised audio learners as a fairseq user dir.

Importing the package registers its tasks, models and criteria with fairseq's registries, so
``common.user_dir`` pointing here (or ``import audio_ssl_ext``) is all fairseq needs.

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
    atomic_checkpoint.py, cpu_distributed.py
                 applied on import: fairseq's checkpoint writes made atomic; fairseq's
                 distributed trainer on CPUs (gloo)
    logged_run.py  a training command's whole output to a log, a progress bar to the terminal
    tools/       demo corpus and evaluation-task builders for scripts and tests; nothing above
                 imports them
"""

__version__ = "0.1.0"

from audio_ssl_ext import criterions, models, tasks  # noqa: E402,F401  (registration)
from audio_ssl_ext.downstream.load import load_model  # noqa: E402,F401  (public API)
from audio_ssl_ext import atomic_checkpoint  # noqa: E402,F401  (makes fairseq's checkpoint writes atomic)
from audio_ssl_ext import cpu_distributed  # noqa: E402,F401  (fairseq's distributed trainer on CPUs)
