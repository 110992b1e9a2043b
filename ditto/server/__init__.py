"""The FastAPI/uvicorn server: one WebSocket session per client."""

LOGGER_NAME = "streaming_server"
"""Session lifecycle lines are logged under the entry point's name, as users see them
(``INFO:streaming_server:Client test_client connected``)."""
