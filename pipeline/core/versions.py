"""The package's version and the engine's: every cache key and result row carries both."""

__version__ = "0.1.0"

# Bumped whenever a change to the kernels, strategies or result shaping can change
# a result: it is part of every cache key, so a code change never serves an old result.
# 2: equity curves start at the initial cash, observed annualisation, warm-up before --timerange.
ENGINE_VERSION = "2"
