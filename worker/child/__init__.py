"""The processes a worker spawns for its GPU work (`python -m worker.child ...`): a training run and a
comparison run. CUDA is initialised only here, so a crash, an out-of-memory or a kill -9 takes down the
child and never the worker. Importing this package imports nothing heavy."""

CHILD_MODULE = __name__  # `python -m worker.child train JOB ATTEMPT`, `... compare ID`, `... merge ID N`, `... standby`
