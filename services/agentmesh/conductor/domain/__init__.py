"""The Conductor's rules, as plain functions over plain values (no I/O)."""
