"""The framework-free pull-through service: manifest resolution, tag freshness and the stale policy,
tag lists and referrers.
"""
