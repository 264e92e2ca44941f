"""The state machines: runs, schedule breakers and proposals, each one shared `transitions` Machine."""
