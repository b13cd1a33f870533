"""The feature interface (modules/learner.py): a new learner plugs into load_model, s3prl and HEAR
with no edit outside its own files; downstream/ knows no learner by name; the pieces every learner
shares (conv-stack parsing, mask streams, the sample-id guard, the collapse guard)."""

import glob
import os
from dataclasses import dataclass

import pytest
import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.models import MODEL_REGISTRY, BaseFairseqModel, register_model
from torch import nn

import audio_ssl_ext
from audio_ssl_ext import hear
from audio_ssl_ext.downstream.load import load_model
from audio_ssl_ext.downstream.s3prl import UpstreamExpert
from audio_ssl_ext.modules.collapse import CollapseError, check_collapse
from audio_ssl_ext.modules.conv_features import conv_num_frames, parse_conv_layers, receptive_field_and_stride
from audio_ssl_ext.modules.learner import Learner
from tests.utils import write_untrained_checkpoint

HOP = 160  # the throwaway learner's frame: 160 samples, 100 Hz at 16 kHz


@dataclass
class ThrowawayConfig(FairseqDataclass):
    dim: int = 8


class ThrowawayLearner(Learner, BaseFairseqModel):
    """A learner defined here and nowhere else: non-overlapping 10 ms frames, a linear map, a tanh."""

    sample_rate = 16000
    frame_rate = 16000 / HOP
    first_frame_seconds = HOP / 2 / 16000

    def __init__(self, cfg: ThrowawayConfig):
        super().__init__()
        self.proj = nn.Linear(HOP, cfg.dim)

    @classmethod
    def build_model(cls, cfg, task=None):
        return cls(cfg)

    def num_frames(self, num_samples: int) -> int:
        return num_samples // HOP

    def hidden_states(self, source, lengths):
        frames = int(lengths.max()) // HOP
        first = self.proj(source[:, : frames * HOP].reshape(source.size(0), frames, HOP))
        padding = torch.arange(frames)[None, :] >= (lengths // HOP)[:, None]
        states = [first, torch.tanh(first)] if self.features != "tanh" else [torch.tanh(first)]
        return [h.masked_fill(padding[..., None], 0.0) for h in states]

    features = None

    def select_features(self, features):
        if features not in (None, "tanh"):
            raise ValueError(f"features={features!r}: None or 'tanh'")
        self.features = features

    def utterance_embedding(self, source, lengths):
        frames = self.hidden_states(source, lengths)[-1]
        return frames.sum(1) / (lengths // HOP)[:, None]


if "throwaway_learner" not in MODEL_REGISTRY:  # pytest may import this file twice
    register_model("throwaway_learner", dataclass=ThrowawayConfig)(ThrowawayLearner)


@pytest.fixture(scope="module")
def throwaway_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("throwaway")
    config = folder / "throwaway.yaml"
    config.write_text("task:\n  _name: crop_pretraining\nmodel:\n  _name: throwaway_learner\n  dim: 8\n")
    return write_untrained_checkpoint(str(config), str(folder / "throwaway.pt"), seed=3)


def test_a_new_learner_loads_with_no_edit_in_downstream(throwaway_checkpoint):
    model = load_model(throwaway_checkpoint)
    assert (model.num_layers, model.hidden_dim, model.frame_rate) == (2, 8, 100.0)
    wavs = torch.randn(2, 16000, generator=torch.Generator().manual_seed(0)) * 0.1
    lengths = torch.tensor([16000, 4321])
    out = model.extract_features(wavs, lengths)
    assert out.lengths.tolist() == [100, 27]
    proj = model.model.proj
    for i, n in enumerate(out.lengths.tolist()):
        expected = torch.tanh(proj(wavs[i, : n * HOP].reshape(n, HOP)))
        torch.testing.assert_close(out.hidden_states[1][i, :n], expected)
        assert out.hidden_states[1][i, n:].abs().sum() == 0


def test_a_new_learner_serves_s3prl_and_hear(throwaway_checkpoint):
    upstream = UpstreamExpert(throwaway_checkpoint)
    assert upstream.get_downsample_rates("hidden_states") == HOP
    states = upstream([torch.randn(16000) * 0.1, torch.randn(8000) * 0.1])["hidden_states"]
    assert [tuple(h.shape) for h in states] == [(2, 100, 8)] * 2

    module = hear.load_model(throwaway_checkpoint)
    assert module.timestamp_embedding_size == module.scene_embedding_size == 8
    embeddings, timestamps = hear.get_timestamp_embeddings(torch.randn(3, 8000) * 0.1, module)
    assert embeddings.shape == (3, 50, 8)
    torch.testing.assert_close(timestamps[0, :2], torch.tensor([5.0, 15.0]))  # frame centres, ms
    assert hear.get_scene_embeddings(torch.randn(3, 8000) * 0.1, module).shape == (3, 8)


def test_feature_sets_and_utterance_embedding_reach_every_client(throwaway_checkpoint, tmp_path):
    wavs = torch.randn(2, 8000, generator=torch.Generator().manual_seed(1)) * 0.1
    lengths = torch.tensor([8000, 3200])
    both = load_model(throwaway_checkpoint)
    only_tanh = load_model(throwaway_checkpoint, features="tanh")
    assert (both.num_layers, only_tanh.num_layers) == (2, 1)
    torch.testing.assert_close(only_tanh.extract_features(wavs, lengths).hidden_states[0],
                               both.extract_features(wavs, lengths).hidden_states[1])
    with pytest.raises(ValueError, match="'tanh'"):
        load_model(throwaway_checkpoint, features="spectral")

    utterance = both.utterance_embedding(wavs, lengths)
    expected = torch.stack([torch.tanh(both.model.proj(wavs[i, : n].reshape(-1, HOP))).mean(0)
                            for i, n in enumerate(lengths.tolist())])
    torch.testing.assert_close(utterance, expected)

    module = hear.load_model(throwaway_checkpoint, features="tanh", scene="utterance")
    assert module.model.num_layers == 1
    torch.testing.assert_close(hear.get_scene_embeddings(wavs, module), both.utterance_embedding(wavs))

    assert UpstreamExpert(throwaway_checkpoint, "features=tanh").model.num_layers == 1
    options = tmp_path / "upstream.yaml"
    options.write_text("features: tanh\n")
    assert UpstreamExpert(throwaway_checkpoint, str(options)).model.num_layers == 1
    with pytest.raises(ValueError, match="unknown upstream options"):
        UpstreamExpert(throwaway_checkpoint, "layers=3")


def test_a_learner_with_one_set_refuses_a_feature_choice(tmp_path):
    path = write_untrained_checkpoint(os.path.join(os.path.dirname(__file__), "..", "examples", "music2vec", "tiny.yaml"),
                                      str(tmp_path / "m2v.pt"))
    with pytest.raises(ValueError, match="one set of hidden states"):
        load_model(path, features="other")
    with pytest.raises(ValueError, match="pools no utterance embedding"):
        hear.load_model(path, scene="utterance")


def test_downstream_knows_no_learner_by_name():
    ours = {name for name, cls in MODEL_REGISTRY.items() if cls.__module__.startswith("audio_ssl_ext.")}
    assert {"music2vec", "music_hubert", "mw_mae", "audio_mae", "audio_jepa"} <= ours
    package = os.path.dirname(audio_ssl_ext.__file__)
    for path in glob.glob(os.path.join(package, "downstream", "*.py")) + [os.path.join(package, "hear.py")]:
        text = open(path).read()
        named = sorted(name for name in ours if f'"{name}"' in text or f"'{name}'" in text)
        assert not named, f"{path} names learners {named}"


def test_conv_layers_parse_fairseq_strings_without_eval():
    spec = "[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] * 2"
    assert parse_conv_layers(spec) == tuple(eval(spec))
    assert receptive_field_and_stride(parse_conv_layers(spec)) == (400, 320)
    assert conv_num_frames(16000, parse_conv_layers(spec)) == 49
    assert conv_num_frames(399, parse_conv_layers(spec)) == 0
    for bad in ("__import__('os').getcwd()", "[(512, 10, 5.0)]", "[(512, 10)]", "[]", "[(1, 2, 3)] * 2.0"):
        with pytest.raises(ValueError, match="conv_feature_layers"):
            parse_conv_layers(bad)


class _Plumbed(Learner, BaseFairseqModel):
    def __init__(self, seed):
        super().__init__()
        self.cfg = type("Cfg", (), {"seed": seed})()


def test_mask_streams_depend_on_the_update_in_training_only():
    model = _Plumbed(seed=7).train()
    model.set_num_updates(3)
    assert model.mask_entropy() == (7, 0, 3)
    model.eval()
    assert model.mask_entropy() == (7, 1)
    with pytest.raises(ValueError, match="criterion._name=model_with_sample_ids"):
        model.require_sample_ids(None)


def test_collapse_guard_names_what_collapsed():
    checks = lambda target, pred: [  # noqa: E731
        ("target std", torch.tensor(target), "min_target_var", 0.1),
        ("prediction std", torch.tensor(pred), "min_pred_var", 0.1),
    ]
    check_collapse("m", 5, checks(0.5, 0.5))
    with pytest.raises(CollapseError, match=r"m collapsed at update 5: prediction std 0.05 < model.min_pred_var=0.1"):
        check_collapse("m", 5, checks(0.5, 0.05))
