"""The small-scale study (audio_ssl_ext/tools/study.py, scripts/study.py): verdicts from intervals,
the music corpus's separation from the evaluation test split, and the whole pipeline in micro mode."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from audio_ssl_ext.tools import study
from audio_ssl_ext.tools.eval_tasks import TEST_SOUNDFONT, TRAIN_SOUNDFONT
from audio_ssl_ext.tools.music_corpus import EVAL_PROGRAMS, MusicCorpusError, check_separation, compose
from tests.utils import REPO_ROOT


def fake_results(table, seeds=5):
    """probe.json's shape from {model: {task: (mean, ci95)}}, ``seeds`` classifier runs each."""
    tasks = sorted({t for row in table.values() for t in row})
    return {"models": list(table), "tasks": {t: {m: {"test_mean": table[m][t][0], "test_ci95": table[m][t][1],
                                                     "runs": [{"test": table[m][t][0]}] * seeds}
                                              for m in table} for t in tasks}}


def test_claim_verdicts_from_intervals():
    results = fake_results({
        "mwmae": {"instrument_family": (0.60, 0.05), "pitch": (0.50, 0.02), "spoken_digit": (0.30, 0.10)},
        "mae": {"instrument_family": (0.40, 0.05), "pitch": (0.50, 0.02), "spoken_digit": (0.25, 0.10)},
        "mwmae_10pct": {"instrument_family": (0.30, 0.01), "pitch": (0.40, 0.05), "spoken_digit": (0.20, 0.0)},
        # instrument_family: [0.31, 0.33] vs [0.29, 0.31]: touching at 0.31 is overlap; pitch: below
        "mae_10pct": {"instrument_family": (0.32, 0.01), "pitch": (0.60, 0.05), "spoken_digit": (0.20, 0.0)},
        "music2vec": {"instrument_family": (0.50, 0.01), "pitch": (0.90, 0.01), "spoken_digit": (0.10, 0.0)},
        "musichubert/iter2": {"instrument_family": (0.40, 0.01), "pitch": (0.95, 0.01), "spoken_digit": (0.90, 0.0)},
    })
    verdicts = {c.name: study.claim_verdict(results, c) for c in study.CLAIMS}
    assert verdicts["mwmae_vs_mae"]["tasks"] == {
        "instrument_family": study.HOLDS, "pitch": study.NOISE, "spoken_digit": study.NOISE}
    assert verdicts["mwmae_vs_mae"]["verdict"] == study.HOLDS
    assert verdicts["mwmae_vs_mae_10pct"]["tasks"] == {
        "instrument_family": study.NOISE, "pitch": study.DOES_NOT_HOLD, "spoken_digit": study.NOISE}
    assert verdicts["mwmae_vs_mae_10pct"]["verdict"] == study.DOES_NOT_HOLD
    # music tasks only: spoken_digit (where musicHuBERT is far ahead) does not count
    assert set(verdicts["music2vec_vs_musichubert"]["tasks"]) == {"instrument_family", "pitch"}
    assert verdicts["music2vec_vs_musichubert"]["verdict"] == study.MIXED
    assert verdicts["jepa_unstructured_vs_time"]["verdict"] == study.NOT_RUN
    results["tasks"]["pitch"]["mwmae"]["test_ci95"] = 0.0
    results["tasks"]["instrument_family"]["mwmae"]["test_mean"] = 0.45  # [0.40, 0.50] vs [0.35, 0.45]
    assert study.claim_verdict(results, study.CLAIMS[3])["verdict"] == study.NOISE


def test_one_seed_gives_no_interval_so_no_verdict():
    """The probe gives a single seed a half-width of 0: any difference would then look real."""
    table = {"a": {"t1": (0.9, 0.0)}, "a (random init)": {"t1": (0.1, 0.0)}}
    assert study.compare(fake_results(table, seeds=2), "a", "a (random init)", "t1") == study.HOLDS
    results = fake_results(table, seeds=1)
    assert study.compare(results, "a", "a (random init)", "t1") == study.NOISE
    assert not study.bar_verdict(results, "a", "a (random init)")["passes"]


def test_the_bar_counts_tasks_above_the_twin():
    twin = study.twin_name("musichubert/iter2")
    assert twin == "musichubert (random init)" == study.twin_name("musichubert/iter1")
    results = fake_results({
        "a": {"t1": (0.6, 0.05), "t2": (0.6, 0.05), "t3": (0.5, 0.2)},
        "a (random init)": {"t1": (0.4, 0.05), "t2": (0.54, 0.05), "t3": (0.4, 0.01)},
    })
    row = study.bar_verdict(results, "a", "a (random init)")
    assert row["tasks_above"] == ["t1"] and not row["passes"]
    results["tasks"]["t2"]["a (random init)"]["test_mean"] = 0.49
    row = study.bar_verdict(results, "a", "a (random init)")
    assert row["tasks_above"] == ["t1", "t2"] and row["passes"]


def test_claims_name_runs_of_the_study():
    for claim in study.CLAIMS:
        assert {claim.a, claim.b} <= set(study.ALL_NAMES), claim.name
    families = {r.family for r in study.MAIN_RUNS + study.VARIANT_RUNS} | {"musichubert"}
    for mode in study.MODES.values():
        assert set(mode.updates) == families == set(study.SMALL), mode.name


def test_music_corpus_keeps_the_test_split_sources_out(tmp_path):
    for i in range(200):
        piece = compose(np.random.default_rng([0, i]), TEST_SOUNDFONT, 4.0)
        assert {piece.melody_program, piece.chord_program}.isdisjoint(EVAL_PROGRAMS)
        assert all(ms <= 3700 for ms, _ in piece.events)  # every note ends 0.3 s before the clip does
    assert EVAL_PROGRAMS == set(range(80)) - {46, 47, 55}
    rows = ["file\tsoundfont\tmelody_program\tchord_program\tdrums\ttempo\tkey",
            f"wavs/a.wav\t{TRAIN_SOUNDFONT}\t3\t5\t1\t100.0\t50",
            f"wavs/b.wav\t{TEST_SOUNDFONT}\t81\t90\t0\t100.0\t50"]
    (tmp_path / "clips.tsv").write_text("\n".join(rows) + "\n")
    check_separation(str(tmp_path))
    rows.append(f"wavs/c.wav\t{TEST_SOUNDFONT}\t100\t12\t0\t100.0\t50")
    (tmp_path / "clips.tsv").write_text("\n".join(rows) + "\n")
    with pytest.raises(MusicCorpusError, match=r"clips.tsv:4: wavs/c.wav plays program\(s\) \[12\]"):
        check_separation(str(tmp_path))


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("fluidsynth") is None or shutil.which("flite") is None,
                    reason="needs fluidsynth and flite (make setup-eval)")
def test_micro_study_end_to_end(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "scripts", "study.py"), str(out), "--micro",
                           "--only", "mwmae", "mae", "mae_10pct", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("mwmae", "mae", "mae_10pct"):
        assert (out / name / "checkpoints" / "checkpoint_last.pt").is_file()
        record = json.loads((out / name / "run.json").read_text())
        assert "model.encoder_embed_dim=192" in record["command"]  # the small size
    train = (out / "manifests" / "music" / "train.tsv").read_text().splitlines()[1:]
    subset = (out / "manifests" / "music_10pct" / "train.tsv").read_text().splitlines()[1:]
    assert subset == train[::10]
    report = json.loads((out / "report.json").read_text())
    models = ["mwmae", "mae", "mae_10pct", "mwmae (random init)", "mae (random init)", "log-mel stats"]
    assert sorted(report["probe"]["models"]) == sorted(models)  # mae_10pct shares mae's twin
    assert set(report["probe"]["tasks"]) == {"instrument_family", "pitch", "spoken_digit"}
    table = (out / "report.md").read_text()
    for model in models:
        assert f"| {model} |" in table
    assert (out / "report.png").stat().st_size > 0
    # the claim line is the JSON's numbers compared by hand
    claim = next(c for c in report["claims"] if c["a"] == "mwmae" and c["b"] == "mae")
    for task, verdict in claim["tasks"].items():
        a, b = (report["probe"]["tasks"][task][m] for m in ("mwmae", "mae"))
        one_seed = len(a["runs"]) < 2 or len(b["runs"]) < 2  # micro: one seed, no interval
        expected = (study.NOISE if one_seed else study.HOLDS if a["test_mean"] - a["test_ci95"] > b["test_mean"] + b["test_ci95"]
                    else study.DOES_NOT_HOLD if b["test_mean"] - b["test_ci95"] > a["test_mean"] + a["test_ci95"]
                    else study.NOISE)
        assert verdict == expected, task
    assert f"| {claim['claim']} | mwmae vs mae |" in table
    assert {row["model"] for row in report["bar"]} == {"mwmae", "mae"}
    assert os.path.isfile(out / "study.log")


@pytest.mark.parametrize("family", sorted(study.SMALL))
def test_the_gpu_modes_larger_small_composes_and_builds(family):
    """--gpu's size goes after SMALL's on each tiny config: the encoder it describes builds (on the
    meta device, as the export builds it) at twice small's width."""
    from omegaconf import OmegaConf

    from audio_ssl_ext.inference.build import build_model
    from tests.utils import compose_example_config

    runs = {r.family: r for r in study.MAIN_RUNS}
    run = runs.get(family, study.Run("musichubert", "musichubert", "musichubert", "tiny"))
    small, gpu = (study.size_overrides(study.MODES[m], family) for m in ("full", "gpu"))
    kind = {"jooci": "jooci", "musichubert": "waveform", "music2vec": "waveform"}.get(family, "spectrogram")
    overrides = ["task.data=unused"] + (["++task.label_dir=unused"] if kind != "spectrogram" else [])
    widths = {}
    for name, size in (("small", small), ("gpu", gpu)):
        cfg = compose_example_config(run.config_dir, run.config_name, overrides + size)
        with torch.device("meta"):
            model = build_model({"family": kind, "model": OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True),
                                 "task": OmegaConf.to_container(cfg.task, resolve=True, enum_to_str=True)})
        widths[name] = (cfg.model.encoder_embed_dim, sum(p.numel() for p in model.parameters()))
    assert widths["small"][0] == 192 and widths["gpu"][0] == 384, widths
    assert widths["gpu"][1] > 4 * widths["small"][1], widths


def test_the_gpu_mode_refuses_a_machine_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    with pytest.raises(study.StudyError, match="the gpu mode trains on a CUDA GPU, and torch sees none here"):
        study.Study(str(tmp_path), study.MODES["gpu"], "unused")


def test_updates_scale_lengthens_every_run_and_its_schedules():
    longer = study.scaled(study.MODES["full"], 4)
    assert longer.name == "full, updates x4" and longer.updates["mwmae"] == 6000 and longer.updates["musichubert"] == 1600
    overrides = study.size_overrides(longer, "music2vec")
    assert "optimization.max_update=2000" in overrides and "model.ema_anneal_end_step=2000" in overrides
    assert "lr_scheduler.warmup_updates=600" in study.size_overrides(longer, "mwmae")
    assert study.scaled(study.MODES["full"], 1) is study.MODES["full"]
    with pytest.raises(study.StudyError, match="--updates-scale 0: must be above 0"):
        study.scaled(study.MODES["full"], 0)
