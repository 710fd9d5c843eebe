"""The shared decode loop: requests join and leave between steps, answers do not depend on company,
a request that goes away leaves at the next step."""
import threading
import time

import pytest
import torch

from demo.core.generation import GenerationParams
from demo.core.scheduler import Scheduler


@pytest.fixture(scope="module")
def gen(studio):
    return studio.generator


def rows(gen, requests: list[str], soft: list) -> tuple[torch.Tensor, torch.Tensor]:
    return gen.embed([gen.prompt_ids(r) for r in requests], soft)


def final(ticket) -> list[str]:
    texts = []
    for texts in ticket:
        pass
    return texts


def wait_until(condition, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def requests_alone(gen):
    """Rows of different lengths, with and without soft tokens, sampled or greedy, and what each
    request generates alone (computed once for both batch sizes)."""
    d = gen.embedding.weight.shape[1]
    torch.manual_seed(0)
    soft = torch.randn(2, d) * 3.0
    long = ("Here are some texts I wrote before:\n- Espresso at dawn, again.\n- The rain never stops here.\n\n"
            "Write a tweet about coffee.")
    requests = [
        (rows(gen, ["Write a tweet about coffee."] * 2, [soft, None]), GenerationParams(max_new_tokens=16)),
        (rows(gen, [long, long], [None, soft]), GenerationParams(max_new_tokens=24)),
        (rows(gen, ["Answer with one word: what colour is the sky?"], [None]), GenerationParams(max_new_tokens=16)),
        (rows(gen, ["Describe your ideal Sunday."] * 2, [soft, None]),
         GenerationParams(max_new_tokens=12, temperature=0.9, top_p=0.9, seed=7)),  # sampled, seeded
    ]
    return requests, [gen.generate(embeds, mask, params) for (embeds, mask), params in requests]


# 64 rows: every request joins at once; 3 rows: requests also wait for others to leave
@pytest.mark.parametrize("max_rows", [64, pytest.param(3, marks=pytest.mark.slow)])
def test_answers_are_the_same_alone_and_batched(gen, requests_alone, max_rows):
    """Rows of different lengths, with and without soft tokens, joining at different steps (and, with
    3 rows at most, waiting for others to leave): each request gets what it gets alone."""
    requests, alone = requests_alone
    scheduler = Scheduler(gen, max_rows=max_rows)
    tickets = [scheduler.submit(*requests[0][0], requests[0][1]), scheduler.submit(*requests[1][0], requests[1][1])]
    wait_until(lambda: scheduler.steps >= 3)  # the others join a loop that is already running
    tickets += [scheduler.submit(*embeds_mask, params) for embeds_mask, params in requests[2:]]
    results = [None] * len(tickets)

    def read(i):
        results[i] = final(tickets[i])

    readers = [threading.Thread(target=read, args=(i,)) for i in range(len(tickets))]
    for t in readers:
        t.start()
    for t in readers:
        t.join(300)
    assert results == alone
    assert len(alone[2][0].split()) < 10 < len(alone[1][0].split())  # one short row, some long ones
    wait_until(lambda: scheduler.active == 0 and scheduler.batch.rows == 0)


def test_a_closed_request_leaves_at_the_next_step(gen):
    scheduler = Scheduler(gen, max_rows=8)
    fixed = GenerationParams(max_new_tokens=200, stop_at_eos=False)
    leaving = scheduler.submit(*rows(gen, ["Write a long story."] * 2, [None, None]), fixed)
    staying = scheduler.submit(*rows(gen, ["Write a tweet about coffee."], [None]), GenerationParams(max_new_tokens=12))
    stream = iter(leaving)
    next(stream), next(stream)
    stream.close()  # what Gradio does to a cancelled or disconnected event's generator
    steps = scheduler.steps
    wait_until(lambda: leaving.finished)
    assert leaving.cancelled and scheduler.steps <= steps + 2
    assert len(leaving.tokens[0]) < 10
    assert final(staying)[0]  # the other request goes on
    wait_until(lambda: scheduler.active == 0)


def test_a_failing_step_reaches_every_request_in_it(gen, monkeypatch):
    scheduler = Scheduler(gen, max_rows=8)
    ticket = scheduler.submit(*rows(gen, ["Write a tweet."], [None]),
                              GenerationParams(max_new_tokens=200, stop_at_eos=False))
    stream = iter(ticket)
    next(stream)

    def broken(**_):
        raise RuntimeError("device lost")

    monkeypatch.setattr(gen, "_forward", broken)
    with pytest.raises(RuntimeError, match="device lost"):
        for _ in stream:
            pass
    monkeypatch.undo()
    assert final(scheduler.submit(*rows(gen, ["Write a tweet."], [None]), GenerationParams(max_new_tokens=4)))[0]


def test_closing_the_loop_fails_its_requests_with_a_message_and_refuses_new_ones(gen):
    scheduler = Scheduler(gen, max_rows=8)
    running = scheduler.submit(*rows(gen, ["Write a long story about a lighthouse."], [None]),
                               GenerationParams(max_new_tokens=200))
    wait_until(lambda: scheduler.steps > 0)
    scheduler.close()
    assert not scheduler._thread.is_alive()
    assert running.finished and "shutting down" in str(running.error)
    late = scheduler.submit(*rows(gen, ["Hello."], [None]), GenerationParams(max_new_tokens=4))
    assert late.finished and "shutting down" in str(late.error)
