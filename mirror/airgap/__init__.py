"""Filling a cache without clients: seeding, warm rules, bundles for air-gapped sites."""
