"""Work in flight at exit (``demo.core.inflight``): waited for, and new work refused with a message."""
import threading
import time

import pytest

from demo.core.inflight import InFlight, ShuttingDown

from apphelp import assert_exits_cleanly


def studio_sharing(studio, **settings):
    from demo.core.studio import Studio

    return Studio(studio.settings.with_(**settings), encoder=studio.encoder, generator=studio.generator,
                  store=studio.store, plug=studio.plug)


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
    from demo.core.studio import ServiceError

    closed = studio_sharing(studio)
    closed.in_flight.close()
    with pytest.raises(ServiceError, match="shutting down"):
        closed.compute_profile(owner, "late", ["A sentence of my writing."])


@pytest.mark.slow
def test_a_process_that_exits_while_a_history_is_encoded_and_the_loop_decodes_exits_cleanly(tmp_path):
    """Two ways torch aborted the process at exit (rc 134): a request still encoding in a server thread, and
    a decode step left running in the shared loop's thread. One process (a cold start costs ~20 s) with
    both under way when it exits."""
    assert_exits_cleanly(
        "embeds, mask = s.generator.embed([s.generator.fit_prompt('Write a long story.', 64)] * 4, [None] * 4)\n"
        "ticket = s.scheduler.submit(embeds, mask, GenerationParams(max_new_tokens=400))\n"
        "while s.scheduler.steps < 2: time.sleep(0.05)\n"
        "texts = [f'Entry {i}: a long day of writing about gardens, trains and the sea. ' * 8 for i in range(96)]\n"
        "threading.Thread(target=s.encode, args=(texts,), daemon=True).start()\n"
        "while not s.in_flight.running: time.sleep(0.01)\n"
        "time.sleep(0.5)\n"
        "assert s.scheduler.steps < 400, 'the loop finished before the exit'\n"
        "print('exiting mid-encoding and mid-decode', flush=True)\n", "exiting mid-encoding and mid-decode",
        tmp_path / "exit.db")


def test_decoding_inside_the_call_counts_as_work_in_flight(studio, owner):
    """On ZeroGPU the rows are decoded in the request's own thread: exit must wait for that too."""
    from demo.core.generation import GenerationParams

    inline = studio_sharing(studio, zero_gpu=True)
    profile = inline.compute_profile(owner, "inline", ["I bake bread on Sundays.", "Trains are my hobby."]).profile_id
    answers = inline.generate(owner, profile, "Say hello.", GenerationParams(max_new_tokens=4), log=False)
    next(answers)  # the first decoded step: the decoding is still running
    assert inline.in_flight.running == 1
    *_, last = answers
    assert last.done and inline.in_flight.running == 0
