"""Reports, one module per output format; pure functions of results."""
