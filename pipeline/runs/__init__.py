"""A run, end to end: lake snapshot -> cache lookup -> kernels for the misses -> cache + results.

The CLI, the API, the Prefect flows and the demo all call `execute`/`backtest` (or `portfolio`);
it is the one place where the cache, the engine and the results table meet. Its stages, each in
its room: `plan` (what the run reads and writes, before any read), `backtest` (cache lookup, read,
compute, publish), `sweep` (a sweep's chunks through the kernels), `portfolio`, `check`.
"""

from pipeline.runs.backtest import RunOutcome, backtest, equity_curves, execute
from pipeline.runs.check import check_strategy
from pipeline.runs.plan import RunPlan, check_request, data_findings, left_out, plan_run
from pipeline.runs.portfolio import PortfolioOutcome, portfolio

__all__ = ["PortfolioOutcome", "RunOutcome", "RunPlan", "backtest", "check_request", "check_strategy",
           "data_findings", "equity_curves", "execute", "left_out", "plan_run", "portfolio"]
