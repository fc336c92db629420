"""The fault harness: scenarios, load, oracle and services, shared by `tests/faults/` and
`python -m bench.faults` (bench imports nothing from tests/, tests may import bench)."""
