"""transformers' config of an exported audio_ssl_ext model. The fields are ``config.json``'s
(written by ``python -m audio_ssl_ext.export``): ``family``, ``model`` and ``task`` (the fairseq
fields the model is built from), ``features``, ``sample_rate``, ``frame_rate``, ``hidden_size``,
``hidden_state_names``, ``frontend``; PretrainedConfig keeps them as attributes."""

from transformers import PretrainedConfig


class AudioSslConfig(PretrainedConfig):
    model_type = "audio_ssl_ext"
