"""Getting content into the store once: single flight, the blob fetcher, prefetch, downloads shared
across worker processes.
"""
