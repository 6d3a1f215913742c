"""Measuring the agent on labelled tickets: `deskpilot eval` and `deskpilot calibrate`."""
