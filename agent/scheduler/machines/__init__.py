"""The state machines: runs, schedule breakers, proposals and outbox alerts, each one shared `transitions` Machine."""
