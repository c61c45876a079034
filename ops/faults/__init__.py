"""The fault suite (``make faults``, ``python -m ops.faults``): each scenario of seed 004 §4.1
against a live system, checked for lost pages, double images and recovery time."""
