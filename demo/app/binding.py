"""How the pages turn module-level handlers into Gradio event functions."""
from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import spaces

PRIVATE = dict(api_visibility="private")  # page events are not API endpoints (those are in api.py)


def bind(fn: Callable, *bound, gpu_seconds: int | None = None) -> Callable:
    """``fn(*bound, ...)`` as a handler of the remaining arguments, under ``fn``'s name.

    Handlers live at module level and take what they act on (the studio, a page's components)
    as their first arguments. Gradio reads the handler's signature and type hints to pass
    ``gr.Request``, ``gr.OAuthProfile`` and ``gr.Progress``, and streams generator functions, so
    the handler is a real function (a ``functools.partial`` would hide all three) with the bound
    parameters removed from its signature. ``gpu_seconds``: run under ``spaces.GPU`` (ZeroGPU)
    with that duration; the bound objects stay in this process, only the event's own arguments
    travel to the GPU worker.
    """
    if inspect.isgeneratorfunction(fn):
        def handler(*args, **kwargs):
            yield from fn(*bound, *args, **kwargs)
    else:
        def handler(*args, **kwargs):
            return fn(*bound, *args, **kwargs)
    functools.update_wrapper(handler, fn)
    signature = inspect.signature(fn, eval_str=True)
    parameters = list(signature.parameters.values())[len(bound):]
    handler.__signature__ = signature.replace(parameters=parameters)
    handler.__annotations__ = {p.name: p.annotation for p in parameters if p.annotation is not p.empty}
    del handler.__wrapped__  # so that nothing looks past the signature above to ``fn``'s
    return spaces.GPU(duration=gpu_seconds)(handler) if gpu_seconds else handler
