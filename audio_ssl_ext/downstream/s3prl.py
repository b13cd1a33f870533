"""s3prl upstream over any checkpoint this package trains (SUPERB through s3prl's own runner).

    from audio_ssl_ext.downstream.s3prl import UpstreamExpert
    upstream = UpstreamExpert("checkpoint_best.pt")
    out = upstream([wav1, wav2])          # 1-D float tensors at 16 kHz, any lengths
    out["hidden_states"]                  # list of (B, T, D), one per layer, all the same shape
    upstream.get_downsample_rates("hidden_states")   # 16 kHz samples per frame (an int)

``-g features=NAME`` (or ``-g FILE.yaml`` holding ``features: NAME``) picks the hidden states of
a learner that has several sets (JOOCI: content, other, both); ``-g trust_checkpoint=true`` reads a
checkpoint that holds classes outside the safe-loading allow-list (``audio_ssl_ext/checkpoint_io.py``).

s3prl's contract: the input is 16 kHz; T is within 5 frames of round(max_len / rate). A model at
another rate (24 kHz) resamples inside; where its frame rate does not divide 16000 (75 Hz gives
213.3 samples) the hidden states are linearly interpolated in time onto the grid of the nearest
integer rate, so s3prl's bookkeeping of frames stays exact. To run s3prl's downstream tasks:
``python -m audio_ssl_ext.downstream.s3prl_run -u audio_ssl -k CKPT -d voxceleb1 ...``.

This module does not import s3prl: s3prl's own import pulls torchaudio, which the package never
needs at run time.
"""

import os
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import nn

from audio_ssl_ext.downstream.load import load_model

S3PRL_SAMPLE_RATE = 16000


class UpstreamExpert(nn.Module):
    def __init__(self, ckpt: str, model_config=None, **kwargs):
        super().__init__()
        if not ckpt:
            raise ValueError("the audio_ssl upstream needs a checkpoint: -k CKPT")
        self.model = load_model(ckpt, **upstream_options(model_config))
        samples_per_frame = S3PRL_SAMPLE_RATE / self.model.frame_rate
        self.downsample_rate = max(1, int(round(samples_per_frame)))
        self.regrid = abs(samples_per_frame - self.downsample_rate) > 1e-6

    def get_downsample_rates(self, key: str) -> int:
        return self.downsample_rate

    def forward(self, wavs: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        wavs = [mono(w, i) for i, w in enumerate(wavs)]
        out = self.model.extract_features(wavs, sample_rate=S3PRL_SAMPLE_RATE)
        states = out.hidden_states
        if self.regrid:
            frames = max(1, int(round(max(w.numel() for w in wavs) / self.downsample_rate)))
            states = [
                F.interpolate(h.transpose(1, 2), size=frames, mode="linear", align_corners=False).transpose(1, 2)
                for h in states
            ]
        device = wavs[0].device
        states = [h.to(device) for h in states]
        return {"hidden_states": states, "last_hidden_state": states[-1]}


def mono(wav: torch.Tensor, index: int) -> torch.Tensor:
    """s3prl hands 1-D waveforms; (1, S) is taken as one channel. Anything else (a (2, S) stereo
    pair) is refused: flattened, it would become one signal twice as long."""
    if wav.dim() == 2 and wav.size(0) == 1:
        wav = wav[0]
    if wav.dim() != 1:
        raise ValueError(
            f"wavs[{index}] has shape {tuple(wav.shape)}: the audio_ssl upstream takes mono 1-D waveforms "
            f"(s3prl's contract); mix the channels down or pick one first"
        )
    return wav


def upstream_options(model_config) -> Dict[str, object]:
    """s3prl's ``-g``: ``key=value[,key=value]`` or a YAML file of them: ``features`` and
    ``trust_checkpoint`` (see ``audio_ssl_ext/checkpoint_io.py``)."""
    if not model_config:
        return {}
    if os.path.isfile(model_config):
        import yaml

        with open(model_config) as f:
            options = yaml.safe_load(f) or {}
        where = model_config
    else:
        pairs = [item.partition("=") for item in str(model_config).split(",")]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"-g {model_config!r}: expected features=NAME or a YAML file")
        options, where = {k.strip(): v.strip() for k, _, v in pairs}, f"-g {model_config!r}"
    unknown = sorted(set(options) - {"features", "trust_checkpoint"})
    if unknown:
        raise ValueError(f"{where}: unknown upstream options {unknown}; the audio_ssl upstream knows 'features' and 'trust_checkpoint'")
    if "trust_checkpoint" in options:
        trust = str(options["trust_checkpoint"]).lower()
        if trust not in ("true", "false"):
            raise ValueError(f"{where}: trust_checkpoint must be true or false, got {options['trust_checkpoint']!r}")
        options["trust_checkpoint"] = trust == "true"
    return options
