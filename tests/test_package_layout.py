"""The package's shape: tooling stays out of the core, and an installed (non-editable) copy works
without the repository around it."""

import ast
import glob
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.utils import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "audio_ssl_ext")
CORE = ("models", "tasks", "criterions", "modules", "features", "data", "clustering", "downstream")


def imported_modules(path, module=None):
    """Absolute names of every module a file imports (relative imports resolved), at any depth;
    ``module`` is the file's dotted name (default: from its path under the repository)."""
    module = module or os.path.relpath(path, REPO_ROOT)[: -len(".py")].replace(os.sep, ".")
    package = module.rsplit(".", 1)[0] if not module.endswith("__init__") else module[: -len(".__init__")]
    names = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parent + ([base] if base else []))
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("audio_ssl_ext."):
            names.append(node.value)  # importlib.import_module("audio_ssl_ext....")
    return names


def test_nothing_in_the_core_imports_the_tools():
    files = [f for folder in CORE for f in glob.glob(os.path.join(PACKAGE, folder, "**", "*.py"), recursive=True)]
    files += glob.glob(os.path.join(PACKAGE, "*.py"))  # the package's own modules (__init__, hear)
    assert len(files) > 30
    offenders = {
        os.path.relpath(f, REPO_ROOT): name
        for f in files
        for name in imported_modules(f)
        if name == "audio_ssl_ext.tools" or name.startswith("audio_ssl_ext.tools.")
    }
    assert offenders == {}, "the core imports tooling (move it to audio_ssl_ext/tools or tests/)"


def test_the_import_check_sees_relative_and_dynamic_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..tools import demo_corpus\n    from ..tools.eval_tasks import DIGITS\n"
                     "import importlib\nimportlib.import_module('audio_ssl_ext.tools.x')\n")
    names = set(imported_modules(str(probe), module="audio_ssl_ext.clustering.probe"))
    assert {"audio_ssl_ext.tools.demo_corpus", "audio_ssl_ext.tools.eval_tasks", "audio_ssl_ext.tools.x"} <= names


@pytest.mark.integration
def test_a_non_editable_install_runs_the_tools_and_the_iterations_driver(tmp_path):
    # Install a copy of the sources (the build must not write into the working tree).
    source = tmp_path / "src"
    shutil.copytree(PACKAGE, source / "audio_ssl_ext", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(os.path.join(REPO_ROOT, "setup.py"), source)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
           "--no-build-isolation", "--target", str(target), str(source)]
    proc = subprocess.run(pip, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.rmtree(source)
    # The configs come from --config-dir only: a copy outside the repository.
    configs = tmp_path / "configs"
    shutil.copytree(os.path.join(REPO_ROOT, "examples", "musichubert"), configs)
    work = tmp_path / "run"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(target), PYTHONNOUSERSITE="1")

    check = textwrap.dedent(f"""
        import os, sys
        import audio_ssl_ext
        from audio_ssl_ext.tools.demo_corpus import make_demo_corpus, read_label_info
        from audio_ssl_ext.data.manifest import write_manifest
        assert audio_ssl_ext.__file__.startswith({str(target)!r}), audio_ssl_ext.__file__
        corpus = make_demo_corpus("corpus", num_clips=4, clip_seconds=1.0)
        files = sorted(f for f in os.listdir(corpus) if f.endswith(".wav"))
        os.makedirs("manifest")
        for split, part in (("train", files[:3]), ("valid", files[3:])):
            write_manifest(f"manifest/{{split}}.tsv", os.path.abspath(corpus), part, [16000] * len(part))
        print("tools ok", read_label_info(corpus)["num_clips"])
    """)
    proc = subprocess.run([sys.executable, "-c", check], cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tools ok 4" in proc.stdout

    script = os.path.join(REPO_ROOT, "scripts", "hubert_iterations.py")
    proc = subprocess.run([sys.executable, script, "manifest", "iters", "--dry-run"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--config-dir" in proc.stderr  # required
    proc = subprocess.run([sys.executable, script, "manifest", "iters", "--config-dir", str(configs), "--dry-run"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"user_dir: {target}/audio_ssl_ext" in proc.stdout  # the installed package, not the repository
    assert "_name: music_hubert" in proc.stdout and "label_rate: 100" in proc.stdout
    assert not os.path.exists(work / "iters")  # a dry run writes nothing
    proc = subprocess.run([sys.executable, script, "manifest", "iters", "--config-dir", str(tmp_path), "--dry-run"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "tiny.yaml: training config not found" in proc.stderr
