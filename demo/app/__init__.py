"""The Gradio app: the main page, the study pages, the API endpoints and visitor identity."""
