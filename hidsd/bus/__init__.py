"""The adapters: NATS and JetStream (`transport`), etcd (`store`: the only module that imports
the etcd client). No policy here; the formats are in `hidsd.wire`."""
