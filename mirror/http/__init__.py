"""The HTTP server: the composition root (app), routes, responses, middlewares, limits, TLS, worker
processes.
"""
