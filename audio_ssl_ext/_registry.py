"""Registration with fairseq, done when fairseq is there and not before.

``import audio_ssl_ext`` must stay cheap where fairseq is not needed (data preparation, exported
models: fairseq's import alone takes seconds), yet fairseq must find our tasks, models and
criteria whenever it runs. So:

- fairseq already imported (``fairseq-hydra-train``'s ``common.user_dir``, or a user who
  imported fairseq first): the package registers at once, as it always did;
- otherwise ``watch_for_fairseq`` puts a finder on ``sys.meta_path`` that registers right after
  fairseq's own import has finished (``import audio_ssl_ext; from fairseq import tasks`` works).

Registering imports every module of ``criterions/``, ``models/`` and ``tasks/`` (their
``@register_*`` decorators run; adding a file is enough, as in fairseq's own
``fairseq/models/__init__.py``) and applies the two fairseq patches (``atomic_checkpoint``,
``cpu_distributed``). When fairseq's import is started by one of our own modules (say
``audio_ssl_ext.modules.ema``), registering at that moment would import modules that need the
half-imported one; it waits until no module of the package is mid-import.
"""

import importlib
import importlib.abc
import pkgutil
import sys
import threading

PACKAGE = __name__.rpartition(".")[0]
REGISTERED_BY = ("criterions", "models", "tasks", "atomic_checkpoint", "cpu_distributed")


def import_submodules(package_name: str, package_path) -> None:
    """Import every module of a subpackage so its fairseq ``@register_*`` decorators run."""
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")


def register_with_fairseq() -> None:
    for name in REGISTERED_BY:
        importlib.import_module(f"{PACKAGE}.{name}")


def fairseq_loaded(finished: str = "") -> bool:
    """fairseq imported completely (``finished``: a module whose import has just ended, which
    importlib still marks as initializing)."""
    module = sys.modules.get("fairseq")
    if module is None:
        return False
    return finished == "fairseq" or not getattr(getattr(module, "__spec__", None), "_initializing", False)


class _TrackedLoader(importlib.abc.Loader):
    """The real loader of fairseq or of one of our modules, counting how deep we are in them."""

    def __init__(self, loader, finder: "_RegisterAfterFairseq"):
        self.loader, self.finder = loader, finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def __getattr__(self, name):  # get_code (runpy, python -m), get_source, resource readers, ...
        return getattr(self.loader, name)

    def exec_module(self, module):
        # Once loaded the module shows its own loader: nothing of this finder stays visible.
        module.__loader__ = module.__spec__.loader = self.loader
        self.finder.depth += 1
        try:
            self.loader.exec_module(module)
        finally:
            self.finder.depth -= 1
        self.finder.register_when_ready(module.__name__)


class _RegisterAfterFairseq(importlib.abc.MetaPathFinder):
    def __init__(self):
        self.depth = 0  # modules of ours (or fairseq) being executed right now
        self.lock = threading.RLock()

    def find_spec(self, fullname, path, target=None):
        if fullname != "fairseq" and not fullname.startswith(PACKAGE + "."):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _TrackedLoader(spec.loader, self)
                return spec
        return None

    def register_when_ready(self, finished: str) -> None:
        with self.lock:
            if self.depth or not fairseq_loaded(finished) or self not in sys.meta_path:
                return
            sys.meta_path.remove(self)
        register_with_fairseq()


def watch_for_fairseq() -> None:
    """Register now if fairseq is loaded, otherwise right after it is."""
    if fairseq_loaded():
        register_with_fairseq()
    elif not any(isinstance(f, _RegisterAfterFairseq) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterFairseq())
