"""hidsd-controller: presence registry, ack ledger and answers to hidsctl over NATS."""
