"""audio_ssl_ext: self-supervised audio learners as a fairseq user dir.

Importing the package registers its tasks, models and criteria with fairseq's registries, so
``common.user_dir`` pointing here (or ``import audio_ssl_ext``) is all fairseq needs.

    data/        manifests, checked audio reading, label files, fairseq datasets
    features/    spectral frontends (log-mel, MFCC+deltas, chroma, CQT), batched, any device
    modules/     blocks shared by the learners (masking, EMA, patches, ViT blocks, attention)
    models/      one file per learner, registered by name
    criterions/  only where fairseq's own criteria do not fit
    tasks/       the waveform task (frame labels optional) and the fixed-crop task
    clustering/  feature dumping, faiss k-means, label writing, cluster quality
    downstream/  load_model, s3prl upstream, HEAR module, probe
"""

__version__ = "0.1.0"

from audio_ssl_ext import criterions, models, tasks  # noqa: E402,F401  (registration)
from audio_ssl_ext.downstream.load import load_model  # noqa: E402,F401  (public API)
