"""Procedurally generated indoor rooms (meshes, labels, cameras) for tests,
benchmarks and the synthetic source."""
