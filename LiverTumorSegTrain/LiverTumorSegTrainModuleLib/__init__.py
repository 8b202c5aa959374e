"""The training module's library (Slicer glue): its self-test, apart from the module file."""
