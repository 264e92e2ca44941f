"""The ACTP agent packages."""
