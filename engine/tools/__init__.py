"""Measuring and making models: benchmarks, synthetic models, the numpy reference forward pass. Never imported by
the runtime."""
