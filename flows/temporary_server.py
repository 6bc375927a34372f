"""Prefect's temporary server dies with the process that started it, however that process ends.

Without PREFECT_API_URL, Prefect starts a temporary API server (a uvicorn subprocess) and
stops it from an `atexit` hook: a SIGKILLed command never runs the hook, and the server
kept listening. `tie_to_this_process` first starts a tiny watchdog process holding the read end of a
pipe whose write end only this process holds, then starts the server and writes its pid
into the pipe; the kernel closes the pipe when this process dies, for any reason, and the
watchdog then stops the server.
"""

from __future__ import annotations

import os
import subprocess
import sys

# The watchdog: collect the server pids written to the pipe until end-of-file (our parent is
# gone), then stop each that is still Prefect's uvicorn (never a process that reused the pid).
_WATCHDOG = """
import os, signal, sys, time
fd, data = int(sys.argv[1]), b""
while chunk := os.read(fd, 64):
    data += chunk
def alive(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"uvicorn" in handle.read()
    except OSError:
        return False
pids = [int(p) for p in data.split()]
for pid in pids:
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
for _ in range(50):
    if not any(alive(pid) for pid in pids):
        break
    time.sleep(0.1)
for pid in pids:
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
"""

_write_ends: list[int] = []  # held open for the life of this process: their closing is the signal


def tie_to_this_process() -> None:
    """Make Prefect's temporary server (if one is used) die with this process; starts it now."""
    if os.environ.get("PREFECT_API_URL") or _write_ends:
        return  # a lasting server is not ours to stop; a tied one is tied already
    from prefect.server.api.server import SubprocessASGIServer

    read_end, write_end = os.pipe()
    # The watchdog runs before the server exists, so no moment of the server's life is unguarded.
    subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(read_end)], pass_fds=(read_end,),
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    os.close(read_end)
    _write_ends.append(write_end)
    server = SubprocessASGIServer()  # the instance Prefect's client uses when no API URL is set
    launch = server._run_uvicorn_command  # noqa: SLF001 - the one place Prefect starts the process

    def launch_and_report() -> subprocess.Popen:
        process = launch()
        os.write(write_end, f"{process.pid}\n".encode())
        return process

    server._run_uvicorn_command = launch_and_report  # noqa: SLF001
    server.start()
