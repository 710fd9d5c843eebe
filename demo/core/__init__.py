"""The serving core: settings, models, the plug, generation, history parsing, storage and the studio."""
