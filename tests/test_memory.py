"""Lean memory with the same numbers: what the graphs keep, when gradients go, how the cohort
schedules clients that never meet the server (p2pgan.model.recompute, p2pgan.engine.cohort)."""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from p2pgan.bus import EventBus
from p2pgan.engine.batching import run_middle
from p2pgan.engine.cohort import CohortEngine
from p2pgan.engine.gradients import discarded_after_step
from p2pgan.model.blocks import DISCRIMINATOR, GENERATOR, NETWORKS, ModelSpec, build_initial_blocks
from p2pgan.model.costs import profile_model
from p2pgan.model.segments import ClientCut, Segment
from p2pgan.plan.nodedata import LocalData
from p2pgan.plan.program import U_SHAPED, Local, LocalAction, Program
from p2pgan.plan.run import ClientPlan, RunPlan, Schedule
from p2pgan.plan.setup import NodeSetup
from p2pgan.strategies.fedavg import SplitFedAvg

SPEC = ModelSpec(width=0.125, z_dim=8)
BATCH = 4


def watch_outputs(blocks: dict) -> dict[str, list[StorageWeakRef]]:
    """Per block, weak references to the storage of every output it produces."""
    seen: dict[str, list[StorageWeakRef]] = {name: [] for name in blocks}
    for name, block in blocks.items():
        block.register_forward_hook(lambda _m, _a, out, name=name: seen[name].append(StorageWeakRef(out.untyped_storage())))
    return seen


def gradients(blocks: dict) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": p.grad.clone() for n, b in blocks.items() for k, p in b.named_parameters()}


def test_a_segment_keeps_its_inner_outputs_as_recipes_with_the_same_gradients():
    torch.manual_seed(0)
    labels, z = torch.randint(0, 10, (BATCH,)), torch.randn(BATCH, SPEC.z_dim)
    lean, plain = build_initial_blocks(SPEC, seed=3), build_initial_blocks(SPEC, seed=3)
    names = GENERATOR.block_names
    seen = watch_outputs({n: lean[n] for n in names})
    out = Segment({n: lean[n] for n in names})(z, labels)
    # The graph is alive (out is), yet no inner block's output is held: g0..g3 keep x, not relu(bn(x)).
    assert all(refs[0].expired() for n, refs in seen.items() if n != names[-1])
    assert not seen[names[-1]][0].expired()
    out.square().sum().backward()
    x = z
    for n in names:  # the same blocks one call at a time: autograd keeps everything itself
        x = plain[n](x, labels) if plain[n].needs_labels else plain[n](x)
    x.square().sum().backward()
    lean_grads, plain_grads = gradients({n: lean[n] for n in names}), gradients({n: plain[n] for n in names})
    assert lean_grads.keys() == plain_grads.keys()
    for key in lean_grads:
        assert torch.equal(lean_grads[key], plain_grads[key]), key
    for n in names:  # running statistics updated once, as without recipes
        for key, value in plain[n].state_dict().items():
            assert torch.equal(lean[n].state_dict()[key], value), (n, key)


def test_a_step_between_forward_and_backward_is_refused():
    blocks = build_initial_blocks(SPEC, seed=3)
    out = Segment({n: blocks[n] for n in ("d1", "d2")})(torch.randn(BATCH, SPEC.channels(64), 14, 14))
    with torch.no_grad():
        blocks["d1"].body[1].weight.add_(1.0)
    try:
        out.sum().backward()
    except RuntimeError as exc:
        assert "changed between a forward and its backward" in str(exc)
    else:
        raise AssertionError("a changed BatchNorm weight went unnoticed")


def test_the_batched_middle_copies_no_input_and_equals_plain_concatenation():
    torch.manual_seed(1)
    lean, plain = build_initial_blocks(SPEC, seed=5), build_initial_blocks(SPEC, seed=5)
    names = ("g1", "g2", "g3")
    parts = {"a": names, "b": names[1:], "c": names}  # b joins at g2
    shapes = {"a": (3, 32, 7, 7), "b": (2, 16, 14, 14), "c": (4, 32, 7, 7)}
    leaves = {c: torch.randn(*s).requires_grad_(True) for c, s in shapes.items()}
    inputs: dict[str, list[StorageWeakRef]] = {n: [] for n in names}
    for n in names:
        lean[n].register_forward_pre_hook(lambda _m, args, n=n: inputs[n].append(StorageWeakRef(args[0].untyped_storage())))
    seen = watch_outputs({n: lean[n] for n in names})
    done = run_middle(lean, names, parts, leaves)
    # g3's users are g2's: it takes g2's output itself, no concatenated copy of its slices.
    assert inputs["g3"][0] == seen["g2"][0]
    # The graph is alive (done.flowing is), yet it holds neither the concatenation g2 ran on
    # (a's and c's g1 outputs with b's upload: kept as those pieces) nor g2's output (g3 takes
    # it whole: kept as its recipe).
    assert inputs["g2"][0].expired()
    assert seen["g2"][0].expired()
    grads = {c: torch.randn_like(t) for c, t in done.flowing.items()}
    torch.autograd.backward([done.flowing[c] for c in grads], [grads[c] for c in grads])
    # Plain PyTorch: concatenate, run, split, at every block.
    plain_leaves = {c: t.detach().clone().requires_grad_(True) for c, t in leaves.items()}
    flowing: dict[str, torch.Tensor] = {}
    for n in names:
        users = [c for c, part in parts.items() if n in part]
        ins = [flowing.get(c, plain_leaves[c]) for c in users]
        out = plain[n](torch.cat(ins))
        flowing.update(zip(users, out.split([x.shape[0] for x in ins])))
    torch.autograd.backward([flowing[c] for c in grads], [grads[c] for c in grads])
    for c in leaves:
        assert torch.equal(done.flowing[c], flowing[c]), c
        assert torch.equal(leaves[c].grad, plain_leaves[c].grad), c
    assert gradients({n: lean[n] for n in names}).keys() == gradients({n: plain[n] for n in names}).keys()
    for key, grad in gradients({n: plain[n] for n in names}).items():
        assert torch.equal(gradients({n: lean[n] for n in names})[key], grad), key


def cohort(cuts: list[ClientCut], full_local: bool = False) -> CohortEngine:
    torch.manual_seed(2)
    setup = NodeSetup(SPEC, profile_model(SPEC, batch=2), 11, 2e-3, (0.5, 0.999))
    plans = tuple(ClientPlan(f"c{i}", cut, 12, full_local=full_local) for i, cut in enumerate(cuts))
    data = {p.client_id: LocalData(torch.rand(12, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (12,))) for p in plans}
    return CohortEngine(setup, RunPlan(plans, Schedule(1, 1, 2, BATCH)), data, SplitFedAvg(), 1, U_SHAPED, EventBus())


def test_gradients_are_discarded_only_where_the_program_resets_them_before_the_next_step():
    assert discarded_after_step(U_SHAPED) == {"G", "D"}
    accumulating = Program("accumulating", (Local(LocalAction.STEP, GENERATOR), Local(LocalAction.ZERO_GRAD, DISCRIMINATOR),
                                            Local(LocalAction.STEP, DISCRIMINATOR)))
    assert discarded_after_step(accumulating) == {"D"}


def test_gradients_go_after_each_step_and_d_gets_none_from_the_g_step():
    engine = cohort([ClientCut(0, 0, 0, 0), ClientCut(1, 1, 1, 1), ClientCut(1, 0, 0, 1)])
    optimizers = engine.optimizers()
    assert optimizers and all(len(o.state) == sum(len(g["params"]) for g in o.param_groups) for o in optimizers)
    d_params = [p for c in engine.clients for p in c.params(DISCRIMINATOR)]
    d_params += [p for n, b in engine.server_blocks.items() if n in DISCRIMINATOR.block_names for p in b.parameters()]
    at_g_step = []
    g_optimizer = next(o for o in optimizers if any(p is q for g in o.param_groups for p in g["params"]
                                                    for q in engine.clients[0].params(GENERATOR)))
    g_optimizer.register_step_pre_hook(lambda *_: at_g_step.append([p.grad is None for p in d_params]))
    for step in range(2):
        engine.iteration(1, step)
    # The G step's pass back through D computed no D gradient (it would be discarded anyway) ...
    assert at_g_step and all(all(flags) for flags in at_g_step)
    # ... and between iterations no gradient is held.
    held = [p for c in engine.clients for net in NETWORKS for p in c.params(net)]
    held += [p for b in engine.server_blocks.values() for p in b.parameters()]
    assert all(p.grad is None for p in held)


def test_clients_that_never_meet_the_server_run_one_at_a_time():
    engine = cohort([ClientCut(1, 1, 1, 1)] * 3, full_local=True)
    # Each client's fake images (G's output, held until its iteration ends).
    seen = [watch_outputs({"g4": c.blocks["g4"]})["g4"] for c in engine.clients]
    alive_at_start = []
    for i, client in enumerate(engine.clients):
        client.blocks["g0"].register_forward_pre_hook(
            lambda *_, i=i: alive_at_start.append([not refs[-1].expired() for refs in seen[:i] if refs]))
    engine.iteration(1, 0)
    # When a client starts, what those before it held for their iteration is gone.
    assert len(alive_at_start) >= 3 and not any(any(flags) for flags in alive_at_start)


def test_the_allocator_can_be_left_lean():
    from p2pgan.runtime import keep_freed_memory

    assert keep_freed_memory({"P2PGAN_MALLOC": "lean"}) is False


def test_d_on_fake_is_back_propagated_before_d_on_real_runs():
    engine = cohort([ClientCut(1, 1, 1, 1), ClientCut(0, 0, 0, 0)])
    client = engine.clients[0]
    uploads = watch_outputs({"d1": client.blocks["d1"]})["d1"]  # its D head's output, sent to the server
    alive_at_real = []
    calls = []

    def at_d0(*_):
        calls.append(1)
        if len(calls) == 2:  # the second D pass of the iteration: on real
            alive_at_real.append(not uploads[0].expired())

    client.blocks["d0"].register_forward_pre_hook(at_d0)
    engine.iteration(1, 0)
    assert alive_at_real == [False]
