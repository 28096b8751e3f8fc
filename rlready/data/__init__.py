"""Data for every stage: the synthetic world, tokenizer, real-data sources, token shards and loaders.

Flow: documents (``world`` or ``sources``) -> ``tokenizer`` -> cached token shards (``shards``) ->
packed batches (``loader``).
"""
