"""The release: ``llmpi.__version__``, stamped into every surface file (attribute ``llmpi_version``) and shown by
the viewer. ``setup.cfg`` reads it from here; it lives this low so that the file layer can stamp it without
importing the package's front door."""

__version__ = "0.2.0"
