"""Experiments: the paper's sweeps (methods x data fractions x seeds x datasets), benchmarks, the demo."""
