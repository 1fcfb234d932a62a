"""What a surface file says, for people: the status report and the surface's summary metrics."""
