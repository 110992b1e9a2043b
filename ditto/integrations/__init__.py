"""Adapters that put the streaming server behind other frameworks' interfaces.

Each adapter has its own optional dependencies (and requirements file) and talks to a running
server over the documented protocol only: it imports :mod:`ditto.protocol`, :mod:`ditto.errors`
and :mod:`ditto.client.connection`, never the server, the backends or the media code.
"""
