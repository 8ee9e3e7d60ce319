"""Runners: turn stored work units (tasks) into executions — in-process by default."""
