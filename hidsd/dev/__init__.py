"""The local stack (real nats-server and etcd from the venv) and the demo."""
