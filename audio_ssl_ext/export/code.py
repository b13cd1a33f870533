"""The code an exported folder carries: the package's own inference files, not a second copy.

Starting from ``inference/``'s files, every module of the package they import (relative or
absolute imports, followed recursively: ``modules/learner.py``, ``modules/conv_features.py``,
``features/logmel.py``, ...) is written into the one flat folder with its imports made relative to
it (``from audio_ssl_ext.modules.learner import Learner`` -> ``from .learner import Learner``), as
transformers' ``trust_remote_code`` loads a folder. A module that also holds fairseq-bound
definitions (``modules/spectrogram_frontend.py``'s config dataclasses) is written without them:
the imports of fairseq, hydra and omegaconf go, and so does every top-level definition that uses a
name they bound, transitively. Whatever inference needs must therefore not use fairseq; the
exported model's parity test, run where fairseq cannot be imported, checks that it does not.
"""

import ast
import importlib
import os
from typing import Dict, List, Set, Tuple

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


def used_names(node: ast.AST, annotations: bool = False) -> Set[str]:
    """Names a statement reads: outside annotations (``annotations=False``) or only in them."""
    found: Set[str] = set()

    def visit(n: ast.AST, in_annotation: bool) -> None:
        if isinstance(n, ast.Name) and in_annotation == annotations:
            found.add(n.id)
        for field, value in ast.iter_fields(n):
            is_annotation = in_annotation or field in ("annotation", "returns")
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, is_annotation)

    visit(node, False)
    return found


def strip_fairseq(tree: ast.Module) -> Tuple[Set[int], Set[str]]:
    """Top-level statements to drop (their indices) and the names they bound."""
    dropped_names: Set[str] = set()
    dropped: Set[int] = set()
    for i, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            if node.__class__ is ast.ImportFrom and node.level:
                continue
            if any(m.split(".")[0] in FAIRSEQ_BOUND for m in modules):
                dropped.add(i)
                dropped_names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    changed = True
    while changed:
        changed = False
        for i, node in enumerate(tree.body):
            if i in dropped:
                continue
            if used_names(node) & dropped_names:
                dropped.add(i)
                changed = True
                if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    dropped_names.add(node.name)
                elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    dropped_names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    return dropped, dropped_names


def rewrite(module: str) -> Tuple[str, List[str]]:
    """(the folder's text of ``module``, the package modules it imports)."""
    path = module_file(module)
    with open(path) as f:
        source = f.read()
    tree = ast.parse(source, path)
    lines = source.splitlines(keepends=True)
    dropped, dropped_names = strip_fairseq(tree)
    replacements: Dict[int, Tuple[int, str]] = {}  # first line -> (last line, new text)
    needs: List[str] = []
    for i, node in enumerate(tree.body):
        if i in dropped:
            first = (node.decorator_list[0].lineno if getattr(node, "decorator_list", None) else node.lineno) - 1
            replacements[first] = (node.end_lineno, "")
    kept = [node for i, node in enumerate(tree.body) if i not in dropped]
    for node in (n for top in kept for n in ast.walk(top)):  # imports inside functions too
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
    kept = [node for i, node in enumerate(tree.body) if i not in dropped]
    if any(used_names(node, annotations=True) & dropped_names for node in kept):
        # Annotations that name a left-out class (``cfg: LogMelPatchesConfig``) stay unevaluated.
        docstring = tree.body[0] if ast.get_docstring(tree) is not None else None
        after = docstring.end_lineno if docstring is not None else 0
        last, text = replacements.get(after, (after + 1, lines[after]))
        replacements[after] = (last, "\nfrom __future__ import annotations\n" + text)
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
    if dropped_names:
        note += f"; left out (fairseq-bound): {', '.join(sorted(dropped_names))}"
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
