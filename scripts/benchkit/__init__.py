"""The pieces of scripts/benchmark.py: processes, generators, clients, the side-by-side run."""
