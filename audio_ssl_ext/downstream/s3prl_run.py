"""s3prl's own downstream runner with our checkpoints as the upstream ``audio_ssl``.

    python -m audio_ssl_ext.downstream.s3prl_run -m train -u audio_ssl -k CKPT \\
        -d voxceleb1 -c voxceleb1.yaml -p result/vc1

Every argument is s3prl's ``run_downstream`` argument (see its --help). s3prl has no plugin
mechanism: ``-u NAME`` is looked up as an attribute of ``s3prl.hub``, so this module sets
``s3prl.hub.audio_ssl`` and then calls s3prl's ``main()``. Beyond that it only fixes what the
installed s3prl needs on a machine like ours:

- ``--device cpu`` unless given, when there is no CUDA (s3prl's default is cuda);
- s3prl's own checkpoints (``-m evaluate``, ``-e``/``--init_ckpt`` resume) hold its arguments as
  an ``argparse.Namespace``, which torch >= 2.6's weights-only default refuses. The runner runs
  inside torch's ``safe_globals([argparse.Namespace])`` context, so they load weights-only with
  that one data class allowed. Nothing is set for other processes (no
  ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), and our upstream reads its checkpoint through
  ``audio_ssl_ext/checkpoint_io.py`` as everywhere (``-g trust_checkpoint=true`` to opt out);
- the voxceleb1 downstream caches its file lists inside site-packages
  (``s3prl/downstream/voxceleb1/.cache``) whatever the data path: they are cleared first, so a
  run never trains on another run's files. The file lists are rebuilt from ``meta_data``.
- the s3prl wheel ships no downstream config files: pass ``-c CONFIG``.
"""

import argparse
import logging
import os
import shutil
import sys

logger = logging.getLogger("audio_ssl_ext.s3prl_run")


# What s3prl's checkpoints hold besides tensors and plain containers (measured on dev-best.ckpt).
S3PRL_CHECKPOINT_GLOBALS = [argparse.Namespace]


def audio_ssl(ckpt: str, model_config: str = None, *args, **kwargs):
    """The hub entry: s3prl calls it with ckpt (-k), model_config (-g) and refresh."""
    from audio_ssl_ext.downstream.s3prl import UpstreamExpert

    return UpstreamExpert(ckpt, model_config)


def _argument(argv, *names):
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                return argv[i + 1]
            if token.startswith(name + "="):
                return token.split("=", 1)[1]
    return None


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    import torch

    if _argument(argv, "--device") is None and not torch.cuda.is_available():
        argv += ["--device", "cpu"]
    downstream = _argument(argv, "-d", "--downstream")
    if _argument(argv, "-e", "--past_exp") is None and _argument(argv, "-c", "--config") is None:
        sys.exit(f"s3prl_run: pass -c CONFIG: the s3prl wheel ships no config for downstream {downstream!r}")

    import s3prl.hub
    from s3prl import run_downstream

    if downstream == "voxceleb1":
        cache = os.path.join(os.path.dirname(s3prl.__file__), "downstream", "voxceleb1", ".cache")
        if os.path.isdir(cache):
            logger.warning("clearing s3prl's voxceleb1 file-list cache %s", cache)
            shutil.rmtree(cache)
    s3prl.hub.audio_ssl = audio_ssl
    sys.argv = [sys.argv[0]] + argv
    with torch.serialization.safe_globals(S3PRL_CHECKPOINT_GLOBALS):
        run_downstream.main()


if __name__ == "__main__":
    main()
