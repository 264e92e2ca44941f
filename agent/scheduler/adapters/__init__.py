"""Edges to the outside world: the legacy cron table, Telegram, the service registry, telemetry."""
