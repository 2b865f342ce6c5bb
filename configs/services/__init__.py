"""What a run starts beside its workers: Redis and the queues, the proxy store, and the lifeline."""
