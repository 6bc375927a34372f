"""Your own entry and exit arrays as a strategy: the notebook's `run_signals` (vectorbt's from_signals).

Registered only by `pipeline.notebook.run_signals`, which hands the kernel the arrays in the
`volume` slot of its private price batch (1 = entry, 2 = exit, 3 = both; the strategy reads no
volume), so the arrays take the one run path: fills, stops, sizing, fees and every metric are
those of any strategy.
"""

from pipeline.engine.strategies.api import njit

# A strategy file like any other (the names pipeline/engine/strategies/api.py requires): its layout
# repeats buy_and_hold.py's by design, so the arrays take the one run path.
NAME = "from_signals"
DESCRIPTION = "Entry and exit arrays given from a notebook (cryptobt.run_signals)."
PARAMS = ()
COLUMNS = ("volume",)
INDICATORS = ()
INDICATOR_PARAMS = ()
SIGNAL_VALUE = "signal"


@njit(cache=True)
def indicators(prices, params, ind):
    pass


@njit(cache=True)
def signals(prices, params, ind, entries, exits, sig_value):
    code = prices[0]
    for t in range(code.shape[0]):
        entries[t] = code[t] == 1.0 or code[t] == 3.0
        exits[t] = code[t] >= 2.0
        sig_value[t] = code[t]


@njit(cache=True)
def warmup(params):
    return 1
