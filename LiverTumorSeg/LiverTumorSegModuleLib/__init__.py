"""The LiverTumorSeg module's library (Slicer glue): parameters, widget, logic, install logic, catalogue view, the
job runner and the segment writer, one purpose per file, as SlicerNNUnet keeps its module file small. Nothing
here imports torch, numpy, SimpleITK or the cores at import time: Slicer imports the module at startup."""
