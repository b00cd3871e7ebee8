"""The store ports are subsets of the `JobStore` protocol with the same names and
parameters (so store implementations need no adapter; return types may be wider, e.g. a
Sequence of a QueueInfo protocol), and the fakes implement the ports."""

from __future__ import annotations

import inspect

import pytest

from ojs_amqp.engine import ports
from ojs_amqp.store.base import JobStore
from ojs_amqp.testing import FakeScheduler, MemoryTransport

ROLES = [ports.JobRecords, ports.Outbox, ports.QueueRecords, ports.Housekeeping,
         ports.CronRecords]  # fmt: skip


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


@pytest.mark.parametrize("role", ROLES, ids=lambda r: r.__name__)
def test_each_store_role_is_a_subset_of_the_store_protocol(role: type) -> None:
    store = _methods(JobStore)
    for name, signature in _methods(role).items():
        assert name in store, f"{role.__name__}.{name} is not a JobStore method"
        theirs = store[name].replace(return_annotation=inspect.Signature.empty)
        ours = signature.replace(return_annotation=inspect.Signature.empty)
        assert str(ours) == str(theirs), f"{role.__name__}.{name} differs"


def test_the_fakes_have_every_method_of_their_ports() -> None:
    for port, fake in ((ports.JobTransport, MemoryTransport), (ports.Scheduler, FakeScheduler)):
        wanted = {n for n in vars(port) if not n.startswith("_")} - {"prefetch_hint", "connected"}
        missing = sorted(n for n in wanted if not callable(getattr(fake, n, None)))
        assert not missing, f"{fake.__name__} lacks {missing}"
