"""Where verified content lives: the index database, tag records, repository links, the hot disk tier,
the cold object-store tier, uploads between them.
"""
