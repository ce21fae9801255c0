"""The Starlette app: REST API, console page, WebSocket endpoints, forwarded headers."""
