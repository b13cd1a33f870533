"""HEAR 2021's task-folder format: write a scene-level multiclass task, read one split back.

    TASK/task_metadata.json  labelvocabulary.csv  {train,valid,test}.json
    TASK/16000/{train,valid,test}/*.wav

heareval reads these folders, and so does the probe (``downstream/probe.py``). The builders of
our own evaluation tasks (``audio_ssl_ext/tools/eval_tasks.py``) write them with ``write_hear_task``.
"""

import csv
import json
import os
import re
import shutil
from dataclasses import dataclass
from typing import Dict, List

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
SPLITS = ("train", "valid", "test")


class HearTaskError(RuntimeError):
    """A task folder that is not a scene-level multiclass HEAR task, or whose labels do not fit."""


@dataclass
class Clip:
    name: str  # file name inside the split folder
    label: str
    audio: np.ndarray  # float32 mono at SAMPLE_RATE


def write_hear_task(out_dir: str, task_name: str, splits: Dict[str, List[Clip]], clip_seconds: float) -> str:
    """Write one task folder; returns its path. Labels are sorted into labelvocabulary.csv."""
    task_dir = os.path.join(out_dir, task_name)
    if os.path.isdir(task_dir):
        shutil.rmtree(task_dir)
    labels = sorted({clip.label for clips in splits.values() for clip in clips}, key=_natural_key)
    for split, clips in splits.items():
        audio_dir = os.path.join(task_dir, str(SAMPLE_RATE), split)
        os.makedirs(audio_dir)
        for clip in clips:
            sf.write(os.path.join(audio_dir, clip.name), clip.audio, SAMPLE_RATE, subtype="PCM_16")
        with open(os.path.join(task_dir, f"{split}.json"), "w") as f:
            json.dump({clip.name: [clip.label] for clip in clips}, f, indent=1)
    with open(os.path.join(task_dir, "labelvocabulary.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["idx", "label"])
        writer.writerows(enumerate(labels))
    metadata = {
        "task_name": task_name,
        "version": "audio_ssl_ext-1",
        "embedding_type": "scene",
        "prediction_type": "multiclass",
        "split_mode": "trainvaltest",
        "splits": list(splits),
        "sample_duration": clip_seconds,
        "evaluation": ["top1_acc"],
        "sample_rates": [SAMPLE_RATE],
        "num_examples": {split: len(clips) for split, clips in splits.items()},
    }
    with open(os.path.join(task_dir, "task_metadata.json"), "w") as f:
        json.dump(metadata, f, indent=1)
    return task_dir


def read_hear_task(task_dir: str, split: str, sample_rate: int = SAMPLE_RATE):
    """(file paths, label indices, label names) of one split of a HEAR scene task."""
    with open(os.path.join(task_dir, "task_metadata.json")) as f:
        metadata = json.load(f)
    if metadata.get("embedding_type") != "scene" or metadata.get("prediction_type") != "multiclass":
        raise HearTaskError(f"{task_dir}: only scene-level multiclass tasks are supported")
    with open(os.path.join(task_dir, "labelvocabulary.csv")) as f:
        rows = list(csv.DictReader(f))
    names = [row["label"] for row in sorted(rows, key=lambda r: int(r["idx"]))]
    index = {name: i for i, name in enumerate(names)}
    with open(os.path.join(task_dir, f"{split}.json")) as f:
        split_labels = json.load(f)
    paths, targets = [], []
    for name, labels in split_labels.items():
        if len(labels) != 1 or labels[0] not in index:
            raise HearTaskError(f"{task_dir}/{split}.json: {name} has labels {labels}, expected one from the vocabulary")
        paths.append(os.path.join(task_dir, str(sample_rate), split, name))
        targets.append(index[labels[0]])
    return paths, np.array(targets), names


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text)]
