"""The OJS HTTP binding: a small HTTP/1.1 server (server.py), routing, and the endpoints."""
