"""The small-scale study (``make study``, ``scripts/study.py``): pretrain every learner at a
``small`` size on an offline corpus, probe each checkpoint next to its random-init twin and the
log-mel baseline, and report per learner whether it learned something (the bar) and, for each
seed paper's headline comparison the small scale can speak to, whether its direction holds.

Layout under the study folder (``STUDY_DIR``, default ``study/``)::

    corpus/music/      wavs/<soundfont>/*.wav + clips.tsv (music_corpus.py)
    corpus/speech/     wavs/<speaker>/*.wav + utterances.tsv (speech_corpus.py, no flite voice)
    manifests/{music,music_10pct,speech}/{train,valid}.tsv
    eval_tasks/<task>/ HEAR-format tasks (eval_tasks.py)
    <name>/checkpoints/checkpoint_last.pt, <name>/train.log, <name>/tb/, <name>/run.json
    musichubert/iter{1,2}/...   the HuBERT iterations (clustering/iterations.py's layout)
    probe/probe.{json,md,png}   the probe's own outputs
    report.md, report.json, report.png, study.log

**Why ``small`` is a set of overrides here and not an overlay in ``examples/``.** It is the
study's size, chosen for its budget (each main run under 15 minutes on 2 CPU cores) and scaled
with its modes; it applies to six configs (five ``tiny.yaml`` and ``mae_tiny.yaml``) whose keys
differ by family, so one table here says it once, next to the budget it answers to, while an
overlay would repeat it in five recipe folders. The overrides go on each learner's ``tiny.yaml``
(losses and schedules as the tiny recipe; width, depth, batch, music2vec's crop and the updates
change) and
are written to each run's ``run.json`` with the whole command.
"""

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

MUSIC_TASKS = ("instrument_family", "pitch")
HOLDS, DOES_NOT_HOLD, NOISE, MIXED, NOT_RUN = "holds", "does not hold", "inside the noise", "mixed", "not run"
BAR_TASKS = 2  # the bar: non-overlapping 95% intervals above the random-init twin on this many tasks

# --- the small size: overrides on each learner's tiny.yaml ------------------------------------
CONV_SMALL = "[(128, 10, 5), (128, 8, 4), (128, 4, 4), (128, 4, 4)]"  # tiny's 320x strides, 4x the channels
WAVEFORM_SMALL = [
    "model.encoder_layers=4", "model.encoder_embed_dim=192", "model.encoder_ffn_embed_dim=768",
    "model.encoder_attention_heads=4", f"model.conv_feature_layers='{CONV_SMALL}'", "model.conv_pos=32",
    "dataset.max_tokens=256000",  # 8 crops of 2 s
]
SPECTROGRAM_SMALL = [
    "model.encoder_embed_dim=192", "model.encoder_layers=4", "model.encoder_attention_heads=4",
    "dataset.batch_size=16",
]
SMALL: Dict[str, List[str]] = {
    "musichubert": WAVEFORM_SMALL + ["model.final_dim=64"],
    # 2 s crops as musicHuBERT (tiny: 1 s); data2vec's base rate: tiny's 1e-3, held for 80% of the
    # schedule, made the loss jump back during the hold (0.51 at update 200, 2.41 at 320)
    "music2vec": WAVEFORM_SMALL + ["task.max_sample_size=32000", "optimization.lr=[0.0005]"],
    # one Content layer group per Other block (other_dilations: 3 blocks): 3 layers, not 4
    "jooci": [o for o in WAVEFORM_SMALL if not o.startswith("model.encoder_layers=")]
    + ["model.encoder_layers=3", "model.final_dim=64"],
    "mwmae": SPECTROGRAM_SMALL + ["model.decoder_embed_dim=96", "model.decoder_layers=2"],
    "mae": SPECTROGRAM_SMALL + ["model.decoder_embed_dim=96", "model.decoder_layers=2"],
    # lr: tiny's 2e-3 left the features below the random init's on every task's valid split; 5e-4
    # is above 2e-3's on all three (chosen on the valid split, tools/README.md#the-full-study)
    "audiojepa": SPECTROGRAM_SMALL + ["model.predictor_embed_dim=96", "model.predictor_layers=2",
                                      "model.predictor_attention_heads=4", "optimization.lr=[0.0005]"],
}
# The GPU's larger small (--gpu): twice the width and 1.5x the depth, twice the channels and batch;
# appended to SMALL's overrides (the later value of a key wins).
CONV_GPU = "[(256, 10, 5), (256, 8, 4), (256, 4, 4), (256, 4, 4)]"
WAVEFORM_GPU = [
    "model.encoder_layers=6", "model.encoder_embed_dim=384", "model.encoder_ffn_embed_dim=1536",
    "model.encoder_attention_heads=6", f"model.conv_feature_layers='{CONV_GPU}'", "model.conv_pos=64",
    "dataset.max_tokens=512000",  # 16 crops of 2 s
]
SPECTROGRAM_GPU = ["model.encoder_embed_dim=384", "model.encoder_layers=6", "model.encoder_attention_heads=6",
                   "dataset.batch_size=64"]
GPU_SIZE: Dict[str, List[str]] = {
    "musichubert": WAVEFORM_GPU,
    "music2vec": WAVEFORM_GPU,
    "jooci": [o for o in WAVEFORM_GPU if not o.startswith("model.encoder_layers=")] + ["model.encoder_layers=3"],
    "mwmae": SPECTROGRAM_GPU + ["model.decoder_embed_dim=192", "model.decoder_layers=2"],
    "mae": SPECTROGRAM_GPU + ["model.decoder_embed_dim=192", "model.decoder_layers=2"],
    "audiojepa": SPECTROGRAM_GPU + ["model.predictor_embed_dim=192", "model.predictor_layers=2",
                                    "model.predictor_attention_heads=6"],
}


@dataclass(frozen=True)
class Run:
    name: str  # its folder under the study dir, its row in the report
    family: str  # key of SMALL and of Mode.updates
    config_dir: str  # under examples/
    config_name: str
    corpus: str = "music"  # music, music_10pct, speech
    overrides: Tuple[str, ...] = ()  # what makes it a variant
    twin: Optional[str] = None  # the main run whose random-init twin it shares (same architecture)


MAIN_RUNS = (  # musichubert is two runs, musichubert/iter1 and /iter2 (clustering/iterations.py)
    Run("music2vec", "music2vec", "music2vec", "tiny"),
    Run("mwmae", "mwmae", "mwmae", "tiny"),
    Run("mae", "mae", "mwmae", "mae_tiny"),
    Run("audiojepa", "audiojepa", "audiojepa", "tiny"),
    Run("jooci", "jooci", "jooci", "tiny"),  # on musichubert/iter2's labels, as make demo
)
VARIANT_RUNS = (
    Run("audiojepa_multi_block", "audiojepa", "audiojepa", "tiny", overrides=("+variant=multi_block",), twin="audiojepa"),
    Run("audiojepa_time", "audiojepa", "audiojepa", "tiny", overrides=("+variant=time",), twin="audiojepa"),
    Run("audiojepa_latent", "audiojepa", "audiojepa", "tiny", overrides=("+variant=latent",), twin="audiojepa"),
    Run("mwmae_10pct", "mwmae", "mwmae", "tiny", corpus="music_10pct", twin="mwmae"),
    Run("mae_10pct", "mae", "mwmae", "mae_tiny", corpus="music_10pct", twin="mae"),
    Run("music2vec_speech", "music2vec", "music2vec", "tiny", corpus="speech", twin="music2vec"),
)
HUBERT_RUNS = ("musichubert/iter1", "musichubert/iter2")  # MFCC labels, then layer-feature labels
MAIN_NAMES = ("musichubert/iter2", "music2vec", "mwmae", "mae", "audiojepa", "jooci")  # the bar's rows
ALL_NAMES = HUBERT_RUNS + tuple(r.name for r in MAIN_RUNS + VARIANT_RUNS)


@dataclass(frozen=True)
class Claim:
    name: str
    text: str  # the paper's direction, "a beats b"
    a: str
    b: str
    tasks: Optional[Tuple[str, ...]] = None  # None: every task


CLAIMS = (
    Claim("jepa_unstructured_vs_multi_block", "Audio-JEPA: unstructured masking beats multi-block (Audio-JEPA paper)",
          "audiojepa", "audiojepa_multi_block"),
    Claim("jepa_unstructured_vs_time", "Audio-JEPA: unstructured masking beats time masking (Audio-JEPA paper)",
          "audiojepa", "audiojepa_time"),
    Claim("jepa_audio_vs_latent", "Audio-JEPA: audio-domain targets beat latent-domain targets (Audio-JEPA paper)",
          "audiojepa", "audiojepa_latent"),
    Claim("mwmae_vs_mae", "MW-MAE beats MAE at equal size (MW-MAE paper)", "mwmae", "mae"),
    Claim("mwmae_vs_mae_10pct", "MW-MAE beats MAE with 10% of the data (MW-MAE paper)", "mwmae_10pct", "mae_10pct"),
    Claim("music2vec_vs_musichubert", "music2vec beats musicHuBERT on music tasks (arXiv 2307.05161)",
          "music2vec", "musichubert/iter2", MUSIC_TASKS),
    Claim("hubert_layer_vs_mfcc_labels", "musicHuBERT: layer-feature labels beat MFCC labels (HuBERT's iteration)",
          "musichubert/iter2", "musichubert/iter1"),
    Claim("music_vs_speech_pretraining", "music pretraining beats speech pretraining on music tasks "
          "(music2vec, arXiv 2307.05161)", "music2vec", "music2vec_speech", MUSIC_TASKS),
)


@dataclass
class Mode:
    name: str
    music_clips: int
    clip_seconds: float
    updates: Dict[str, int]  # per family
    seeds: int  # probe classifier seeds
    eval_pitches: Tuple[int, ...]
    eval_programs_per_family: Optional[int]  # None: all
    digit_rates: Tuple[float, ...]
    digit_f0_steps: int
    clusters: List[int] = field(default_factory=lambda: [100, 500])
    probe_max_epochs: int = 500
    size: Dict[str, List[str]] = field(default_factory=dict)  # per family, after SMALL's (the GPU's larger small)
    needs_cuda: bool = False


MODES = {
    "full": Mode("full", music_clips=900, clip_seconds=4.0,
                 updates={"musichubert": 400, "music2vec": 500, "jooci": 300, "mwmae": 1500, "mae": 1500, "audiojepa": 1200},
                 seeds=5, eval_pitches=tuple(range(48, 73, 3)), eval_programs_per_family=None,
                 digit_rates=(0.8, 1.0, 1.25), digit_f0_steps=3),
    # A GPU (default when torch sees one): full's corpus and tasks, the larger size, twice the updates.
    # Not run yet (no GPU here): the 15-minute budget on an H100/H200 is an estimate.
    "gpu": Mode("gpu", music_clips=900, clip_seconds=4.0,
                updates={"musichubert": 800, "music2vec": 1000, "jooci": 600, "mwmae": 3000, "mae": 3000, "audiojepa": 2400},
                seeds=5, eval_pitches=tuple(range(48, 73, 3)), eval_programs_per_family=None,
                digit_rates=(0.8, 1.0, 1.25), digit_f0_steps=3, size=GPU_SIZE, needs_cuda=True),
    "quick": Mode("quick", music_clips=240, clip_seconds=4.0,
                  updates={"musichubert": 80, "music2vec": 100, "jooci": 60, "mwmae": 200, "mae": 200, "audiojepa": 150},
                  seeds=3, eval_pitches=(48, 55, 60, 67, 72), eval_programs_per_family=4,
                  digit_rates=(1.0,), digit_f0_steps=2, clusters=[50, 100]),
    "micro": Mode("micro", music_clips=12, clip_seconds=4.0,
                  # music2vec's tri-stage schedule needs 10 updates (its decay phase is 10% of them)
                  updates={**{k: 2 for k in SMALL}, "music2vec": 10}, seeds=1, eval_pitches=(48, 60, 72), eval_programs_per_family=2,
                  digit_rates=(1.0,), digit_f0_steps=1, clusters=[8, 8], probe_max_epochs=5),
}


def size_overrides(mode: Mode, family: str) -> List[str]:
    """A run's size (SMALL, then the mode's larger size if any) and its mode's schedule."""
    updates = mode.updates[family]
    common = [f"optimization.max_update={updates}", f"checkpoint.save_interval_updates={updates}",
              f"dataset.validate_interval_updates={updates}", f"common.log_interval={max(1, updates // 25)}"]
    if family in ("musichubert", "jooci", "mwmae", "mae", "audiojepa"):
        common.append(f"lr_scheduler.warmup_updates={max(1, updates // 10)}")
    if family == "music2vec":
        common.append(f"model.ema_anneal_end_step={updates}")
    return SMALL[family] + list(mode.size.get(family, ())) + common


def scaled(mode: Mode, factor: float) -> Mode:
    """``mode`` with ``factor`` times its updates (warm-up and EMA schedules follow them): more
    training for whoever has the time, under the mode's name with the factor."""
    if factor <= 0:
        raise StudyError(f"--updates-scale {factor:g}: must be above 0")
    if factor == 1:
        return mode
    return replace(mode, name=f"{mode.name}, updates x{factor:g}",
                   updates={k: max(1, round(v * factor)) for k, v in mode.updates.items()})


class StudyError(RuntimeError):
    """A run failed, or a report was asked of results that lack what it needs."""


# --- verdicts --------------------------------------------------------------------------------


def interval(results: dict, task: str, model: str) -> Tuple[float, float]:
    entry = results["tasks"][task][model]
    return entry["test_mean"] - entry["test_ci95"], entry["test_mean"] + entry["test_ci95"]


def compare(results: dict, a: str, b: str, task: str) -> str:
    """HOLDS when a's 95% interval lies wholly above b's, DOES_NOT_HOLD when wholly below,
    NOISE when they overlap (touching counts as overlap) or a side has one seed (no interval:
    the probe gives it a half-width of 0, which any difference would clear)."""
    if any(len(results["tasks"][task][m]["runs"]) < 2 for m in (a, b)):
        return NOISE
    (lo_a, hi_a), (lo_b, hi_b) = interval(results, task, a), interval(results, task, b)
    if lo_a > hi_b:
        return HOLDS
    if lo_b > hi_a:
        return DOES_NOT_HOLD
    return NOISE


def claim_verdict(results: dict, claim: Claim) -> dict:
    """Per task and overall: holds (above on some task, below on none), does not hold (below on
    some, above on none), mixed (both), inside the noise (neither), not run (a side is missing)."""
    tasks = [t for t in results["tasks"] if claim.tasks is None or t in claim.tasks]
    models = set(results["models"])
    if claim.a not in models or claim.b not in models or not tasks:
        return {"claim": claim.text, "a": claim.a, "b": claim.b, "tasks": {}, "verdict": NOT_RUN}
    per_task = {t: compare(results, claim.a, claim.b, t) for t in tasks}
    up, down = HOLDS in per_task.values(), DOES_NOT_HOLD in per_task.values()
    verdict = MIXED if up and down else HOLDS if up else DOES_NOT_HOLD if down else NOISE
    return {"claim": claim.text, "a": claim.a, "b": claim.b, "tasks": per_task, "verdict": verdict}


def bar_verdict(results: dict, model: str, twin: str) -> dict:
    """The bar: ``model`` above its random-init twin, intervals apart, on at least BAR_TASKS tasks."""
    above = [t for t in results["tasks"] if compare(results, model, twin, t) == HOLDS]
    return {"model": model, "twin": twin, "tasks_above": above, "passes": len(above) >= BAR_TASKS}


def twin_name(name: str) -> str:
    from audio_ssl_ext.downstream.probe import RANDOM_INIT_SUFFIX

    return ("musichubert" if name.startswith("musichubert/") else name) + RANDOM_INIT_SUFFIX


def report_markdown(report: dict) -> str:
    from audio_ssl_ext.downstream.probe import markdown_table

    results = report["probe"]
    lines = [f"# Small-scale study ({report['mode']})", "", markdown_table(results), "",
             f"## The bar: trained beats its random-init twin, 95% intervals apart, on at least {BAR_TASKS} tasks", "",
             "| learner | twin | tasks above the twin | passes |", "|---|---|---|---|"]
    for row in report["bar"]:
        lines.append(f"| {row['model']} | {row['twin']} | {', '.join(row['tasks_above']) or '-'} | "
                     f"{'yes' if row['passes'] else 'no'} |")
    lines += ["", "## The papers' claims: does the direction hold here?", "",
              "| claim | a vs b | per task | verdict |", "|---|---|---|---|"]
    for row in report["claims"]:
        per_task = "; ".join(f"{t}: {v}" for t, v in row["tasks"].items()) or "-"
        lines.append(f"| {row['claim']} | {row['a']} vs {row['b']} | {per_task} | **{row['verdict']}** |")
    lines += ["", "Verdicts from the 95% intervals: holds / does not hold = the intervals are apart in / against "
              "the claimed direction on a task (overall: on some task and against it on none); inside the noise = "
              "they overlap on every task; mixed = apart both ways on different tasks."]
    if report.get("timings"):
        lines += ["", "Wall time (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items())]
    return "\n".join(lines) + "\n"


def plot_report(results: dict, path: str) -> None:
    """One panel per task: each model's test accuracy with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks, models = list(results["tasks"]), list(results["models"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 0.3 * len(models) + 1.2), sharey=True,
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for y, model in enumerate(models):
            entry = results["tasks"][task][model]
            colour = "grey" if "(random init)" in model else "black" if model == "log-mel stats" else "C0"
            ax.errorbar(100 * entry["test_mean"], y, xerr=100 * entry["test_ci95"], fmt="o", color=colour, capsize=3)
        ax.set_title(task)
        ax.set_xlabel("test accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(models)))
    axes[0][0].set_yticklabels(models, fontsize=8)
    axes[0][0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_report(results: dict, mode: str, timings: Optional[Dict[str, float]] = None) -> dict:
    models = set(results["models"])
    bar = [bar_verdict(results, name, twin_name(name)) for name in MAIN_NAMES
           if name in models and twin_name(name) in models]
    if "musichubert/iter1" in models and twin_name("musichubert/iter1") in models:
        bar.insert(0, bar_verdict(results, "musichubert/iter1", twin_name("musichubert/iter1")))
    claims = [claim_verdict(results, c) for c in CLAIMS]
    return {"mode": mode, "probe": results, "bar": bar, "claims": claims, "timings": timings or {}}


def write_report(report: dict, out_dir: str) -> Dict[str, str]:
    paths = {k: os.path.join(out_dir, f"report.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["md"], "w") as f:
        f.write(report_markdown(report))
    plot_report(report["probe"], paths["png"])
    return paths


# --- the pipeline ----------------------------------------------------------------------------


class Study:
    def __init__(self, study_dir: str, mode: Mode, examples_dir: str, only: Optional[Sequence[str]] = None,
                 progress: bool = True):
        self.dir = os.path.abspath(study_dir)
        self.mode = mode
        self.examples = os.path.abspath(examples_dir)
        self.progress = progress
        self.timings: Dict[str, float] = {}
        unknown = sorted(set(only or ()) - set(ALL_NAMES) - {"musichubert"})
        if unknown:
            raise StudyError(f"--only {unknown}: not runs of the study (runs: musichubert, "
                             f"{', '.join(r.name for r in MAIN_RUNS + VARIANT_RUNS)})")
        if mode.needs_cuda:
            import torch

            if not torch.cuda.is_available():
                raise StudyError(f"the {mode.name} mode trains on a CUDA GPU, and torch sees none here")
        chosen = set(only) if only else None
        self.hubert = chosen is None or bool(chosen & {"musichubert", *HUBERT_RUNS, "jooci"})
        self.runs = [r for r in MAIN_RUNS + VARIANT_RUNS if chosen is None or r.name in chosen]

    def path(self, *parts: str) -> str:
        return os.path.join(self.dir, *parts)

    def timed(self, key: str, start: float) -> None:
        self.timings[key] = time.time() - start
        logger.info("%s: %.0f s", key, self.timings[key])

    def made_before(self, folder: str, record: dict) -> bool:
        """Whether ``folder`` was made with ``record`` (its ``made_with.json``); if not, clears it
        and records ``record``, to be made now."""
        path = os.path.join(folder, "made_with.json")
        if os.path.isfile(path):
            with open(path) as f:
                if json.load(f) == record:
                    logger.info("reusing %s (made with the same settings)", folder)
                    return True
        shutil.rmtree(folder, ignore_errors=True)
        return False

    def record(self, folder: str, record: dict) -> None:
        with open(os.path.join(folder, "made_with.json"), "w") as f:
            json.dump(record, f, indent=1)

    @staticmethod
    def manifests(audio_dir: str, out_dir: str, options) -> None:
        """Manifests over every wav of a corpus: a file make_manifest leaves out (unreadable, too
        short, another rate) stops the study instead of shrinking its corpus unseen."""
        from audio_ssl_ext.data.make_manifest import build_manifests

        report = build_manifests(audio_dir, out_dir, options)
        if report.left_out:
            first = report.left_out[0]
            raise StudyError(f"{audio_dir}: {len(report.left_out)} file(s) left out of the manifests, e.g. "
                             f"{first.path}: {first.reason}; remake the corpus (delete its folder)")

    # corpora, manifests, tasks
    def corpora(self) -> Dict[str, str]:
        from audio_ssl_ext.data.make_manifest import ManifestOptions
        from audio_ssl_ext.data.manifest import read_manifest, write_manifest
        from audio_ssl_ext.tools.music_corpus import build_music_corpus, check_separation
        from audio_ssl_ext.tools.speech_corpus import SPEAKERS, build_pretraining_corpus

        start = time.time()
        manifests = {}
        options = ManifestOptions(valid_percent=0.1, seed=0, progress=False)
        music = self.path("corpus", "music")
        record = {"clips": self.mode.music_clips, "seconds": self.mode.clip_seconds}
        if not self.made_before(music, record):
            build_music_corpus(music, clips=self.mode.music_clips, seconds=self.mode.clip_seconds)
            self.record(music, record)
        check_separation(music)  # also a corpus reused from an earlier run
        manifests["music"] = self.path("manifests", "music")
        self.manifests(os.path.join(music, "wavs"), manifests["music"], options)
        logger.info("music corpus -> %s, manifests -> %s", music, manifests["music"])
        if any(r.corpus == "music_10pct" for r in self.runs):
            # every tenth training file (the valid split unchanged), as the MW-MAE paper's 10% subset
            manifests["music_10pct"] = self.path("manifests", "music_10pct")
            os.makedirs(manifests["music_10pct"], exist_ok=True)
            train = read_manifest(os.path.join(manifests["music"], "train.tsv"))
            write_manifest(os.path.join(manifests["music_10pct"], "train.tsv"), train.root,
                           train.files[::10], train.sizes[::10])
            shutil.copyfile(os.path.join(manifests["music"], "valid.tsv"),
                            os.path.join(manifests["music_10pct"], "valid.tsv"))
            logger.info("10%% subset: %d of %d training files -> %s", len(train.files[::10]), len(train.files),
                        manifests["music_10pct"])
        if any(r.corpus == "speech" for r in self.runs):
            # No flite voice: the spoken_digit task's four speakers are flite's.
            speakers = [s.name for s in SPEAKERS if s.source != "flite"]
            per_speaker = math.ceil(self.mode.music_clips / len(speakers))  # as much speech as music
            speech = self.path("corpus", "speech")
            record = {"speakers": speakers, "utterances": per_speaker, "seconds": self.mode.clip_seconds}
            if not self.made_before(speech, record):
                build_pretraining_corpus(speech, speakers=speakers, utterances=per_speaker,
                                         seconds=self.mode.clip_seconds, progress=self.progress)
                self.record(speech, record)
            manifests["speech"] = self.path("manifests", "speech")
            self.manifests(os.path.join(speech, "wavs"), manifests["speech"], options)
            logger.info("speech corpus (%d speakers) -> %s, manifests -> %s", len(speakers), speech,
                        manifests["speech"])
        self.timed("corpora", start)
        return manifests

    def eval_tasks(self) -> List[str]:
        from audio_ssl_ext.tools.eval_tasks import build_digit_task, build_note_tasks

        start = time.time()
        out = self.path("eval_tasks")
        record = {"pitches": list(self.mode.eval_pitches), "programs_per_family": self.mode.eval_programs_per_family,
                  "digit_rates": list(self.mode.digit_rates), "digit_f0_steps": self.mode.digit_f0_steps}
        names = ("instrument_family", "pitch", "spoken_digit")
        if self.made_before(out, record):
            tasks = [os.path.join(out, name) for name in names]
        else:
            os.makedirs(out)
            tasks = build_note_tasks(out, pitches=self.mode.eval_pitches,
                                     programs_per_family=self.mode.eval_programs_per_family)
            tasks.append(build_digit_task(out, rates=self.mode.digit_rates, f0_steps=self.mode.digit_f0_steps))
            self.record(out, record)
        logger.info("evaluation tasks -> %s", ", ".join(tasks))
        self.timed("eval_tasks", start)
        return tasks

    # training
    def train(self, run: Run, manifest_dir: str, label_dirs: Sequence[str] = (), extra: Sequence[str] = ()) -> str:
        from audio_ssl_ext.clustering.iterations import PACKAGE_DIR, hydra_string
        from audio_ssl_ext.clustering.provenance import sha256_file
        from audio_ssl_ext.logged_run import log_tail, run_logged

        folder = self.path(run.name)
        checkpoint = os.path.join(folder, "checkpoints", "checkpoint_last.pt")
        script = os.path.join(os.path.dirname(sys.executable), "fairseq-hydra-train")
        command = ([script] if os.path.exists(script) else [sys.executable, "-m", "fairseq_cli.hydra_train"]) + [
            "--config-dir", os.path.join(self.examples, run.config_dir), "--config-name", run.config_name,
            *run.overrides,
            hydra_string("common.user_dir", PACKAGE_DIR), hydra_string("task.data", manifest_dir),
            hydra_string("checkpoint.save_dir", os.path.join(folder, "checkpoints")),
            hydra_string("common.tensorboard_logdir", os.path.join(folder, "tb")),
            *size_overrides(self.mode, run.family), *extra,
        ]
        # what it is trained on, by content: the same paths may hold another corpus or labels now
        inputs = {name: sha256_file(os.path.join(directory, name)) for directory in (manifest_dir, *label_dirs)
                  for name in sorted(os.listdir(directory)) if name.endswith((".tsv", ".km"))}
        record = json.loads(json.dumps({"run": asdict(run), "command": command, "inputs": inputs}))  # tuples: lists
        record_path = os.path.join(folder, "run.json")
        if os.path.isfile(checkpoint) and os.path.isfile(record_path):
            with open(record_path) as f:
                if json.load(f) == record:
                    logger.info("%s: reusing %s (same command)", run.name, checkpoint)
                    return checkpoint
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        start = time.time()
        log = os.path.join(folder, "train.log")
        code = run_logged(command, log, progress=self.progress, desc=run.name)
        if code != 0 or not os.path.isfile(checkpoint):
            raise StudyError(f"{run.name}: training failed (exit {code}); the end of {log}:\n{log_tail(log)}")
        with open(record_path, "w") as f:
            json.dump(record, f, indent=1)
        self.timed(f"train {run.name}", start)
        logger.info("%s: checkpoint %s, log %s", run.name, checkpoint, log)
        return checkpoint

    def hubert_iterations(self, manifest_dir: str) -> List[str]:
        from audio_ssl_ext.clustering.iterations import IterationsConfig, IterationsError, run_iterations
        from audio_ssl_ext.clustering.kmeans import KMeansError
        from audio_ssl_ext.clustering.shards import ShardError

        start = time.time()
        cfg = IterationsConfig(manifest_dir=manifest_dir, work_dir=self.path("musichubert"),
                               config_dir=os.path.join(self.examples, "musichubert"), config_name="tiny",
                               iterations=2, clusters=list(self.mode.clusters),
                               train_overrides=size_overrides(self.mode, "musichubert"), progress=self.progress)
        # The iterations reuse what was made from the same inputs and refuse other inputs; the
        # study starts a run afresh when its settings changed (another mode), as every other run.
        record = {k: v for k, v in asdict(cfg).items() if k != "progress"}
        record_path = self.path("musichubert", "study_run.json")
        if os.path.isdir(cfg.work_dir) and (not os.path.isfile(record_path) or json.load(open(record_path)) != record):
            logger.info("musichubert: settings changed, starting afresh in %s", cfg.work_dir)
            shutil.rmtree(cfg.work_dir)
        os.makedirs(cfg.work_dir, exist_ok=True)
        with open(record_path, "w") as f:
            json.dump(record, f, indent=1)
        try:
            checkpoints = run_iterations(cfg)
        except (IterationsError, KMeansError, ShardError, ValueError) as err:
            raise StudyError(f"musichubert iterations: {err}") from err
        self.timed("train musichubert (2 iterations)", start)
        logger.info("musichubert: iteration checkpoints %s", ", ".join(checkpoints))
        return checkpoints

    def train_all(self, manifests: Dict[str, str]) -> Dict[str, str]:
        from tqdm import tqdm

        from audio_ssl_ext.clustering.iterations import hydra_string

        checkpoints: Dict[str, str] = {}
        if self.hubert:
            checkpoints.update(zip(HUBERT_RUNS, self.hubert_iterations(manifests["music"])))
        for run in tqdm(self.runs, desc="study runs", unit="run", disable=not self.progress):
            labels, extra = [], []
            if run.family == "jooci":
                labels = [self.path("musichubert", "iter2", "labels")]
                extra = [hydra_string("task.label_dir", labels[0]), "task.label_rate=50"]
            checkpoints[run.name] = self.train(run, manifests[run.corpus], labels, extra)
        return checkpoints

    # probing and the report
    def probe(self, checkpoints: Dict[str, str], tasks: Sequence[str]) -> dict:
        from audio_ssl_ext.downstream.load import load_model
        from audio_ssl_ext.downstream.probe import (
            LOGMEL_NAME, ProbeConfig, checkpoint_embedder, logmel_statistics_embedder, run_probe, write_results)

        start = time.time()
        embedders = {}
        twins = {}
        for name, path in checkpoints.items():
            embedders[name] = checkpoint_embedder(load_model(path))
            # one twin per architecture: a variant's random init is its main run's, weight for weight
            twin = twin_name(name)
            if twin not in twins and not any(r.name == name and r.twin for r in VARIANT_RUNS):
                twins[twin] = checkpoint_embedder(load_model(path, random_init=True))
        embedders.update(twins)
        embedders[LOGMEL_NAME] = logmel_statistics_embedder()
        cfg = ProbeConfig(seeds=self.mode.seeds, max_epochs=self.mode.probe_max_epochs)
        results = run_probe(tasks, embedders, cfg)
        paths = write_results(results, self.path("probe"))
        logger.info("probe -> %s", ", ".join(paths.values()))
        self.timed("probe", start)
        return results

    def run(self) -> Dict[str, str]:
        start = time.time()
        os.makedirs(self.dir, exist_ok=True)
        manifests = self.corpora()
        tasks = self.eval_tasks()
        checkpoints = self.train_all(manifests)
        results = self.probe(checkpoints, tasks)
        self.timings["total"] = time.time() - start
        paths = write_report(build_report(results, self.mode.name, self.timings), self.dir)
        logger.info("report -> %s", ", ".join(paths.values()))
        return paths
