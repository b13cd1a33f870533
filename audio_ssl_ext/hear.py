"""HEAR API (https://hearbenchmark.com/hear-api.html) over any checkpoint this package trains.

    hear-validator audio_ssl_ext.hear -m CKPT
    python -m heareval.embeddings.runner audio_ssl_ext.hear --model CKPT --tasks-dir TASKS \\
        [--model-options '{"layer": 6}']

``load_model(model_file_path, layer="last")`` returns a torch module with HEAR's attributes;
``get_timestamp_embeddings`` gives one embedding per model frame (the hidden state of ``layer``),
stamped with the frame's centre in milliseconds; ``get_scene_embeddings`` is their mean over time.
``layer`` is an index into the hidden states (0 = the encoder's input, -1 = the last layer),
``"last"``, or ``"mean"`` (the average of all hidden states). ``features`` picks the set of hidden
states of a learner that has several; ``scene="utterance"`` makes the scene embedding the model's
pooled utterance embedding (where it has one) instead of the mean of the timestamp embeddings.
``trust_checkpoint=True`` reads a checkpoint holding classes outside the safe-loading allow-list
(``audio_ssl_ext/checkpoint_io.py``) with the full unpickler. HEAR accepts 16000, 22050, 44100 or
48000 Hz: a model trained at another rate (24 kHz, as MERT) declares 16000 and resamples inside.
"""

from typing import Optional, Tuple, Union

import torch
from torch import nn

from audio_ssl_ext.downstream.load import DownstreamModel
from audio_ssl_ext.downstream.load import load_model as load_downstream_model

HEAR_SAMPLE_RATES = (16000, 22050, 44100, 48000)


class HearModel(nn.Module):
    def __init__(self, model: DownstreamModel, layer: Union[int, str] = "last", scene: str = "mean"):
        super().__init__()
        self.model = model
        self.layer = resolve_layer(layer, model.num_layers)
        rate = model.sample_rate
        self.sample_rate = rate if rate in HEAR_SAMPLE_RATES else 16000
        self.timestamp_embedding_size = int(model.hidden_dim)
        if scene not in ("mean", "utterance"):
            raise ValueError(f"scene must be 'mean' or 'utterance', got {scene!r}")
        if scene == "utterance" and not model.has_utterance_embedding:
            raise ValueError(f"scene='utterance': {model.name} pools no utterance embedding")
        self.scene = scene
        self.scene_embedding_size = int(model.hidden_dim)
        if scene == "utterance":
            probe = model.utterance_embedding([torch.zeros(model.min_samples)], sample_rate=model.sample_rate)
            self.scene_embedding_size = int(probe.size(-1))

    def embeddings(self, audio: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, S) audio at ``sample_rate`` -> (B, F, D) embeddings and (B,) real frames."""
        if audio.dim() != 2:
            raise ValueError(f"HEAR audio must be (batch, samples), got shape {tuple(audio.shape)}")
        out = self.model.extract_features(audio, sample_rate=self.sample_rate)
        if self.layer == "mean":
            states = torch.stack(out.hidden_states).mean(dim=0)
        else:
            states = out.hidden_states[self.layer]
        return states.to(audio.device), out.lengths.to(audio.device)


def resolve_layer(layer: Union[int, str], num_layers: int) -> Union[int, str]:
    if layer == "last":
        return num_layers - 1
    if layer == "mean":
        return "mean"
    try:
        index = int(layer)
    except (TypeError, ValueError):
        raise ValueError(f"layer must be an int, 'last' or 'mean', got {layer!r}") from None
    if not -num_layers <= index < num_layers:
        raise ValueError(f"layer={index} is out of range: the model has {num_layers} hidden states")
    return index % num_layers


def load_model(
    model_file_path: str = "",
    layer: Union[int, str] = "last",
    device: str = "cpu",
    features: Optional[str] = None,
    scene: str = "mean",
    trust_checkpoint: bool = False,
) -> HearModel:
    if not model_file_path:
        raise ValueError(
            "audio_ssl_ext.hear.load_model needs a checkpoint: hear-validator audio_ssl_ext.hear -m CKPT"
        )
    model = load_downstream_model(model_file_path, device=device, features=features, trust_checkpoint=trust_checkpoint)
    return HearModel(model, layer=layer, scene=scene)


def frame_times_ms(model: HearModel, num_frames: int, batch: int) -> torch.Tensor:
    """(batch, num_frames) centre of each frame in ms: regular, and never past the audio's end."""
    features = model.model
    times = features.first_frame_seconds + torch.arange(num_frames, dtype=torch.float64) / features.frame_rate
    return (times * 1000.0).float()[None].expand(batch, -1).contiguous()


def get_timestamp_embeddings(audio: torch.Tensor, model: HearModel) -> Tuple[torch.Tensor, torch.Tensor]:
    embeddings, _ = model.embeddings(audio)
    timestamps = frame_times_ms(model, embeddings.size(1), embeddings.size(0)).to(audio.device)
    return embeddings.float(), timestamps


def get_scene_embeddings(audio: torch.Tensor, model: HearModel) -> torch.Tensor:
    if model.scene == "utterance":
        return model.model.utterance_embedding(audio, sample_rate=model.sample_rate).to(audio.device)
    # HEAR batches hold clips of one length, so every frame is real; the mask is for safety.
    embeddings, lengths = model.embeddings(audio)
    real = (torch.arange(embeddings.size(1), device=embeddings.device)[None, :] < lengths[:, None]).float()
    return ((embeddings * real[..., None]).sum(dim=1) / real.sum(dim=1, keepdim=True).clamp_min(1)).float()
