"""audio_ssl_ext: self-supervised speech and music learners as a fairseq user dir.

fairseq and torch are prerequisites, not install_requires: fairseq's wheel pins torchaudio, whose
newest release pins a CUDA torch, so a plain `pip install .` that pulled fairseq would replace the
user's torch. `make setup` installs them in the right order (see the Makefile and README).
"""

from setuptools import find_packages, setup

setup(
    name="audio_ssl_ext",
    version="0.1.0",
    description="Self-supervised audio representation learners (musicHuBERT, music2vec, "
    "MW-MAE, Audio-JEPA, JOOCI) as a fairseq extension",
    packages=find_packages(include=["audio_ssl_ext", "audio_ssl_ext.*"]),
    python_requires=">=3.9",
    install_requires=[
        "numpy",
        "scipy",
        "soundfile>=0.12",
        "soxr>=0.3",
        "nnAudio==0.3.4",
        "hydra-core>=1.3.2,<1.4",
        "omegaconf>=2.3,<2.4",
        "tensorboardX",
        "tqdm",
        "threadpoolctl>=3",  # k-means assignment keeps BLAS single-threaded in its own threads
        "safetensors>=0.4",  # load_model reads exported folders (no pickle)
    ],
    extras_require={
        # faiss-gpu users install their own build; faiss-cpu is the default of `make setup`.
        "cpu": ["faiss-cpu>=1.7"],
        # AutoModel.from_pretrained over an exported folder (the export and load_model need only safetensors)
        "export": ["transformers>=4.40,<5"],
        "test": ["pytest>=7", "librosa>=0.10", "transformers>=4.40,<5"],
    },
)
