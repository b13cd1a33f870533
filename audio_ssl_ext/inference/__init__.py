"""The learners' inference code without fairseq, hydra or omegaconf: one module per family,
built from an exported ``config.json`` and loaded from ``model.safetensors``.

    extractor.py   DownstreamModel: any model with the feature interface as a frozen extractor
    waveform.py    conv feature extractor + wav2vec 2.0 transformer (musicHuBERT, music2vec)
    jooci.py       JOOCI: the waveform model (Content) and the ECAPA-TDNN Other branch
    spectrogram.py log-mel patches + ViT encoder (MW-MAE, MAE, Audio-JEPA)
    build.py       config -> model, and an exported folder -> model (no unpickling)
    configuration_audio_ssl.py, modeling_audio_ssl.py
                   the thin transformers wrapper (AutoConfig / AutoModel with trust_remote_code)

An export (``audio_ssl_ext/export``) copies these files, and the package modules they import
(``modules/learner.py``, ``modules/conv_features.py``, ...), into the exported folder, with the
imports made relative to it: the folder's code is the package's, not a second copy.
"""
