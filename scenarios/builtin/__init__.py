"""The built-in scenarios; importing this package registers them."""

from scenarios.builtin import fleet_scenarios, rollout_scenarios, wire_scenarios  # noqa: F401
