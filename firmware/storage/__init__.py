"""On-flash storage: the ring buffer that keeps signed readings until acked."""
