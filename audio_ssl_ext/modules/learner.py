"""What every learner is: the feature interface downstream code uses, and the training plumbing
each model would otherwise write again (update counter, sample-id guard, mask streams).

Feature interface (``load_model``, s3prl, HEAR, the probe and export use only this, so a new
learner needs no edit in ``downstream/``): for a padded batch of waveforms,

    model.hidden_states(source (B, S), lengths (B,)) -> [(B, T, D), ...]   zeros past each item's frames
    model.num_frames(num_samples) -> T                  frames of an unpadded input of that many samples
    model.sample_rate, model.frame_rate                 Hz of the input it expects, of its frames
    model.first_frame_seconds                           centre of frame 0 (frame j is j / frame_rate later)
    model.feature_chunking(chunk_seconds)               how a wrapper may cut long inputs (see there)
    model.select_features(name), model.utterance_embedding(source, lengths)   where a learner has them

The two families implement it once each: ``conv_features.ConvTransformerFeatures`` (a conv
extractor and fairseq's TransformerEncoder) and ``spectrogram_frontend.PatchEncoderFeatures``
(a ViT over log-mel patches).

Masks are drawn from (``common.seed``, stream, update, sample id), the ids handed over by the
criterion: the rule and why are in the README's "Seeded training".
"""

from typing import List, Optional, Tuple

import torch

# Mask streams of ``mask_entropy``: training masks also depend on the update number; validation
# masks do not, so every validation pass scores the same masks.
TRAIN_STREAM, VALID_STREAM = 0, 1


class Learner:
    """Base of every learner model; put it before ``BaseFairseqModel`` in the bases."""

    num_updates: int = 0
    # The criterion that passes the batch's ids (named in the error when they are missing).
    sample_ids_criterion = "model_with_sample_ids"

    # --- the feature interface -------------------------------------------------------------
    sample_rate: int
    frame_rate: float
    first_frame_seconds: float = 0.0

    def num_frames(self, num_samples: int) -> int:
        raise NotImplementedError

    def hidden_states(self, source: torch.Tensor, lengths: torch.Tensor) -> List[torch.Tensor]:
        """(B, S) waveforms at ``sample_rate`` with (B,) real lengths -> one (B, T, D) per layer,
        T = ``num_frames`` of the longest item, zeros past each item's ``num_frames``."""
        raise NotImplementedError

    def feature_chunking(self, chunk_seconds: Optional[float]) -> Optional[Tuple[int, int]]:
        """(hop, overlap) in samples: a wrapper may cut a long input into pieces that start every
        ``hop`` samples and are ``overlap`` longer, and concatenate their frames. None: the model
        takes any length itself (and ``chunk_seconds`` does not apply)."""
        if chunk_seconds is not None:
            raise ValueError(f"{type(self).__name__} chunks its input itself; chunk_seconds does not apply")
        return None

    def select_features(self, features: Optional[str]) -> None:
        """Which hidden states ``hidden_states`` gives, for a learner with more than one set
        (``load_model(path, features=...)``); None keeps its default."""
        if features is not None:
            raise ValueError(f"{type(self).__name__} has one set of hidden states: features={features!r} does not apply")

    def utterance_embedding(self, source: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, E): one embedding per item, for a learner that pools one (same inputs as
        ``hidden_states``)."""
        raise NotImplementedError(f"{type(self).__name__} pools no utterance embedding")

    # --- training plumbing -------------------------------------------------------------------
    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def require_sample_ids(self, sample_ids: Optional[torch.Tensor]) -> torch.Tensor:
        if sample_ids is None:
            raise ValueError(
                f"{type(self).__name__} draws its masks from the batch's sample_ids: train it with "
                f"criterion._name={self.sample_ids_criterion} (fairseq's own criteria do not pass them)"
            )
        return sample_ids

    def mask_entropy(self) -> Tuple[int, ...]:
        """(seed, stream[, update]) that, with a sample id, seeds that sample's mask."""
        stream = (TRAIN_STREAM, self.num_updates) if self.training else (VALID_STREAM,)
        return (self.cfg.seed, *stream)
