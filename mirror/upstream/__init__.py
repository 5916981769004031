"""Talking to upstream registries: auth (pure parsing + token cache) and the HTTP client."""
