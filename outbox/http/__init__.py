"""HTTP adapters: the 360dialog API client and the daemon's own web server."""
