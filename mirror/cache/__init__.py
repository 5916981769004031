"""Content-addressed storage tiers: hot (local disk), cold (object store), tiered (both)."""
