"""hidsctl: the operator's command-line tool."""
