"""DeskPilot: the Litestar service, its settings, database access, workers and command line."""
