"""What every spectral frontend shares: input checks, frame arithmetic, where constants live.

Frontends sit inside the learners' models ("spectrograms are computed on the training device"), so
they are nn.Modules whose constant tensors (filterbanks, CQT kernels) are buffers that follow
``model.to(device)``. Those buffers are

- non-persistent: they are derived from the constructor's arguments, so they stay out of
  checkpoints (the default CQT's kernels alone are 90 MB);
- always float32: fairseq's ``--fp16``/``--bf16`` call ``model.half()``, which would round the
  filterbanks (the low CQT bins' kernel taps, ~5e-5, sit below half precision's normal range). Only the device
  follows ``.to()``/``.cuda()``/``.half()``.

The computation runs in float32 (float64 for float64 input, which the tests use for tight
comparisons) and the output comes back in the input's dtype: float32 for float32 waveforms.
"""

from typing import Optional

import torch
from torch import nn


def hop_length_for(sample_rate: int, frame_rate: float) -> int:
    """Samples between frames for ``frame_rate`` frames per second.

    It must be a whole number of samples: frame labels are aligned with frames by counting, so a
    rounded hop would drift (16000 / 75 Hz = 213.3 samples does; 24000 / 75 = 320 does not).
    """
    if sample_rate <= 0 or frame_rate <= 0:
        raise ValueError(
            f"sample_rate and frame_rate must be positive, got sample_rate={sample_rate}, "
            f"frame_rate={frame_rate}"
        )
    hop = sample_rate / frame_rate
    if abs(hop - round(hop)) > 1e-6 * hop:
        raise ValueError(
            f"frame_rate={frame_rate} Hz at sample_rate={sample_rate} Hz gives a hop of "
            f"{hop:.3f} samples; sample_rate / frame_rate must be a whole number of samples "
            f"(e.g. 16000 / 50 = 320, 24000 / 75 = 320, 16000 / 100 = 160)"
        )
    return int(round(hop))


def samples_in(sample_rate: int, milliseconds: float) -> int:
    """Window length in samples, rounded (25 ms at 16 kHz = 400, at 22.05 kHz = 551)."""
    samples = int(round(sample_rate * milliseconds / 1000.0))
    if samples < 2:
        raise ValueError(
            f"a {milliseconds} ms window at {sample_rate} Hz is {samples} samples; need at least 2"
        )
    return samples


class SpectralFrontend(nn.Module):
    """Base class: (B, T) float waveforms -> (B, frames, dim) features.

    Subclasses set ``sample_rate``, ``hop_length`` and ``dim``, and implement
    ``num_frames(num_samples)`` and ``features(waveforms)``.
    """

    sample_rate: int
    hop_length: int
    dim: int

    @property
    def frame_rate(self) -> float:
        """Frames per second (Hz)."""
        return self.sample_rate / self.hop_length

    def num_frames(self, num_samples: int) -> int:
        """Number of frames the forward pass returns for ``num_samples`` input samples."""
        raise NotImplementedError

    def features(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, T) float32/float64 waveforms -> (B, frames, dim) in the same dtype."""
        raise NotImplementedError

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        if not isinstance(waveforms, torch.Tensor) or waveforms.dim() != 2:
            got = tuple(waveforms.shape) if isinstance(waveforms, torch.Tensor) else type(waveforms)
            raise ValueError(
                f"{type(self).__name__} expects a (batch, samples) waveform tensor, got {got}"
            )
        if not waveforms.is_floating_point():
            raise TypeError(
                f"{type(self).__name__} expects float waveforms, got dtype {waveforms.dtype}"
            )
        self.num_frames(waveforms.shape[1])  # raises a clear error for too-short input
        compute_dtype = torch.float64 if waveforms.dtype == torch.float64 else torch.float32
        return self.features(waveforms.to(compute_dtype)).to(waveforms.dtype)

    def register_constant(self, name: str, value: torch.Tensor) -> None:
        """A float32 buffer that follows the device and stays out of the state dict."""
        self.register_buffer(name, value.to(torch.float32), persistent=False)

    def constant(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The buffer ``name`` in the dtype of ``like`` (the computation's dtype)."""
        return getattr(self, name).to(like.dtype)

    def _apply(self, fn, recurse=True):
        # Let .to()/.cuda()/.half() move the constants but never change their dtype (see the
        # module docstring): a cast is replaced by a plain move to the same device.
        def move_only(tensor):
            converted = fn(tensor)
            if tensor.is_floating_point() and converted.dtype != tensor.dtype:
                return tensor.to(converted.device)
            return converted

        return super()._apply(move_only, recurse)


class StftFrontend(SpectralFrontend):
    """Short-time power spectra with Kaldi's framing, shared by log-mel, MFCC and chroma.

    Frame i covers samples [i * hop, i * hop + win_length) ("snip edges", as Kaldi and HuBERT's
    MFCC/label pipeline do), so frames = 1 + (T - win_length) // hop. Each frame is multiplied by
    a periodic Hann window of win_length samples and zero-padded to n_fft: by default the next power
    of two (400 -> 512 at 25 ms / 16 kHz, as Kaldi's round_to_power_of_two), a finer frequency grid
    at no loss of time resolution; ``n_fft`` sets it (torchaudio, nnAudio and the MW-MAE and
    Audio-JEPA references use n_fft = win_length = 400). Zero-padding a windowed frame only changes the phase, so the power
    spectrum equals librosa's/torch.stft's with the window centred in an n_fft frame.

    With center=True the input is zero-padded by win_length // 2 on both sides, so frame i is
    centred on sample i * hop and frames = 1 + T // hop whatever the window length: frontends
    with different windows then give aligned frames that can be concatenated.
    """

    def __init__(self, sample_rate: int, win_length: int, hop_length: int, center: bool, n_fft: Optional[int] = None):
        super().__init__()
        self.sample_rate = int(sample_rate)
        self.win_length = int(win_length)
        self.hop_length = int(hop_length)
        self.center = bool(center)
        self.n_fft = 1 << (self.win_length - 1).bit_length() if n_fft is None else int(n_fft)
        if self.n_fft < self.win_length:
            raise ValueError(
                f"n_fft={self.n_fft} is shorter than the {self.win_length}-sample window: use at least "
                f"{self.win_length} (or leave it unset for the next power of two)"
            )

    @property
    def padding(self) -> int:
        return self.win_length // 2 if self.center else 0

    def num_frames(self, num_samples: int) -> int:
        padded = num_samples + 2 * self.padding
        if num_samples < 1 or padded < self.win_length:
            window_ms = 1000.0 * self.win_length / self.sample_rate
            raise ValueError(
                f"{type(self).__name__}: an input of {num_samples} samples is shorter than one "
                f"{self.win_length}-sample window ({window_ms:g} ms at {self.sample_rate} Hz, "
                f"center={self.center})"
            )
        return 1 + (padded - self.win_length) // self.hop_length

    def power_spectrogram(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, frames, n_fft // 2 + 1) power |X|^2."""
        if self.padding:
            waveforms = nn.functional.pad(waveforms, (self.padding, self.padding))
        frames = waveforms.unfold(-1, self.win_length, self.hop_length)
        # Made per call in the computation's dtype: a float32-rounded window alone puts 1e-4
        # relative errors into the low-power bins of a float64 computation.
        window = torch.hann_window(
            self.win_length, periodic=True, dtype=waveforms.dtype, device=waveforms.device
        )
        spectrum = torch.fft.rfft(frames * window, n=self.n_fft)
        return spectrum.real.square() + spectrum.imag.square()

