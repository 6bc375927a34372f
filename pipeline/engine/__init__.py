"""The engine: Numba kernels, strategies, run options, the batch run, sweeps, walk-forward, overfitting statistics, portfolio."""
