"""The s3prl bridge: s3prl's upstream contract, its Featurizer over our hidden states, and a short
run of s3prl's own downstream runner (voxceleb1-style speaker ID on a flite-generated set)."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from audio_ssl_ext.downstream.s3prl import UpstreamExpert
from tests.utils import require_kit, write_untrained_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("s3prl") / "wav2vec2_tiny.pt"
    return write_untrained_checkpoint(os.path.join(REPO, "examples/wav2vec2/tiny.yaml"), str(out))


def check_contract(upstream, lengths):
    wavs = [torch.randn(n) * 0.1 for n in lengths]
    out = upstream(wavs)
    states = out["hidden_states"]
    rate = upstream.get_downsample_rates("hidden_states")
    assert isinstance(rate, int)
    assert len({tuple(h.shape) for h in states}) == 1
    batch, frames, _ = states[0].shape
    assert batch == len(wavs)
    assert abs(frames - round(max(lengths) / rate)) <= 5
    return states


def test_upstream_contract(checkpoint):
    upstream = UpstreamExpert(checkpoint)
    assert upstream.get_downsample_rates("hidden_states") == 320
    states = check_contract(upstream, [16000, 23456, 5000])
    assert len(states) == 3 and states[0].size(-1) == 64


def test_24khz_model_gets_an_integer_rate_and_s3prl_frame_counts(tmp_path):
    path = write_untrained_checkpoint(
        os.path.join(REPO, "examples/wav2vec2/tiny.yaml"), str(tmp_path / "w24.pt"), overrides=["task.sample_rate=24000"]
    )
    upstream = UpstreamExpert(path)  # 75 Hz frames: 213.3 samples at 16 kHz
    assert upstream.get_downsample_rates("hidden_states") == 213
    for lengths in ([16000], [48000, 30000], [160000]):
        states = check_contract(upstream, lengths)
        assert states[0].size(1) == round(max(lengths) / 213)


def test_s3prl_featurizer_weighs_our_hidden_states(checkpoint, in_ci):
    require_kit("s3prl.upstream.interfaces", in_ci)
    from s3prl.upstream.interfaces import Featurizer

    upstream = UpstreamExpert(checkpoint)
    featurizer = Featurizer(upstream, upstream_device="cpu")
    assert featurizer.layer_num == 3 and featurizer.output_dim == 64 and featurizer.downsample_rate == 320
    wavs = [torch.randn(n) * 0.1 for n in (16000, 9000)]
    features = featurizer(wavs, upstream(wavs))
    # s3prl keeps round(len / rate) frames of each item (at most the batch's T = 49 here).
    assert [f.shape for f in features] == [(49, 64), (round(9000 / 320), 64)]
    # Softmax weights start uniform: the mean of the layers.
    expected = torch.stack(upstream(wavs)["hidden_states"]).mean(0)[0, : features[0].size(0)]
    torch.testing.assert_close(features[0], expected, atol=1e-5, rtol=1e-5)


VOXCELEB1_CONFIG = """
runner:
  total_steps: 20
  gradient_clipping: 1
  gradient_accumulate_steps: 1
  log_step: 10
  eval_step: 20
  save_step: 20
  max_keep: 1
  eval_dataloaders: [dev]
optimizer:
  name: TorchOptim
  torch_optim_name: Adam
  lr: 1.0e-3
downstream_expert:
  datarc:
    file_path: {root}
    meta_data: {meta}
    num_workers: 0
    train_batch_size: 4
    eval_batch_size: 1
    max_timestep: 32000
  modelrc:
    projector_dim: 32
    select: UtteranceLevel
    UtteranceLevel:
      pooling: MeanPooling
"""


@pytest.mark.integration
def test_s3prl_runner_trains_speaker_id_over_our_upstream(checkpoint, tmp_path, in_ci):
    require_kit("s3prl.run_downstream", in_ci)  # needs torchaudio (pure-Python mode) and transformers
    if shutil.which("flite") is None:
        if in_ci:
            pytest.fail("flite is missing: make setup-eval")
        pytest.skip("flite is missing: make setup-eval")
    from tests.speaker_id import build_speaker_id_set

    root = tmp_path / "speakers"
    meta = build_speaker_id_set(str(root), utterances_per_voice=8)
    config = tmp_path / "voxceleb1.yaml"
    config.write_text(VOXCELEB1_CONFIG.format(root=root, meta=meta))
    expdir = tmp_path / "exp"
    command = [sys.executable, "-m", "audio_ssl_ext.downstream.s3prl_run", "-m", "train", "-u", "audio_ssl",
               "-k", checkpoint, "-d", "voxceleb1", "-c", str(config), "-p", str(expdir)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "dev acc" in log
    saved = torch.load(expdir / "dev-best.ckpt", map_location="cpu", weights_only=False)
    assert saved["Featurizer"]["weights"].shape == (3,)  # s3prl learned a weighting of our 3 states
    assert saved["Args"].upstream == "audio_ssl"
    # s3prl's evaluate reloads its own checkpoint with torch's weights-only default: it works
    # without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD (s3prl_run allows argparse.Namespace, nothing more).
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    command = [sys.executable, "-m", "audio_ssl_ext.downstream.s3prl_run", "-m", "evaluate",
               "-e", str(expdir / "dev-best.ckpt"), "-t", "test"]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                          env=dict(env, CUDA_VISIBLE_DEVICES=""))
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "test acc" in log, log[-4000:]
