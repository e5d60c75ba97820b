"""Executors that run emo8's parallel stages on a cluster (Ray); imported only when chosen."""
