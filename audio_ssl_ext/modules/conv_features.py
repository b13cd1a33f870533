"""The fairseq waveform family (wav2vec 2.0, HuBERT, data2vec, music2vec, musicHuBERT): a conv
feature extractor, a layer norm, a projection and fairseq's ``TransformerEncoder``. Here: the
conv stack's frame arithmetic, and the feature interface (``modules/learner.py``) written once
for every model of that layout.
"""

import ast
from collections.abc import Mapping
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F

from audio_ssl_ext.modules.learner import Learner

ConvLayers = Tuple[Tuple[int, int, int], ...]  # (dim, kernel, stride) per layer


def parse_conv_layers(spec: str) -> ConvLayers:
    """fairseq's ``conv_feature_layers`` string, e.g. ``"[(512, 10, 5)] + [(512, 3, 2)] * 4"``.

    fairseq ``eval``s it; this reads only lists of int tuples joined by ``+`` and repeated by
    ``* int``, so a config cannot run code.
    """

    def value(node):
        if isinstance(node, ast.List):
            return [value(e) for e in node.elts]
        if isinstance(node, ast.Tuple):
            return tuple(value(e) for e in node.elts)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = value(node.left), value(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"conv_feature_layers={spec!r}: only lists of (dim, kernel, stride) tuples, + and * int")

    if not isinstance(spec, str):
        raise ValueError(f"conv_feature_layers={spec!r}: expected fairseq's string, e.g. '[(512, 10, 5)] + [(512, 3, 2)] * 4'")
    try:
        layers = value(ast.parse(spec, mode="eval").body)
    except SyntaxError as err:
        raise ValueError(f"conv_feature_layers={spec!r}: {err}") from None
    if not isinstance(layers, list) or not all(isinstance(l, tuple) and len(l) == 3 for l in layers) or not layers:
        raise ValueError(f"conv_feature_layers={spec!r}: expected a non-empty list of (dim, kernel, stride)")
    return tuple(layers)


def receptive_field_and_stride(conv_layers: ConvLayers) -> Tuple[int, int]:
    """Samples one frame sees, and samples between frames."""
    field, stride = 1, 1
    for _, kernel, layer_stride in conv_layers:
        field += (kernel - 1) * stride
        stride *= layer_stride
    return field, stride


def conv_num_frames(num_samples: int, conv_layers: ConvLayers) -> int:
    """Frames of an unpadded 'valid' conv stack (0 when the input is shorter than one frame)."""
    length = num_samples
    for _, kernel, stride in conv_layers:
        length = (length - kernel) // stride + 1
        if length <= 0:
            return 0
    return length


def conv_output_lengths(input_lengths: torch.Tensor, conv_layers: ConvLayers) -> torch.Tensor:
    """``conv_num_frames`` for a tensor of lengths (each at least one frame long)."""
    for _, kernel, stride in conv_layers:
        input_lengths = torch.div(input_lengths - kernel, stride, rounding_mode="floor") + 1
    return input_lengths


@dataclass(frozen=True)
class ConvFraming:
    """What the feature interface needs to know of a model and its task."""

    conv_layers: ConvLayers
    sample_rate: int
    normalize: bool  # the task's: zero mean, unit variance per utterance
    group_norm_extractor: bool  # extractor_mode "default": one GroupNorm over the whole input
    layer_norm_first: bool

    @classmethod
    def from_configs(cls, model_cfg, task_cfg) -> "ConvFraming":
        """From model and task configs: dataclasses, DictConfigs or plain dicts (a checkpoint's
        ``cfg``); a missing task config means the waveform tasks' defaults (16 kHz, not normalised)."""

        def get(cfg, key, default):
            if cfg is None:
                return default
            return cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)

        return cls(
            conv_layers=parse_conv_layers(get(model_cfg, "conv_feature_layers", None)),
            sample_rate=int(get(task_cfg, "sample_rate", 16000)),
            normalize=bool(get(task_cfg, "normalize", False)),
            group_norm_extractor=get(model_cfg, "extractor_mode", "default") == "default",
            layer_norm_first=bool(get(model_cfg, "layer_norm_first", False)),
        )


class ConvTransformerFeatures(Learner):
    """The feature interface of a module with ``feature_extractor``, ``layer_norm``,
    ``post_extract_proj`` (or None), ``encoder`` (fairseq's TransformerEncoder) and ``framing``.

    Hidden states are the encoder's input (after the positional convs) and each layer's output,
    s3prl's convention for these models. Frames are those the conv stack computes from real
    samples only; padded frames are masked out of attention, and a group-norm extractor, whose
    statistics span the whole input, padding included, runs per utterance.
    """

    framing: ConvFraming
    # Attention is quadratic in time; 30 s (1500 frames at 50 Hz) keeps a base model under a few
    # GB and is longer than the crops these models are trained on.
    default_chunk_seconds = 30.0

    @property
    def sample_rate(self) -> int:
        return self.framing.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / receptive_field_and_stride(self.framing.conv_layers)[1]

    @property
    def first_frame_seconds(self) -> float:
        return receptive_field_and_stride(self.framing.conv_layers)[0] / 2 / self.sample_rate

    def num_frames(self, num_samples: int) -> int:
        return conv_num_frames(num_samples, self.framing.conv_layers)

    def feature_chunking(self, chunk_seconds: Optional[float]) -> Tuple[int, int]:
        # Chunks overlap by the receptive field minus one hop: their frames are exactly those of
        # one pass over the whole input; only the attention context is bounded.
        field, stride = receptive_field_and_stride(self.framing.conv_layers)
        seconds = self.default_chunk_seconds if chunk_seconds is None else chunk_seconds
        return max(1, round(seconds * self.frame_rate)) * stride, field - stride

    def normalize_waveform(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The task's ``normalize`` (fairseq's F.layer_norm over the waveform), real samples only."""
        out = torch.zeros_like(source)
        for i, n in enumerate(lengths.tolist()):
            out[i, :n] = F.layer_norm(source[i, :n], (n,))
        return out

    def conv_features(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, S) -> (B, T, C) conv features, T = frames of the longest item."""
        if not self.framing.group_norm_extractor or bool((lengths == source.size(1)).all()):
            return self.feature_extractor(source).transpose(1, 2)
        # GroupNorm over time would mix padding into every real frame: one utterance at a time.
        frames = [self.num_frames(n) for n in lengths.tolist()]
        out = None
        for i, n in enumerate(lengths.tolist()):
            f = self.feature_extractor(source[i : i + 1, :n]).transpose(1, 2)
            if out is None:
                out = f.new_zeros(source.size(0), max(frames), f.size(-1))
            out[i, : f.size(1)] = f[0]
        return out

    def front_features(self, source: torch.Tensor, lengths: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, S) -> layer-normed conv features (B, T, C) and their padding mask (B, T)."""
        if self.framing.normalize:
            source = self.normalize_waveform(source, lengths)
        features = self.layer_norm(self.conv_features(source, lengths))
        frames = torch.tensor([self.num_frames(n) for n in lengths.tolist()], device=source.device)
        padding_mask = torch.arange(features.size(1), device=source.device)[None, :] >= frames[:, None]
        return features, padding_mask

    def encoder_states(self, features: torch.Tensor, padding_mask: torch.Tensor) -> List[torch.Tensor]:
        """Front features -> the encoder's input (after the positional convs) and every layer's
        output, (B, T, D) each, zeros at padded frames."""
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        captured = []  # the first layer's input (T, B, C): the encoder's input after pos_conv

        def keep_input(_module, args, kwargs):
            captured.append(args[0] if args else kwargs["x"])

        # fairseq's encoder returns every layer's output but not its own input after the
        # positional convs: it is taken on its way into the first layer.
        hook = self.encoder.layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)
        try:
            x, layer_results = self.encoder.extract_features(
                features, padding_mask=padding_mask if padding_mask.any() else None
            )
        finally:
            hook.remove()
        num_frames = features.size(1)
        states = [captured[0].transpose(0, 1)[:, :num_frames]]
        states += [result[0].transpose(0, 1)[:, :num_frames] for result in layer_results]
        if self.framing.layer_norm_first:
            # Pre-LN models: the encoder's final layer norm belongs to the last layer (fairseq's
            # TransformerEncoder.forward applies it after extract_features, which returns x without it).
            states[-1] = self.encoder.layer_norm(x)
        return [s.masked_fill(padding_mask[..., None], 0.0) for s in states]

    def hidden_states(self, source: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        return self.encoder_states(*self.front_features(source, lengths))
