"""Reference downstream receivers (docs/PROTOCOL.md §6.3): billing and utility control.

A school can run them as they are (`python -m switch.receivers.billing`,
`python -m switch.receivers.utility`) or read them as the integration guide;
docs/FORWARDING.md explains both.
"""
