"""PPlug Studio: personal embeddings (PPlug) for a frozen LLM, shown side by side."""
