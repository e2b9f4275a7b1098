"""How a study is run: doit tasks and their up-to-date checks, the step runner, per-session state,
the study fingerprint, progress, memory and threads.

Above the science (``cstbatch.steps``) and the outputs (``cstbatch.outputs``): it calls them and
they never import it.
"""
