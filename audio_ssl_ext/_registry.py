"""Import every module of a subpackage so its fairseq ``@register_*`` decorators run.

fairseq's own ``fairseq/models/__init__.py`` does the same: adding a file is enough to register
what it defines, and no list of names has to be kept in step by hand.
"""

import importlib
import pkgutil


def import_submodules(package_name: str, package_path) -> None:
    for info in pkgutil.iter_modules(package_path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package_name}.{info.name}")
