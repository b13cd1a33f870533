"""transformers' AutoModel over an exported audio_ssl_ext model (``trust_remote_code=True``).

A thin wrapper: ``forward(input_values (B, S), attention_mask (B, S))`` as ``Wav2Vec2Model`` takes
them (raw waveforms at ``config.sample_rate``; the spectrogram models compute their log-mel
inside) runs the same ``DownstreamModel`` as ``audio_ssl_ext.load_model``, so
``output_hidden_states=True`` gives its hidden states in its order: (B, T, D) each, zeros past each
item's frames. ``last_hidden_state`` is the last of them.
"""

from typing import Optional

import torch
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput

from .build import build_model
from .configuration_audio_ssl import AudioSslConfig
from .extractor import DownstreamModel


class AudioSslModel(PreTrainedModel):
    config_class = AudioSslConfig
    base_model_prefix = "model"
    main_input_name = "input_values"

    def __init__(self, config: AudioSslConfig):
        super().__init__(config)
        self.model = build_model(config.to_dict())
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight comes from model.safetensors

    @classmethod
    def get_init_context(cls, *args, **kwargs):
        # Built as plain torch modules: transformers' default contexts turn torch.nn.init functions
        # into no-ops returning None, and a parameter made from their result comes out empty
        # (MW-MHA's relative position tables); model.safetensors then replaces every weight.
        return []

    def train(self, mode: bool = True):
        return super().train(False)  # a feature extractor: BatchNorm statistics stay the trained ones

    def extractor(self) -> DownstreamModel:
        """The feature extractor ``load_model`` gives (built on first use: it probes the model)."""
        if getattr(self, "_extractor", None) is None:
            object.__setattr__(self, "_extractor", DownstreamModel(self.model, self.config.learner, None))
        return self._extractor

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
    ):
        if input_values.dim() != 2:
            raise ValueError(f"input_values must be (batch, samples) at {self.config.sample_rate} Hz, got {tuple(input_values.shape)}")
        lengths = None
        if attention_mask is not None:
            mask = attention_mask.long()
            if (mask[:, 1:] > mask[:, :-1]).any():  # a 0 before a 1: not right padding
                raise ValueError("attention_mask: only right padding is supported (each item's real samples first)")
            lengths = mask.sum(-1)
        out = self.extractor().extract_features(input_values, lengths)
        states = tuple(h.to(input_values.device) for h in out.hidden_states)
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        hidden = states if output_hidden_states else None
        if not return_dict:
            return (states[-1],) + ((hidden,) if hidden is not None else ())
        return BaseModelOutput(last_hidden_state=states[-1], hidden_states=hidden)
