"""The benchmarks' one framework.

* `report`: results (machine facts, code state, duration, the JSON file, the summary), units,
  percentiles, process figures.
* `stack`: a local nats-server + etcd for one run (`hidsd.dev.devstack`), torn down on exit.
* `workers`: worker processes the coordinator drives over NATS (spawn, ready, one operation at a
  time, exit), and the worker side's operation table.
* `fleet`: N simulated agents in one worker, each a real `hidsd.agent.app.Agent` (its own
  services and policies, nothing copied) sharing one etcd channel and one event loop.
* `agentreports`: a simulated host's heartbeat and inventory record built by the agent's own
  `HeartbeatService`, breaker, pipeline and inventory plugin (load without N agents).
* `controllers`: real controller processes, asked through the wire verbs.
* `acks`: each host's first ack of a command, and the path (bus or etcd) that reached it.
* `heartbeats`: the coordinator's view of the fleet's heartbeats (each host's first one that
  shows a change, timed); `procs`: CPU time per process over a phase, what the workers logged,
  and a wait for a quiet machine.

A benchmark is a coordinator script (`benchmarks/NAME.py`) plus, if it simulates agents or
load, a worker script (`benchmarks/NAME_worker.py`) built from these parts.
"""
