"""fairseq tasks of audio_ssl_ext; importing this package registers every module in it."""

from audio_ssl_ext._registry import import_submodules

import_submodules(__name__, __path__)
