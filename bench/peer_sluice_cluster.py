"""sluice on quorum queues of the 3-node loopback cluster: the publisher entry point (see peer_sluice.py).

The variant ``sluice-quorum-cluster`` (bench/run.py) gives the worker and this publisher the three nodes'
URLs in SLUICE_AMQP_URL; each process connects to a node picked at random (shuffled per connection).
"""

from peer_sluice import main

if __name__ == "__main__":
    main()
