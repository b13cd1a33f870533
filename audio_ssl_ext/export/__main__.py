"""python -m audio_ssl_ext.export CKPT OUT_DIR: see audio_ssl_ext/export/__init__.py."""

import argparse
import sys

from audio_ssl_ext.export import export_checkpoint
from audio_ssl_ext.inference.build import ExportError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m audio_ssl_ext.export",
        description="Export a fairseq checkpoint of audio_ssl_ext to safetensors, config.json, a model card "
        "and a transformers AutoModel (trust_remote_code=True); the folder loads without fairseq.",
    )
    parser.add_argument("checkpoint", help="fairseq checkpoint (.pt)")
    parser.add_argument("out_dir", help="folder to write (created)")
    parser.add_argument("--features", help="default set of hidden states of a learner with several (JOOCI: both, content, other)")
    parser.add_argument("--teacher", action="store_true", help="also write the EMA teacher's weights (teacher.safetensors)")
    parser.add_argument("--task", action="append", default=[], metavar="KEY=VALUE",
                        help="override a task field of the checkpoint, e.g. --task label_dir=DIR (repeatable)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="read a checkpoint outside the weights-only allow-list with the full unpickler (runs code from the file)")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.task:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--task {item!r}: expected KEY=VALUE")
        overrides[key] = value
    try:
        config = export_checkpoint(args.checkpoint, args.out_dir, args.features, args.teacher, overrides or None,
                                   args.overwrite, args.trust_checkpoint)
    except (ExportError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.out_dir}: {config['learner']}, {config['num_parameters']:,} parameters, "
          f"{len(config['hidden_state_names'])} hidden states of {config['hidden_size']} at {config['frame_rate']:g} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
