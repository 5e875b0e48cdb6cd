"""`leptonctl`: the command line on top of every other layer."""
