"""Test harness: real processes (Redis, the server) and the Node socket.io-client driver."""
