"""The bus: protocol (pure), command signing, NATS transport and the etcd store adapter."""
