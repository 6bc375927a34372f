"""Baselines for the benchmark: the users' current approaches and the peers, on SPEC's semantics.

All of them run the RSI strategy (Wilder RSI as TA-Lib computes it, SPEC section 3's
crossings, long-only all-in/all-out, SPEC section 4's fees, fills at the signal bar's
close, an open position marked at the last close), so their numbers can be compared
with our engine's. tests/test_bench_baselines.py checks each one against a
bar-by-bar reference over TA-Lib's RSI on real PostgreSQL.

- `seeds_original.run_rsi_all(database_url, period, oversold, overbought, fee_pct,
  initial, limit_symbols)`: the seeds' original backtester: sequential over cryptos,
  one `pandas.read_sql` (SQLAlchemy + psycopg) of all hourly rows per crypto, pandas
  RSI, a `df.iterrows()` loop. Matches SPEC to float rounding: same trade list,
  final value to rtol 1e-9 (tested; the pandas RSI equals TA-Lib's to ~1e-13).
- `seeds_phase12.run_rsi_all(..., interval='1d', processes=None)`: the seeds' phase
  1 + 2: daily bars by default, pandas-vectorised signals, a loop over the signal
  rows, `multiprocessing.Pool(min(cpu_count, cryptos, 8))`, a connection per worker.
  Same tolerance as the original (tested hourly and daily).
- `vectorbt_rsi.run_rsi(close, period, oversold, overbought, fee_pct, initial,
  rsi='talib')`: vectorbt's `Portfolio.from_signals` over the aligned (symbols x
  time) close array, each symbol's bars compacted first (a missing bar is not a bar)
  and the buy fee set to f / (1 - f) so the buy follows SPEC's formula. With the
  default TA-Lib RSI: same number of entries, final value to rtol 1e-6 (tested;
  agrees to ~1e-14 in practice). `rsi='vbt'` (vectorbt's own EWM RSI) is seeded
  differently and is not held to a tolerance; see the module docstring.

- `vectorbt_rsi.run_rsi(..., engine="rust")`: the same on vectorbt's Rust engine
  (`vectorbt-rust`); same numbers as the Numba engine (tested to 1e-12).
- `fast_trade_rsi.run_rsi(close, period, oversold, overbought, fee_pct, initial)`:
  fast-trade 3.0, a Polars-native backtester, one call per symbol on its own bars,
  TA-Lib's RSI handed in (its own RSI is seeded otherwise and its rules have no
  crossing); same entries, final value to rtol 1e-9 above a value of ~5 (it rounds
  to 8 decimals). polars-backtest, the other Polars-native candidate, is not here:
  its simulation is compiled (no source to match semantics against) and its Python
  layer runs one weight-normalised account over all symbols.

Both seed baselines return {symbol: {final_value, num_trades, trades, bars}} with
`trades = [(bar_index, 'buy' | 'sell', price)]`; symbols whose bars do not cover
the warm-up get zero trades, their initial cash and a `reason`.
"""
