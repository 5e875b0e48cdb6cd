"""Pure status computation: (resource, what was observed) -> status. No I/O, no clocks except `now`."""
