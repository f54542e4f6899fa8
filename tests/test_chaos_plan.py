"""The chaos run's plan: a seed names one sequence of actions and faults."""

from __future__ import annotations

from tests.support.chaos_plan import ALL_FAULTS, Fault, Role, make_plan, parse_faults
from tests.test_chaos import FAULTS, SECONDS, SEEDS


def test_a_seed_replays_the_same_actions_and_faults() -> None:
    assert make_plan(7, clients=12, instances=3, seconds=30) == make_plan(
        7, clients=12, instances=3, seconds=30
    )
    assert make_plan(7, clients=12) != make_plan(8, clients=12)


def test_every_client_has_work_and_the_roles_are_all_there() -> None:
    plan = make_plan(3, clients=10, instances=2, seconds=20)
    roles = {client.role for client in plan.clients}
    assert roles == set(Role)
    assert all(client.steps for client in plan.clients)
    codes = [client.code for client in plan.clients if client.role is Role.TRACKED]
    assert len(set(codes)) == len(codes)  # an app's code is its own


def test_the_ci_seeds_meet_every_kind_of_fault_they_are_given() -> None:
    given = parse_faults(FAULTS)
    met = {
        fault.fault
        for seed in SEEDS
        for fault in make_plan(seed, clients=10, instances=2, seconds=SECONDS, faults=given).faults
    }
    assert met == set(given)


def test_faults_are_named_as_on_the_command_line() -> None:
    assert parse_faults("all") == ALL_FAULTS
    assert parse_faults("none") == ()
    assert parse_faults("kill9,redis-stall") == (Fault.KILL, Fault.STALL)
