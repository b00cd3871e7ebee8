"""Orchestration over the pure core and the adapters: one method per OJS operation."""
