"""Export (#15): every learner's checkpoint -> a folder whose model, through transformers' AutoModel
in a process where fairseq, hydra, omegaconf and audio_ssl_ext cannot be imported, gives the
hidden states load_model gives on the fairseq checkpoint; load_model, HEAR and s3prl take the
folder; loading it unpickles nothing; the export refuses a model it would get wrong.

Checkpoints are the tiny configs with fresh weights (``write_untrained_checkpoint``), plus
variants that reach the options the tiny configs leave off.
"""

import json
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from audio_ssl_ext.downstream.load import CheckpointError, load_model
from audio_ssl_ext.export import export_checkpoint
from audio_ssl_ext.inference.build import ExportError
from tests.utils import REPO_ROOT, compose_example_config, run_fairseq_hydra_train, write_untrained_checkpoint

pytest.importorskip("transformers")

# name -> (config, overrides)
CASES = {
    "music_hubert": ("examples/musichubert/tiny.yaml", []),
    "music2vec": ("examples/music2vec/tiny.yaml", []),  # layer-normed convs, 5 stacked positional convs
    "jooci": ("examples/jooci/tiny.yaml", []),
    "mw_mae": ("examples/mwmae/tiny.yaml", []),
    "mw_mae_windowed_encoder": ("examples/mwmae/tiny.yaml", ["model.encoder_window_sizes=[5,25,0,0]"]),
    "audio_mae": ("examples/mwmae/mae_tiny.yaml", []),  # CLS token, trainable positions
    "audio_jepa": ("examples/audiojepa/tiny.yaml", []),
    "audio_jepa_dataset_norm": ("examples/audiojepa/tiny.yaml", [
        "model.normalization=dataset", "model.norm_mean=-5.5", "model.norm_std=3.25", "model.chunk_padding=reflect"]),
    "wav2vec2": ("examples/wav2vec2/tiny.yaml", []),  # fairseq's own model, group-norm extractor
}
# Three items of different lengths in one padded batch: long enough for two extraction chunks of
# the patch models, one item shorter than one chunk.
LENGTHS = [36_000, 21_111, 7_000]

# A process that cannot import fairseq, hydra, omegaconf nor this package: the exported folders
# alone, through transformers.
HF_RUN = textwrap.dedent("""
    import json, sys
    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split('.')[0] in ('fairseq', 'hydra', 'omegaconf', 'audio_ssl_ext'):
                raise ImportError(f'{name} is blocked in this test')
    sys.meta_path.insert(0, Blocker())
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoFeatureExtractor, AutoModel
    folders, inputs, out_dir = json.loads(sys.argv[1]), load_file(sys.argv[2]), sys.argv[3]
    wavs = [inputs[f'wav{i}'].numpy() for i in range(len(inputs))]
    for name, folder in folders.items():
        model = AutoModel.from_pretrained(folder, trust_remote_code=True)
        extractor = AutoFeatureExtractor.from_pretrained(folder)
        batch = extractor(wavs, sampling_rate=model.config.sample_rate, padding=True, return_tensors='pt')
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
        save_file({f'h{i}': h.contiguous() for i, h in enumerate(out.hidden_states)}, f'{out_dir}/{name}.safetensors')
    loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('fairseq', 'hydra', 'omegaconf', 'audio_ssl_ext'))
    print(json.dumps(loaded))
""")


def waveforms():
    generator = torch.Generator().manual_seed(3)
    return [torch.randn(n, generator=generator) * 0.1 for n in LENGTHS]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (checkpoint, folder)."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for name, (config, overrides) in CASES.items():
        checkpoint = write_untrained_checkpoint(
            os.path.join(REPO_ROOT, config), str(root / f"{name}.pt"), seed=1, overrides=overrides, num_label_classes=20
        )
        folder = str(root / name)
        export_checkpoint(checkpoint, folder)
        out[name] = (checkpoint, folder)
    return out


def run_through_transformers(folders, work):
    """name -> hidden states from AutoModel in a process without fairseq (one process for all)."""
    from safetensors.torch import load_file, save_file

    inputs = str(work / "inputs.safetensors")
    save_file({f"wav{i}": w for i, w in enumerate(waveforms())}, inputs)
    env = dict(os.environ, HF_MODULES_CACHE=str(work / "modules"), USE_TF="0", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", HF_RUN, json.dumps(folders), inputs, str(work)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=str(work))
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []  # nothing of fairseq, hydra, omegaconf, ours
    return {name: [h for _, h in sorted(load_file(str(work / f"{name}.safetensors")).items(), key=lambda kv: int(kv[0][1:]))]
            for name in folders}


@pytest.fixture(scope="module")
def through_transformers(exported, tmp_path_factory):
    return run_through_transformers({name: folder for name, (_, folder) in exported.items()}, tmp_path_factory.mktemp("hf"))


def reference_states(checkpoint, **kwargs):
    out = load_model(checkpoint, **kwargs).extract_features(waveforms())
    return out.hidden_states, out.lengths


def assert_same_states(name, ours, expected, lengths):
    assert len(ours) == len(expected) >= 2
    assert len({int(n) for n in lengths}) == 3  # three lengths, two of them padded in the batch
    for layer, (a, b) in enumerate(zip(ours, expected)):
        assert a.shape == b.shape, f"{name} hidden state {layer}"
        difference = (a - b).abs().max().item()
        assert difference < 1e-5, f"{name} hidden state {layer}: max abs difference {difference:.3g}"
        for i, frames in enumerate(lengths.tolist()):
            assert a[i, frames:].abs().sum() == 0  # zeros past each item's frames


@pytest.mark.parametrize("name", sorted(CASES))
def test_automodel_hidden_states_equal_load_models_on_the_checkpoint(name, exported, through_transformers):
    checkpoint, _ = exported[name]
    assert_same_states(name, through_transformers[name], *reference_states(checkpoint))


@pytest.mark.smoke
def test_a_trained_checkpoint(demo_manifest_dir, tmp_path):
    """A few updates of fairseq-hydra-train (weights away from their initialisation, the teacher
    stepped, an optimizer in the file): the folder through AutoModel equals the checkpoint, and
    the card states the updates."""
    run_fairseq_hydra_train(
        os.path.join(REPO_ROOT, "examples", "music2vec"), "tiny",
        [f"task.data={demo_manifest_dir}", f"checkpoint.save_dir={tmp_path / 'run'}",
         "common.tensorboard_logdir=null", "optimization.max_update=16"],
    )
    checkpoint = str(tmp_path / "run" / "checkpoint_last.pt")
    config = export_checkpoint(checkpoint, str(tmp_path / "exported"))
    assert config["updates"] == 16 and "| updates | 16 |" in (tmp_path / "exported" / "README.md").read_text()
    states = run_through_transformers({"trained": str(tmp_path / "exported")}, tmp_path)["trained"]
    assert_same_states("trained music2vec", states, *reference_states(checkpoint))


@pytest.mark.parametrize("name", sorted(CASES))
def test_load_model_takes_the_folder(name, exported):
    checkpoint, folder = exported[name]
    config = json.load(open(os.path.join(folder, "config.json")))
    model = load_model(folder)
    reference = load_model(checkpoint)
    assert (model.sample_rate, model.frame_rate, model.num_layers, model.hidden_dim) == (
        reference.sample_rate, reference.frame_rate, reference.num_layers, reference.hidden_dim)
    assert len(config["hidden_state_names"]) == model.num_layers
    ours, theirs = model.extract_features(waveforms()), reference.extract_features(waveforms())
    for a, b in zip(ours.hidden_states, theirs.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    # Weights only: no optimizer, no teacher, no pre-training heads.
    from safetensors.torch import load_file

    names = set(load_file(os.path.join(folder, "model.safetensors")))
    assert not any(n.startswith(("_teacher.", "decoder", "predictor", "final_proj", "label_embs", "other.head")) for n in names)
    assert config["num_parameters"] == sum(p.numel() for p in model.model.parameters())


def test_load_model_on_a_folder_needs_no_fairseq(exported):
    """In the package itself: load_model on an exported folder (waveform, JOOCI, spectrogram)
    imports neither fairseq, hydra nor omegaconf, and gives what it gives where they can be."""
    wavs = [torch.zeros(16000), torch.ones(8000) * 0.1]
    expected = [(exported[name][1], tuple(load_model(exported[name][1]).extract_features(wavs).hidden_states[0].shape))
                for name in ("music2vec", "jooci", "audio_mae", "audio_jepa")]
    code = textwrap.dedent(f"""
        import sys
        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('fairseq', 'hydra', 'omegaconf'):
                    raise ImportError(f'{{name}} is blocked in this test')
        sys.meta_path.insert(0, Blocker())
        import torch, audio_ssl_ext
        for folder, shape in {expected!r}:
            out = audio_ssl_ext.load_model(folder).extract_features([torch.zeros(16000), torch.ones(8000) * 0.1])
            assert tuple(out.hidden_states[0].shape) == shape, (folder, out.hidden_states[0].shape)
        print('ok')
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_jooci_feature_sets_and_utterance_embedding(exported):
    checkpoint, folder = exported["jooci"]
    for features in ("content", "other"):
        ours = load_model(folder, features=features).extract_features(waveforms())
        theirs = load_model(checkpoint, features=features).extract_features(waveforms())
        assert len(ours.hidden_states) == len(theirs.hidden_states)
        for a, b in zip(ours.hidden_states, theirs.hidden_states):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        load_model(folder).utterance_embedding(waveforms()), load_model(checkpoint).utterance_embedding(waveforms()),
        atol=1e-5, rtol=0,
    )


def test_an_export_with_another_default_feature_set(exported, tmp_path):
    checkpoint, _ = exported["jooci"]
    config = export_checkpoint(checkpoint, str(tmp_path / "content"), features="content")
    assert config["features"] == "content"
    layers = load_model(checkpoint, features="content").num_layers - 1
    assert config["hidden_state_names"] == ["encoder input"] + [f"layer {i + 1}" for i in range(layers)]
    assert load_model(str(tmp_path / "content")).num_layers == layers + 1


def test_hear_and_s3prl_take_the_folder(exported):
    from audio_ssl_ext import hear
    from audio_ssl_ext.downstream.s3prl import UpstreamExpert

    checkpoint, folder = exported["music2vec"]
    audio = torch.stack([w[:16000] for w in waveforms()[:2]])
    ours = hear.get_timestamp_embeddings(audio, hear.load_model(folder))
    theirs = hear.get_timestamp_embeddings(audio, hear.load_model(checkpoint))
    torch.testing.assert_close(ours[0], theirs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours[1], theirs[1])
    upstream = UpstreamExpert(folder)
    states = upstream([w[:16000] for w in waveforms()])["hidden_states"]
    reference = UpstreamExpert(checkpoint)([w[:16000] for w in waveforms()])["hidden_states"]
    for a, b in zip(states, reference):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_loading_a_folder_unpickles_nothing(exported, monkeypatch):
    _, folder = exported["jooci"]

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    class RefusingUnpickler:
        def __init__(self, *args, **kwargs):
            refuse()

    for module, name, value in ((pickle, "load", refuse), (pickle, "loads", refuse), (torch, "load", refuse),
                                (pickle, "Unpickler", RefusingUnpickler)):
        monkeypatch.setattr(module, name, value)
    assert load_model(folder).num_layers == 4
    with pytest.raises(Exception, match="unpickled"):  # the check can fail: a checkpoint is a pickle
        load_model(exported["jooci"][0])


def test_folder_contents_card_and_preprocessor(exported):
    _, folder = exported["audio_jepa_dataset_norm"]
    names = set(os.listdir(folder))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md",
            "modeling_audio_ssl.py", "configuration_audio_ssl.py"} <= names
    assert not any(n.endswith((".pt", ".pkl", ".bin")) for n in names)
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["auto_map"]["AutoModel"] == "modeling_audio_ssl.AudioSslModel"
    assert config["frontend"]["normalization"] == "dataset"
    assert (config["frontend"]["norm_mean"], config["frontend"]["norm_std"]) == (-5.5, 3.25)
    assert config["sample_rate"] == 16000 and config["frame_rate"] == 100 / 16
    preprocessor = json.load(open(os.path.join(folder, "preprocessor_config.json")))
    assert preprocessor["feature_extractor_type"] == "Wav2Vec2FeatureExtractor" and not preprocessor["do_normalize"]
    card = open(os.path.join(folder, "README.md")).read()
    assert "audio_jepa" in card and "trust_remote_code=True" in card and f"{config['num_parameters']:,}" in card
    # No file of the folder imports fairseq, hydra or omegaconf.
    for name in names:
        if name.endswith(".py"):
            text = open(os.path.join(folder, name)).read()
            assert "import fairseq" not in text and "from fairseq" not in text and "omegaconf" not in text.split('"""')[-1], name


def test_teacher_only_when_asked(exported, tmp_path):
    from safetensors.torch import load_file

    checkpoint, folder = exported["music2vec"]
    assert "teacher.safetensors" not in os.listdir(folder)
    export_checkpoint(checkpoint, str(tmp_path / "with_teacher"), teacher=True)
    teacher = load_file(str(tmp_path / "with_teacher" / "teacher.safetensors"))
    saved = torch.load(checkpoint, weights_only=False)["model"]
    expected = {k[len("_teacher."):]: v for k, v in saved.items() if k.startswith("_teacher.")}
    assert expected and set(teacher) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(teacher[key], value.float())
    with pytest.raises(ExportError, match="keeps no teacher"):
        export_checkpoint(exported["music_hubert"][0], str(tmp_path / "no_teacher"), teacher=True)
    # --overwrite replaces the folder: no teacher left over from the first export
    export_checkpoint(checkpoint, str(tmp_path / "with_teacher"), overwrite=True)
    assert "teacher.safetensors" not in os.listdir(tmp_path / "with_teacher")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export")]


def test_automodel_refuses_a_left_padded_attention_mask(exported):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(exported["music2vec"][1], trust_remote_code=True)
    wavs = torch.randn(2, 8000) * 0.1
    mask = torch.ones(2, 8000, dtype=torch.long)
    mask[1, 6000:] = 0  # right padding: fine
    assert model(wavs, attention_mask=mask, output_hidden_states=True).hidden_states[0].shape[0] == 2
    with pytest.raises(ValueError, match="only right padding"):
        model(wavs, attention_mask=mask.flip(-1))


def test_the_export_refuses_a_module_that_no_longer_matches(exported, tmp_path, monkeypatch):
    from audio_ssl_ext.inference import waveform

    monkeypatch.setitem(waveform.ACTIVATIONS, "gelu", torch.relu)
    with pytest.raises(ExportError, match="differ from the checkpoint's"):
        export_checkpoint(exported["music_hubert"][0], str(tmp_path / "wrong"))
    assert not (tmp_path / "wrong").exists()  # nothing half-written


def test_command_line(exported, tmp_path, capsys):
    from audio_ssl_ext.export.__main__ import main

    checkpoint, _ = exported["mw_mae"]
    assert main([checkpoint, str(tmp_path / "cli")]) == 0
    assert "mw_mae" in capsys.readouterr().out and (tmp_path / "cli" / "model.safetensors").is_file()
    assert main([checkpoint, str(tmp_path / "cli")]) == 1  # not empty
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([checkpoint, str(tmp_path / "cli2"), "--task", "no_equals_sign"])


def test_refusals_name_the_folder(exported, tmp_path):
    checkpoint, folder = exported["music_hubert"]
    with pytest.raises(ExportError, match="not empty"):
        export_checkpoint(checkpoint, folder)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(folder):
        (broken / name).write_bytes(open(os.path.join(folder, name), "rb").read())
    config = json.load(open(broken / "config.json"))
    config["model"]["encoder_layers"] += 1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="do not match"):
        load_model(str(broken))
    os.remove(broken / "model.safetensors")
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(str(broken))
    with pytest.raises(CheckpointError, match="random_init"):
        load_model(folder, random_init=True)


# Parameters of the exported encoder of each base config (what the root README states).
BASE_PARAMETERS = {
    ("musichubert", "base"): 94_370_944,
    ("music2vec", "base"): 93_163_520,
    ("mwmae", "base"): 85_297_920,
    ("mwmae", "mae_base"): 85_299_456,  # + the CLS token and its position
    ("audiojepa", "base"): 85_253_376,  # fixed positions; 16 x 16 patches
    ("jooci", "base"): 108_981_104,  # the recipe's 108,981,872 for features less HuBERT's unused mask_emb
}


@pytest.mark.parametrize("learner,config", sorted(BASE_PARAMETERS))
def test_base_config_parameter_counts(learner, config):
    """The exported model of each base config, built on the meta device from the composed config
    as the export builds it (``tests/test_export`` exports the tiny ones end to end)."""
    from omegaconf import OmegaConf

    from audio_ssl_ext.inference.build import build_model

    family = {"jooci": "jooci", "musichubert": "waveform", "music2vec": "waveform"}.get(learner, "spectrogram")
    overrides = ["task.data=unused"] + (["++task.label_dir=unused"] if family != "spectrogram" else [])
    cfg = compose_example_config(learner, config, overrides)
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True, enum_to_str=True)
    if family == "spectrogram":
        model_cfg["encoder_attention_windows"] = None  # every base config's encoder is global
    with torch.device("meta"):
        model = build_model({"family": family, "model": model_cfg, "task": task_cfg})
    count = sum(p.numel() for p in model.parameters())
    assert count == BASE_PARAMETERS[(learner, config)]


def test_an_overwrite_that_fails_at_the_last_rename_keeps_the_previous_export(exported, tmp_path, monkeypatch):
    import audio_ssl_ext.export as export

    out = tmp_path / "out"
    export_checkpoint(exported["music2vec"][0], str(out))
    before = sorted(os.listdir(out))
    real_replace = os.replace

    def fail_into_out(src, dst):
        if dst == str(out) and os.path.basename(src).startswith(".export."):
            raise OSError("simulated")
        real_replace(src, dst)

    monkeypatch.setattr(export.os, "replace", fail_into_out)
    with pytest.raises(OSError, match="simulated"):
        export_checkpoint(exported["music2vec"][0], str(out), overwrite=True)
    assert sorted(os.listdir(out)) == before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".export")]
