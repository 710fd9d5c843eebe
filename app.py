"""PPlug Studio: the Hugging Face Spaces entry point (``python app.py``).

Loads the models once, opens the database, and builds the Gradio app as ``demo``.
Configuration comes from ``PPLUG_*`` environment variables (see ``demo/core/settings.py``).
"""
import logging

from demo.app.ui import build_demo
from demo.core.settings import Settings, SettingsError
from demo.core.studio import Studio

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

try:
    settings = Settings.from_env()
except SettingsError as err:  # a mistyped variable: say which, without a traceback
    raise SystemExit(f"PPlug Studio cannot start: {err}") from None
studio = Studio(settings)
demo = build_demo(studio)

if __name__ == "__main__":
    # Gradio refuses bigger uploads before they reach the parser (which checks the same limit).
    demo.launch(max_file_size=int(settings.limits.max_upload_mb * 2**20))
