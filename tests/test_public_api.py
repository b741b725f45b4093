"""The public API is exactly what ``agentcluster.__all__`` lists (as httpx checks its own)."""

from __future__ import annotations

import agentcluster

EXPECTED = {
    "Action",
    "ActionFailed",
    "ActionTimeout",
    "ActionValidationError",
    "Agent",
    "AgentClusterError",
    "AgentCrashed",
    "AgentExists",
    "AgentInfo",
    "AgentNotFound",
    "AgentState",
    "BusSensor",
    "CallCycle",
    "CallTimeout",
    "Capability",
    "ChildSpec",
    "Clock",
    "Context",
    "DeadLetter",
    "Directive",
    "IntervalSensor",
    "LocalNode",
    "MailboxFull",
    "ManualClock",
    "NoRoute",
    "ResourceSensor",
    "RestoreFailed",
    "RetryPolicy",
    "Sensor",
    "Signal",
    "SignalDecodeError",
    "SignalExpired",
    "SignalTooLarge",
    "Skill",
    "SystemClock",
    "Telemetry",
    "attach",
    "decode",
    "emit",
    "encode",
    "errors",
}


def test_all_is_sorted() -> None:
    assert agentcluster.__all__ == sorted(agentcluster.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(agentcluster.__all__) == len(set(agentcluster.__all__))


def test_every_name_in_all_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from agentcluster import *", namespace)
    for name in agentcluster.__all__:
        assert getattr(agentcluster, name, None) is not None, name
        assert namespace[name] is getattr(agentcluster, name)


def test_exported_members_are_the_expected_ones() -> None:
    assert set(agentcluster.__all__) == EXPECTED


def test_no_public_class_or_function_is_left_out_of_all() -> None:
    public = {
        name
        for name, value in vars(agentcluster).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("agentcluster")
    }
    assert public <= set(agentcluster.__all__)
