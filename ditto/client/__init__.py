"""The command-line client: connect, stream, receive frames, report statistics."""

LOGGER_NAME = "streaming_client"
"""Client lines are logged under the entry point's name (``INFO:streaming_client:...``)."""
