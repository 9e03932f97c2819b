"""Virtual time for p2pgan (docs/architecture.md; the latency model: docs/design.md §1.2).

* :mod:`~p2pgan.sim.topology`: device profiles, links, shared segments, profile assignment;
* :mod:`~p2pgan.sim.trace`: operations (computes and transfers with causal dependencies), from a
  real run's events or synthesised from a cut plan;
* :mod:`~p2pgan.sim.engine`: the SimPy model that prices a trace on a topology;
* :mod:`~p2pgan.sim.analytic`: the closed-form critical path of one iteration (the search objective);
* :mod:`~p2pgan.sim.search`: exact branch and bound and the reference GA over cut plans;
* :mod:`~p2pgan.sim.pricing`, :mod:`~p2pgan.sim.study`: plans, policies and what-if grids;
* :mod:`~p2pgan.sim.extension`: the run-loop hook that writes simulated latency to a results folder.

Submodules are imported where used; this package imports nothing on its own.
"""
