"""The main page's two charts as Gradio updates: one scale rule (y from 0 to a round number)."""
from __future__ import annotations

import math

import gradio as gr
import pandas as pd

from ..core.know_me import KnowMe
from ..core.studio import Comparison

KNOW_ME_LABELS = {"generic": "No plug", "stranger": "Plug + someone else's writing", "yours": "Plug + your writing"}


def axis_top(values: list[float]) -> float:
    """The y-axis top for bars of ``values`` (all >= 0): the next 1, 2 or 5 times a power of ten."""
    top = max([v for v in values if math.isfinite(v)] or [1.0])
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return next(step * power for step in (1, 2, 5, 10) if step * power >= top)


def weights_frame(result: Comparison) -> pd.DataFrame:
    """The items that weighed most: item label, weight in percent, the item's text."""
    return pd.DataFrame([{"item": f"#{t.position + 1}", "weight (%)": round(100 * t.weight, 1), "text": t.text}
                         for t in result.top_items], columns=["item", "weight (%)", "text"])


def weights_plot(frame: pd.DataFrame) -> gr.BarPlot:
    return gr.BarPlot(frame, y_lim=[0, axis_top(frame["weight (%)"].tolist())], visible=True)


def know_me_frame(result: KnowMe) -> pd.DataFrame:
    """Per-word likelihood of the held-back items under each condition (no plug = 100)."""
    return pd.DataFrame([{"condition": KNOW_ME_LABELS[k], "likelihood": round(v, 1)}
                         for k, v in result.relative_likelihood().items()])


def know_me_plot(result: KnowMe) -> gr.BarPlot:
    frame = know_me_frame(result)
    return gr.BarPlot(frame, y_lim=[0, axis_top(frame["likelihood"].tolist())], visible=True)
