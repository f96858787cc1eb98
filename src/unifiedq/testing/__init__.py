"""Test support shipped with unifiedq.

* :mod:`unifiedq.testing.suite` — the conformance suite every driver runs. A driver's test
  file is a one-line subclass of :class:`QueueConformance` that says how to build its URL.
* :mod:`unifiedq.testing.plugin` — the pytest plugin (entry point ``pytest11``, loaded on
  install) that registers the suite's ``requires``/``lacks`` markers and checks their use.
* :mod:`unifiedq.testing.servers` — real Redis, RabbitMQ and Faktory servers on free loopback
  ports, started from installed binaries.
* :mod:`unifiedq.testing.fixtures` — pytest fixtures over those servers.
* :mod:`unifiedq.testing.toxiproxy` — a real Toxiproxy server and a typed client of its REST
  API, to put latency, stalls and connection resets between a client and a TCP server.
* :mod:`unifiedq.testing.faults` — driver-independent fault cases (a verb's deadline under a
  stall, a reset mid-reply, cancelled dequeues, shutdown release, broker restart and full
  backend ledgers), each returning a measured outcome; a third-party driver's tests call them.
* :mod:`unifiedq.testing.rabbitmq_cluster` — :class:`RabbitMQCluster`, a cluster of private
  RabbitMQ nodes on loopback (one cookie, one ``epmd``, joined with ``join_cluster``), and
  ``failover_run``, a producer/consumer ledger through a node's SIGKILL.
* :mod:`unifiedq.testing.cluster` — :class:`RedisClusterRig`, 3 masters and 3 replicas of
  ``redis-server --cluster-enabled yes`` on loopback (``redis-cli --cluster create``), with
  ``kill_master_of(queue)`` (waits for the promotion) and ``rejoin(node)``.
* :mod:`unifiedq.testing.sentinel` — :class:`RedisSentinelRig`, a master, a replica and
  three Sentinels on loopback, with ``fail_over()``.
* :mod:`unifiedq.testing.quic` — a real ``unifiedq serve`` process and a throwaway PKI (needs
  the ``quic`` extra).

Importing this package does not import pytest; the suite module does.
"""
