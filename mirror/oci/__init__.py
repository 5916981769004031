"""OCI distribution vocabulary: digests, names and references, media types, API paths, ranges, the
error tree. Pure: imports nothing else of mirror.
"""
