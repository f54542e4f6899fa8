"""All Is Well backend: the Socket.IO check-in protocol on aiohttp, persisted in Redis."""

__version__ = "1.0.0"
