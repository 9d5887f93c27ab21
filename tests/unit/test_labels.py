"""Labels and selectors where they decide: a compute node's bidding, a requester's choice and its reasons,
the wire (labels from peers are checked on receipt) and the flags that set them."""

from __future__ import annotations

import pytest

from cli.daemon import build_node_config, node_labels
from cli.errors import CLIError
from cli.options import JobFlags
from cli.specs import build_spec
from compute.capacity import CapacityTracker
from compute.machine import ComputeMachine
from jobs import JobSpec, MalformedMessage, Resources
from jobs.messages import Announce, NodeInfo, SweepAnnounce, decode, encode
from jobs.selector import MAX_LABELS, MAX_LABELS_CHARS
from jobs.sweep import SweepSpec
from node.dispatch import MAX_NODE_INFO_BYTES, read_gossip
from requester.selection import can_ever_run, candidates, never_runnable, waiting_reason

BIG = Resources(cpu=4, memory="8GiB", disk="10GiB")
REQ = "req"


def spec(selector: str = "", **kw) -> JobSpec:
    return JobSpec.model_validate({"engine": {"name": "noop"}, "selector": selector, **kw})


def node(name: str, labels: dict[str, str] | None = None, engines: tuple[str, ...] = ("noop",)) -> NodeInfo:
    return NodeInfo(peer_id=name, engines=list(engines), max_per_job=BIG, total=BIG, free=BIG, labels=labels or {})


EU, US = node("eu", {"zone": "eu"}), node("us", {"zone": "us"})
EU_SPOT = node("eu-spot", {"zone": "eu", "spot": "true"})


# -- the compute node: nodes whose labels do not match never bid or claim ------------------------------------


def machine(labels: dict[str, str]) -> ComputeMachine:
    return ComputeMachine(node_id="n", capacity=CapacityTracker(BIG), engines=["noop"], labels=labels)


def test_a_node_whose_labels_do_not_match_passes_the_job_over_for_good():
    m = machine({"zone": "us"})
    assert m.refusal(spec("zone=eu")) == "this node's labels do not match selector 'zone=eu'"
    bidding, changes = m.announce(REQ, Announce(job_id="j-1", spec=spec("zone=eu"), requester=REQ), 1.0)
    assert not bidding and not changes.bids and not m.backlog  # not even kept for later
    assert m.capacity.free == BIG


def test_a_node_whose_labels_match_bids_and_a_job_without_a_selector_goes_to_any_node():
    for selector in ("zone=eu", "zone in (eu,us),!spot", ""):
        m = machine({"zone": "eu"})
        assert m.refusal(spec(selector)) is None
        bidding, changes = m.announce(REQ, Announce(job_id="j-1", spec=spec(selector), requester=REQ), 1.0)
        assert bidding and len(changes.bids) == 1
    assert machine({}).refusal(spec("!spot")) is None


def test_a_sweep_is_claimed_only_by_nodes_whose_labels_match_its_selector():
    ann = SweepAnnounce(sweep_id="s-1", spec=SweepSpec(job=spec("!spot"), grid={"x": ["1", "2"]}), requester=REQ,
                        pending=2)
    spot = machine({"spot": "true"})
    assert spot.announce_sweep(REQ, ann, 1.0) is None and not spot.claims and not spot.retry_waiting(2.0)
    assert machine({"zone": "eu"}).announce_sweep(REQ, ann, 1.0) is not None
    assert ann.spec.job_for(1).selector == "!spot"  # every index carries it


# -- the requester: whom to ask, and why a job cannot run --------------------------------------------------


def test_only_matching_nodes_can_run_a_job_or_are_asked_for_it():
    nodes = [EU, EU_SPOT, US]
    assert [n.peer_id for n in nodes if can_ever_run(spec("zone=eu,!spot"), n)] == ["eu"]
    assert candidates(spec("zone=eu"), nodes, needed=1) == ["eu", "eu-spot"]
    assert "1 of 3 known nodes can run it" in waiting_reason(spec("zone=us"), nodes, 0)


def test_a_selector_no_known_node_matches_makes_the_job_impossible_naming_it_and_the_labels_there_are():
    nodes = [EU, node("eu-2", {"zone": "eu"}), US, node("bare")]
    assert never_runnable(spec("gpu in (a100)"), nodes) == (
        "no known node matches selector 'gpu in (a100)' (4 nodes known: zone=eu (2); no labels; zone=us)")
    assert never_runnable(spec("zone=eu"), nodes) is None
    assert never_runnable(spec("zone=mars"), []) is None  # nothing known yet: no proof


def test_among_matching_nodes_the_other_reasons_say_the_selector_narrowed_them():
    nodes = [node("eu", {"zone": "eu"}), node("us-docker", {"zone": "us"}, engines=("docker",))]
    docker = JobSpec.model_validate({"engine": {"name": "docker", "image": "busybox"}, "selector": "zone=eu"})
    assert never_runnable(docker, nodes) == (
        "no compute node matching selector 'zone=eu' offers engine 'docker' (0 of 1 nodes)")
    assert never_runnable(spec(resources={"cpu": 64}), nodes) == ("0 of 2 nodes can offer 64 CPU per job "
                                                                  "(the most one offers: 4 CPU)")


def test_the_reason_lists_a_few_label_sets_each_cut_short():
    nodes = [node(f"n{i}", {f"k{i}": "v" * 63, **{f"x{j}": "y" * 63 for j in range(5)}}) for i in range(9)]
    reason = never_runnable(spec("zone=eu"), nodes)
    assert reason is not None and reason.endswith("; 4 more)") and len(reason) < 1000


# -- the wire: labels from peers are hostile input ------------------------------------------------------------


def info_bytes(labels: dict[str, str]) -> bytes:
    """Node info as a peer could send it: built without validation, as a hostile peer would."""
    return encode(NodeInfo.model_construct(peer_id="alice", max_per_job=BIG, total=BIG, free=BIG, labels=labels,
                                           addrs=[], engines=["noop"], running=0, backlog=0, boot=""))


@pytest.mark.parametrize(("labels", "why"), [
    ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, f"at most {MAX_LABELS}"),
    ({f"k{i}": "v" * 63 for i in range(MAX_LABELS_CHARS // 63)}, f"at most {MAX_LABELS_CHARS}"),
    ({"zone": "x" * 1000}, "label value"),
    ({"zone\n": "eu"}, "label key"),
    ({"zone": "eu'; DROP"}, "label value"),
])  # fmt: skip
def test_node_info_with_oversized_or_invalid_labels_is_refused_on_receipt(labels, why):
    data = info_bytes(labels)
    with pytest.raises(MalformedMessage, match="invalid message"):
        decode(data)
    with pytest.raises(MalformedMessage):
        read_gossip("alice", data)  # so the network's validator neither delivers nor forwards it
    with pytest.raises(ValueError, match=why):
        NodeInfo.model_validate_json(data)


def test_a_node_with_the_most_labels_allowed_still_fits_in_node_info():
    most = {f"k{i:02}": "v" * (MAX_LABELS_CHARS // MAX_LABELS - 3) for i in range(MAX_LABELS)}
    addrs = [f"/ip4/10.0.0.{i}/tcp/9700/p2p/12D3KooW{'a' * 44}" for i in range(16)]
    info = NodeInfo(peer_id="alice", addrs=addrs, engines=["noop", "docker", "wasm", "python"], max_per_job=BIG,
                    total=BIG, free=BIG, boot="b" * 32, labels=most)
    assert len(encode(info)) < MAX_NODE_INFO_BYTES
    assert read_gossip("alice", encode(info)).labels == most


# -- the flags ---------------------------------------------------------------------------------------------


def test_serve_label_flags_become_the_nodes_labels_and_a_bad_one_is_one_line():
    config = build_node_config(labels=["zone=eu", "gpu=a100"])
    assert dict(config.labels) == {"zone": "eu", "gpu": "a100"}
    assert dict(build_node_config().labels) == {}
    with pytest.raises(CLIError) as exc:
        build_node_config(labels=["zone=eu west"])
    assert list(exc.value.lines) == [
        "--label: label value 'eu west': at most 63 characters: letters, digits, '-', '_' or '.', starting and "
        "ending with a letter or digit (or empty)"]


def test_devstack_node_labels_are_read_per_node_index():
    assert node_labels(["0:zone=eu", "2:zone=us", "2:spot=true"], 3) == {0: {"zone": "eu"},
                                                                        2: {"zone": "us", "spot": "true"}}
    for bad, why in (("zone=eu", "expected I:KEY=VALUE"), ("3:zone=eu", "there is no node 3"),
                     ("x:zone=eu", "expected I:KEY=VALUE"), ("1:zone", "expected KEY=VALUE")):
        with pytest.raises(CLIError, match=why):
            node_labels([bad], 3)


def test_the_selector_flag_goes_into_the_spec_and_a_bad_one_names_the_flag_and_position():
    assert build_spec({"name": "noop"}, JobFlags(selector="zone=eu,!spot")).selector == "zone=eu,!spot"
    assert build_spec({"name": "noop"}, JobFlags()).selector == ""
    with pytest.raises(CLIError) as exc:
        build_spec({"name": "noop"}, JobFlags(selector="gpu in a100"))
    assert list(exc.value.lines) == [
        "selector (--selector): invalid selector 'gpu in a100': expected '(' and a list of values, found 'a100' at "
        "position 7"]
