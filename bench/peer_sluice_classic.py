"""sluice on classic queues in the peer harness: the publisher entry point (see peer_sluice.py)."""

from peer_sluice import main

if __name__ == "__main__":
    main()
