"""The Job service's rules, as plain functions with unit tests of their own."""
