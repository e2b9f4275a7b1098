"""Running a study on a cluster: SLURM submission and ``cstbatch status``.

Sits beside the command line, above the engine: a job array element runs the engine's tasks.
"""
