"""Work in flight at exit (``demo.core.inflight``): waited for, and new work refused with a message."""
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from demo.core.inflight import InFlight, ShuttingDown


def test_close_waits_for_running_work_and_refuses_new_work():
    in_flight, started, release, ended = InFlight(), threading.Event(), threading.Event(), []

    def work():
        with in_flight.work():
            started.set()
            release.wait(10)
            ended.append(time.monotonic())

    thread = threading.Thread(target=work)
    thread.start()
    started.wait(10)
    assert in_flight.running == 1
    assert in_flight.close(timeout=0.1) is False  # still running: close says so after its timeout
    threading.Timer(0.2, release.set).start()
    assert in_flight.close(timeout=10) is True and ended and in_flight.running == 0
    with pytest.raises(ShuttingDown, match="shutting down"):
        with in_flight.work():
            pass
    thread.join()


def test_a_closed_studio_says_it_is_shutting_down(studio, owner):
    from demo.core.studio import ServiceError, Studio

    closed = Studio(studio.settings, encoder=studio.encoder, generator=studio.generator, store=studio.store,
                    plug=studio.plug)
    closed.in_flight.close()
    with pytest.raises(ServiceError, match="shutting down"):
        closed.compute_profile(owner, "late", ["A sentence of my writing."])


@pytest.mark.slow
def test_a_process_that_exits_while_a_history_is_encoded_exits_cleanly(tmp_path):
    """A request still encoding in a server thread at exit made torch abort the process (rc 134)."""
    code = ("import os, threading, time; from demo.core.settings import Settings; from demo.core.studio import Studio\n"
            "s = Studio(Settings.from_env({**os.environ, 'PPLUG_DB': os.environ['DB']}))\n"
            "texts = [f'Entry {i}: a long day of writing about gardens, trains and the sea. ' * 8 for i in range(96)]\n"
            "threading.Thread(target=s.encode, args=(texts,), daemon=True).start()\n"
            "while not s.in_flight.running: time.sleep(0.01)\n"
            "time.sleep(0.5)\n"
            "print('exiting mid-encoding', flush=True)\n")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "DB": str(tmp_path / "exit.db")})
    assert "exiting mid-encoding" in done.stdout, done.stderr[-2000:]
    assert done.returncode == 0 and "terminate called" not in done.stderr, done.stderr[-2000:]
