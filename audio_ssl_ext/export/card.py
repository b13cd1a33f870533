"""The README.md of an exported folder: what the model is, what it was trained on, how to load it."""

import os
from typing import Dict


def model_card(config: Dict, checkpoint: str, teacher: bool) -> str:
    names = config["hidden_state_names"]
    folder = "MODEL_DIR"
    updates = config.get("updates")
    lines = [
        f"# {config['learner']} (audio_ssl_ext export)",
        "",
        f"A self-supervised audio encoder trained with audio_ssl_ext (a fairseq extension) as fairseq's "
        f"`{config['learner']}` model, exported without its pre-training heads by `python -m audio_ssl_ext.export`.",
        "",
        "| | |",
        "|---|---|",
        f"| learner | `{config['learner']}` ({config['family']} family) |",
        f"| checkpoint | `{os.path.basename(checkpoint)}` |",
        f"| training data | `{config.get('train_data')}` (the manifest folder of the run) |",
        f"| updates | {updates if updates is not None else 'unknown (no optimizer history in the checkpoint)'} |",
        f"| parameters | {config['num_parameters']:,} |",
        f"| input | mono waveform at {config['sample_rate']} Hz |",
        f"| output | {len(names)} hidden states of {config['hidden_size']} dims at {config['frame_rate']:g} frames/s |",
        f"| input front end | {config['frontend']['type']} |",
    ]
    if config.get("features"):
        lines.append(f"| feature set | `{config['features']}` (others: pass `features=` to `load_model`) |")
    lines += [
        "",
        "Hidden states, in order: " + ", ".join(f"{i}: {n}" for i, n in enumerate(names)) + ".",
        "",
        "## Load it",
        "",
        "With transformers (the model code is in this folder; no fairseq needed):",
        "",
        "```python",
        "from transformers import AutoFeatureExtractor, AutoModel",
        f"model = AutoModel.from_pretrained('{folder}', trust_remote_code=True)",
        f"extractor = AutoFeatureExtractor.from_pretrained('{folder}')",
        f"inputs = extractor([wav1, wav2], sampling_rate={config['sample_rate']}, padding=True, return_tensors='pt')",
        "out = model(**inputs, output_hidden_states=True)",
        "out.hidden_states  # one (B, T, D) tensor per hidden state, zeros past each item's frames",
        "```",
        "",
        "With audio_ssl_ext (also for s3prl and HEAR, which take this folder where they take a checkpoint):",
        "",
        "```python",
        "import audio_ssl_ext",
        f"model = audio_ssl_ext.load_model('{folder}')",
        "features = model.extract_features([wav1, wav2], sample_rate=16000)  # resampled inside",
        "```",
        "",
        "Only JSON and safetensors are read: loading this folder unpickles nothing.",
    ]
    if teacher:
        lines += ["", "`teacher.safetensors` holds the EMA teacher's weights as the checkpoint kept them; "
                  "neither loader reads it."]
    lines += ["", f"Exported model checked against the checkpoint's: largest difference of any hidden state "
              f"{config['export_max_abs_difference']:.2g} on a test input.", ""]
    return "\n".join(lines)
