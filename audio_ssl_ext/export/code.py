"""The code an exported folder carries: the package's own inference files, not a second copy.

Starting from ``inference/``'s files, every module of the package they import (relative or
absolute imports, followed recursively: ``modules/learner.py``, ``modules/conv_features.py``,
``features/logmel.py``, ...) is written into the one flat folder with its imports made relative to
it (``from audio_ssl_ext.modules.learner import Learner`` -> ``from .learner import Learner``), as
transformers' ``trust_remote_code`` loads a folder. A module that imports fairseq, hydra or
omegaconf is refused: keep fairseq-bound definitions apart from what inference runs (as the
spectrogram learners' config dataclasses are, in ``modules/spectrogram_config.py``). The exported
model's parity test runs where none of them can be imported.
"""

import ast
import importlib
import os
from typing import Dict, List, Tuple

PACKAGE = "audio_ssl_ext"
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAIRSEQ_BOUND = ("fairseq", "hydra", "omegaconf")
# Where the folder's code starts: the transformers wrapper and what it imports.
ENTRY_MODULES = (
    f"{PACKAGE}.inference.modeling_audio_ssl",
    f"{PACKAGE}.inference.configuration_audio_ssl",
)


def module_file(module: str) -> str:
    path = os.path.join(os.path.dirname(PACKAGE_DIR), *module.split("."))
    if os.path.isdir(path):
        raise ValueError(f"{module} is a package: import the module that defines the names")
    return path + ".py"


def absolute_module(node: ast.ImportFrom, module: str) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")[: -node.level]
    return ".".join(parts + ([node.module] if node.module else []))


def defining_modules(source_module: str, names: List[str]) -> Dict[str, List[str]]:
    """``from PACKAGE.sub import a, b`` where ``sub`` may be a package re-exporting names: the
    module that defines each name -> the names."""
    imported = importlib.import_module(source_module)
    by_module: Dict[str, List[str]] = {}
    for name in names:
        obj = getattr(imported, name)
        home = getattr(obj, "__module__", None) or source_module
        if os.path.isdir(os.path.join(os.path.dirname(PACKAGE_DIR), *home.split("."))):
            raise ValueError(f"{source_module}.{name}: cannot tell which file defines it")
        by_module.setdefault(home, []).append(name)
    return by_module


def fairseq_imports(tree: ast.Module, path: str) -> None:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [node.module or ""]
        else:
            continue
        bound = [m for m in modules if m.split(".")[0] in FAIRSEQ_BOUND]
        if bound:
            raise ValueError(
                f"{path}:{node.lineno}: imports {bound[0]}, but an exported model runs without fairseq, hydra and "
                f"omegaconf: move what needs them to a module inference does not import"
            )


def rewrite(module: str) -> Tuple[str, List[str]]:
    """(the folder's text of ``module``, the package modules it imports)."""
    path = module_file(module)
    with open(path) as f:
        source = f.read()
    tree = ast.parse(source, path)
    fairseq_imports(tree, path)
    lines = source.splitlines(keepends=True)
    replacements: Dict[int, Tuple[int, str]] = {}  # first line -> (last line, new text)
    needs: List[str] = []
    for node in ast.walk(tree):  # imports inside functions too
        if isinstance(node, ast.Import) and any(a.name.startswith(PACKAGE) for a in node.names):
            raise ValueError(f"{path}:{node.lineno}: write `from ... import NAME` for the export to follow it")
        if not isinstance(node, ast.ImportFrom):
            continue
        source_module = absolute_module(node, module)
        if not source_module.startswith(PACKAGE):
            continue
        text = []
        indent = " " * node.col_offset
        aliases = {a.name: a.asname for a in node.names}
        for home, names in defining_modules(source_module, list(aliases)).items():
            listed = ", ".join(n if not aliases[n] else f"{n} as {aliases[n]}" for n in names)
            text.append(f"{indent}from .{home.rsplit('.', 1)[1]} import {listed}\n")
            needs.append(home)
        replacements[node.lineno - 1] = (node.end_lineno, "".join(text))
    out, line = [], 0
    while line < len(lines):
        if line in replacements:
            last, text = replacements[line]
            out.append(text)
            line = last
        else:
            out.append(lines[line])
            line += 1
    relative = os.path.relpath(path, os.path.dirname(PACKAGE_DIR))
    note = f"# {relative}, as `python -m audio_ssl_ext.export` writes it: imports relative to this folder"
    return note + "\n" + "".join(out), needs


def folder_code() -> Dict[str, str]:
    """File name -> text of every code file an exported folder holds."""
    files: Dict[str, str] = {}
    homes: Dict[str, str] = {}
    todo = list(ENTRY_MODULES)
    while todo:
        module = todo.pop()
        name = module.rsplit(".", 1)[1] + ".py"
        if name in files:
            if homes[name] != module:
                raise ValueError(f"{module} and {homes[name]} would both be {name} in the exported folder")
            continue
        files[name], needs = rewrite(module)
        homes[name] = module
        todo.extend(needs)
    # transformers copies a local folder's code into its module cache following only the
    # relative imports of the file auto_map names, not theirs (dynamic_module_utils,
    # get_cached_module_file); the modeling file names every other one so all are copied.
    modeling = ENTRY_MODULES[0].rsplit(".", 1)[1] + ".py"
    others = sorted(n[: -len(".py")] for n in files if n != modeling)
    files[modeling] += (
        "\n\nif False:  # never run: transformers reads these lines to copy every code file of the folder\n"
        + "".join(f"    from .{m} import __name__  # noqa: F401\n" for m in others)
    )
    return files
