"""Job kinds: typed parameters turned into calls of training/ and indexer/ code."""
