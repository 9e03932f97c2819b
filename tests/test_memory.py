"""Lean memory with the same numbers: what the graphs keep, when gradients go, how the cohort
schedules clients that never meet the server (p2pgan.model.recompute, p2pgan.engine.cohort)."""

from __future__ import annotations

import pytest
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


ALLOCATOR_PROBE = """
import ctypes, ctypes.util, sys
import torch

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = Info
libc.mallopt(-3, 2**20)  # a 1 MiB mmap threshold, so that only the policy can raise it
from p2pgan.cli import main
assert main(["scenario", "validate", sys.argv[1]]) == 0
mapped = lambda: libc.mallinfo2().hblkhd
before = mapped()
per_client = torch.empty(8 * 2**20 // 4)  # a per-client activation's size: reused from the heap
assert mapped() == before, ("per-client block mapped on its own", mapped() - before)
batched = torch.empty(64 * 2**20 // 4)  # a server block's batch: mapped, returned when freed
assert mapped() >= before + 64 * 2**20, "batched block kept in the heap"
del batched
assert mapped() < before + 64 * 2**20, "batched block not returned"
print("ok")
"""


def test_the_command_line_maps_only_server_sized_blocks_on_their_own(repo_root):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "P2PGAN_MALLOC"}
    done = subprocess.run([sys.executable, "-c", ALLOCATOR_PROBE, str(repo_root / "scenarios" / "quick.yaml")],
                          capture_output=True, text=True, env=env, cwd=repo_root, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


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


def test_released_outputs_are_freed_and_refilled_with_the_same_gradients():
    from p2pgan.model.recompute import ReleasableOutputs

    torch.manual_seed(4)
    labels, z = torch.randint(0, 10, (BATCH,)), torch.randn(BATCH, SPEC.z_dim)
    lean, plain = build_initial_blocks(SPEC, seed=3), build_initial_blocks(SPEC, seed=3)
    names = GENERATOR.block_names
    outputs: list[torch.Tensor] = []
    for name in names[:-1]:  # every block's output leaves its own one-block segment: none is a recipe
        lean[name].register_forward_hook(lambda _m, _a, out: outputs.append(out))
    with ReleasableOutputs() as held:
        x = z
        for n in names:
            x = Segment({n: lean[n]})(x, labels)
    kept = outputs[1]
    assert held.release(keep=[kept]) > 0
    # The outputs' storage is gone until a backward reads them (g4 is Tanh: not a BatchNorm
    # output), but for the one the caller keeps reading.
    assert len(outputs) == len(names) - 1 and kept.untyped_storage().nbytes() > 0
    assert all(out.untyped_storage().nbytes() == 0 for out in outputs if out is not kept)
    kept_before = kept.clone()
    x.square().sum().backward()
    assert all(out.untyped_storage().nbytes() > 0 for out in outputs)
    assert torch.equal(kept, kept_before)
    y = z
    for n in names:
        y = plain[n](y, labels) if plain[n].needs_labels else plain[n](y)
    y.square().sum().backward()
    assert torch.equal(x, y)
    for key, grad in gradients({n: plain[n] for n in names}).items():
        assert torch.equal(gradients({n: lean[n] for n in names})[key], grad), key
    for n in names:  # running statistics updated once, as without the refill
        for key, value in plain[n].state_dict().items():
            assert torch.equal(lean[n].state_dict()[key], value), (n, key)


def test_a_released_output_refuses_a_step_before_its_refill():
    from p2pgan.model.recompute import ReleasableOutputs

    blocks = build_initial_blocks(SPEC, seed=3)
    with ReleasableOutputs() as held:
        loss = blocks["d2"](blocks["d1"](torch.randn(BATCH, SPEC.channels(64), 14, 14))).sum()
    held.release()  # d1's and d2's outputs: only autograd reads them from here on
    with torch.no_grad():
        blocks["d1"].body[1].weight.add_(1.0)
    try:
        loss.backward()
    except RuntimeError as exc:
        assert "changed between a forward and its backward" in str(exc)
    else:
        raise AssertionError("a changed BatchNorm weight went unnoticed")


def test_the_cohort_releases_g_forward_outputs_through_the_d_step():
    engine = cohort([ClientCut(0, 0, 0, 0), ClientCut(1, 1, 1, 1), ClientCut(1, 0, 0, 1)])
    g_out: list[torch.Tensor] = []
    engine.server_blocks["g2"].register_forward_hook(lambda _m, _a, out: g_out.append(out) if out.requires_grad else None)
    sizes_in_d_step = []
    d0 = engine.clients[0].blocks["d0"]
    d0.register_forward_pre_hook(lambda *_: sizes_in_d_step.append([t.untyped_storage().nbytes() for t in g_out]))
    engine.iteration(1, 0)
    # The server's batched g2 output (it leaves for g3 and for the clients holding g3) was freed
    # while D trained, and refilled for G's backward.
    assert g_out and sizes_in_d_step[0] == [0] * len(g_out)
    assert all(t.untyped_storage().nbytes() > 0 for t in g_out)


def node_pair(cuts: list[ClientCut], share: bool = True):
    import asyncio

    from p2pgan.engine.client import ClientNode
    from p2pgan.engine.server import ServerNode
    from p2pgan.ids import SERVER_ID
    from transports.memory import MemoryTransport

    torch.manual_seed(2)
    setup = NodeSetup(SPEC, profile_model(SPEC, batch=2), 11, 2e-3, (0.5, 0.999))
    plans = tuple(ClientPlan(f"c{i}", cut, 12) for i, cut in enumerate(cuts))
    plan = RunPlan(plans, Schedule(1, 1, 2, BATCH))
    data = {p.client_id: LocalData(torch.rand(12, 1, 28, 28) * 2 - 1, torch.randint(0, 10, (12,))) for p in plans}
    loop = asyncio.new_event_loop()

    async def start():
        endpoints = await MemoryTransport(receive_timeout_s=30, share=share).open([SERVER_ID, *plan.client_ids])
        bus = EventBus()
        return (ServerNode(setup, plan, SplitFedAvg(), 1, endpoints[SERVER_ID], bus, U_SHAPED),
                [ClientNode(setup, p, plan.schedule, data[p.client_id], endpoints[p.client_id], bus, U_SHAPED)
                 for p in plans])

    server, clients = loop.run_until_complete(start())

    def iterate(step: int) -> None:
        async def one():
            await asyncio.gather(server.iteration(1, step), *(c.iteration(1, step) for c in clients))
        loop.run_until_complete(one())

    return server, clients, iterate


def test_node_engine_adam_state_is_made_up_front_and_d_gets_no_gradient_from_the_g_step():
    server, clients, iterate = node_pair([ClientCut(1, 1, 1, 1), ClientCut(0, 0, 0, 0)])
    optimizers = [o for node in (server, *clients) for o in node._optimizers.values() if o is not None]
    assert all(len(o.state) == sum(len(g["params"]) for g in o.param_groups) for o in optimizers)
    d_params = [p for node in (server, *clients) for n, b in node.blocks.items() if n.startswith("d")
                for p in b.parameters()]
    at_g_step = []
    clients[0]._optimizers["G"].register_step_pre_hook(lambda *_: at_g_step.append([p.grad is None for p in d_params]))
    for step in range(2):
        iterate(step)
    assert at_g_step and all(all(flags) for flags in at_g_step)
    held = [p for node in (server, *clients) for b in node.blocks.values() for p in b.parameters()]
    assert all(p.grad is None for p in held)


def test_node_engine_lets_go_of_a_pass_once_its_backward_ran():
    server, clients, iterate = node_pair([ClientCut(1, 1, 1, 1), ClientCut(0, 0, 0, 0)])
    client = clients[0]
    uploads = watch_outputs({"d1": client.blocks["d1"]})["d1"]  # its D head's output on fake and on real
    server_out = watch_outputs({"d3": server.blocks["d3"]})["d3"]  # the server's batched D exits
    alive = {"client": [], "server": []}

    def at(node: str, refs: list[StorageWeakRef]):
        def hook(*_):
            if len(refs) == 2:  # the third D pass of the iteration (D on fake for the G step) starts
                alive[node].append([not ref.expired() for ref in refs])
        return hook

    client.blocks["d0"].register_forward_pre_hook(at("client", uploads))
    server.blocks["d2"].register_forward_pre_hook(at("server", server_out))
    iterate(0)
    # What D on fake and D on real held (the head's outputs, the server's batched outputs) is gone
    # before the G step's pass through D runs.
    assert alive == {"client": [[False, False]], "server": [[False, False]]}


def test_the_server_keeps_its_clustering_features_as_copies():
    server, clients, iterate = node_pair([ClientCut(1, 1, 1, 1), ClientCut(0, 0, 0, 0)])
    iterate(0)
    features = server._features
    assert set(features) == {c.node_id for c in clients}
    # Each its own storage, not a view of the whole batched block output.
    assert all(f.untyped_storage().nbytes() == f.numel() * f.element_size() for f in features.values())


@pytest.mark.parametrize("share", [False, True])
def test_node_engine_releases_g_forward_outputs_through_the_d_step_where_the_receiver_has_a_copy(share):
    """Over a transport that copies (a wire; the memory transport with ``share=False``) what G's
    forward sent is freed while D trains and refilled for G's backward. Where the receiver reads
    the sender's own storage (the memory transport) nothing sent is freed: it is the receiver's
    input, held once instead of twice."""
    server, clients, iterate = node_pair([ClientCut(1, 1, 1, 1), ClientCut(0, 0, 0, 0)], share)
    g_out: dict[str, list[torch.Tensor]] = {"server": [], "client": []}
    server.blocks["g2"].register_forward_hook(lambda _m, _a, out: g_out["server"].append(out))  # sent down
    clients[0].blocks["g1"].register_forward_hook(lambda _m, _a, out: g_out["client"].append(out))  # sent up
    in_d_step: dict[str, list[int]] = {}

    def sizes(node: str):
        def hook(*_) -> None:  # at the first D forward
            in_d_step.setdefault(node, [t.untyped_storage().nbytes() for t in g_out[node]])
        return hook

    server.blocks["d2"].register_forward_pre_hook(sizes("server"))
    clients[0].blocks["d0"].register_forward_pre_hook(sizes("client"))
    iterate(0)
    if share:
        assert all(n > 0 for sizes in in_d_step.values() for n in sizes) and set(in_d_step) == {"server", "client"}
    else:  # freed while D trains (the receiver had its copy), refilled for G's backward
        assert in_d_step == {"server": [0], "client": [0]}
    assert all(t.untyped_storage().nbytes() > 0 for ts in g_out.values() for t in ts)


def test_the_memory_transport_hands_over_activations_and_gradients_and_copies_parameters():
    """Activations and gradients arrive detached in the sender's storage (one copy held, not two);
    parameters and aggregates, which the sender goes on changing, arrive as copies; ``share=False``
    copies everything, as a wire does."""
    import asyncio

    from p2pgan.ids import SERVER_ID
    from p2pgan.protocol.messages import Message, MessageKind, Phase
    from transports.memory import MemoryTransport

    async def deliver(kind: MessageKind, share: bool) -> tuple[torch.Tensor, torch.Tensor]:
        transport = MemoryTransport(receive_timeout_s=5, share=share)
        endpoints = await transport.open(["c0", SERVER_ID])
        sent = torch.ones(3, 2, requires_grad=True) * 2
        msg = Message(kind, "c0", SERVER_ID, 1, 0, Phase.D_REAL, {"t": sent})
        await endpoints["c0"].send(msg)
        got = await endpoints[SERVER_ID].receive(msg.key)
        return sent, got.tensors["t"]

    for kind in (MessageKind.ACTIVATION, MessageKind.GRADIENT, MessageKind.PARAMS, MessageKind.AGGREGATE):
        for share in (True, False):
            sent, got = asyncio.run(deliver(kind, share))
            assert got.grad_fn is None and not got.requires_grad and torch.equal(got, sent)
            handed = share and kind in (MessageKind.ACTIVATION, MessageKind.GRADIENT)
            assert (got.untyped_storage().data_ptr() == sent.untyped_storage().data_ptr()) is handed, (kind, share)
