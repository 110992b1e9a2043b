"""The wire protocol: JSON control messages and binary frame messages. No I/O here."""
