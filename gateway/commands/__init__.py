"""Operator commands of `ally-gateway`, one module per command group.

Each module has `add(sub)`, which registers its sub-parser and sets `run` to a
function `(settings, args) -> exit status`. Commands call the same functions as the
admin API (`gateway.users`); they never go through HTTP.
"""
