"""The surface file and its grid: the one module that opens HDF5 (``store``), and writes a crash cannot tear."""
