"""``python app.py`` as a child process, started on a free port and waited for until its page answers:
the load test, the cold-start benchmark figure and the durability test each start the app this way."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .settings import REPO_ROOT
from .text import free_port


def start_app(env: dict[str, str], timeout: float = 600, log: Path | None = None,
              while_waiting: Callable[[subprocess.Popen], None] | None = None) -> tuple[subprocess.Popen, str]:
    """``python app.py`` on a free port with extra environment ``env``, in a process group of its own
    (so that the whole tree can be signalled), started and waited for until its page answers ->
    (process, URL). Its output goes to ``log`` (appended) or nowhere; ``while_waiting(process)`` runs
    at every poll. If it exits or does not answer in ``timeout`` s, it is killed and the error says so,
    with the log's tail."""
    port = free_port()
    full = {**os.environ, "GRADIO_SERVER_PORT": str(port), **env}
    out = log.open("ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO_ROOT, env=full, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    if log:
        out.close()  # the child has its own copy
    url = f"http://127.0.0.1:{port}/"
    tail = (lambda: "\n" + log.read_text(errors="replace")[-3000:]) if log else (lambda: "")
    end = time.monotonic() + timeout
    while True:
        if while_waiting:
            while_waiting(proc)
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited during start-up (exit code {proc.returncode}){tail()}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, url
        except OSError:
            if time.monotonic() > end:
                proc.kill()
                raise TimeoutError(f"the app did not start in {timeout:.0f} s{tail()}") from None
            time.sleep(0.2)
