"""Tests of one module or function at a time, in process: datasets, statistics, job state, import rules."""
