"""The split-learning engine: typed messages, client and server nodes, the run loop."""
