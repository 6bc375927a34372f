"""The soak (make soak, an hour) runs end to end in a short form and proves its own checks."""

import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_short_soak_passes_its_checks_and_writes_a_report(tmp_path, pg_admin_url, redis_url):
    report = tmp_path / "SOAK.md"
    env = {**os.environ, "DATABASE_URL": pg_admin_url, "REDIS_URL": redis_url}
    done = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--minutes", "0.3", "--cycle-seconds", "2", "--symbols", "4",
         "--years", "0.2", "--vacuum-every", "2", "--report", str(report)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    text = report.read_text()
    assert "verdict: **PASS**" in text
    assert "| mismatching rows | 0 |" in text and "| errors | 0 |" in text
    written = int(text.split("| result rows written by the runs | ")[1].split(" ")[0].replace(",", ""))
    in_table = int(text.split("| result rows in the table (runs) | ")[1].split(" ")[0].replace(",", ""))
    assert written == in_table > 0
