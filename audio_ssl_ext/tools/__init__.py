"""Tooling around the learners: the synthetic demo corpus and the evaluation-task builders.

    demo_corpus.py  a labelled synthetic corpus made with numpy alone (``make demo``, the tests)
    eval_tasks.py   HEAR-format evaluation tasks rendered by fluidsynth and flite (``make eval``)

Used by ``scripts/`` and ``tests/``; nothing in the core package (models, tasks, criterions,
modules, features, data, clustering, downstream) imports it, and a test checks that.
"""
