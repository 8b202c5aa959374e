"""Helpers of the LiverTumorSeg module and its "Liver Tumor AI" Segment Editor effect.

``runner``: the child-process runner (events, progress, ETA, cancel) and the in-process equivalent;
``segments``: label maps into segments and the index geometry of ROIs and slice ranges. Both import
without Slicer. ``SegmentEditorEffect.py`` is loaded by Slicer from its path (``setPythonSource``),
so it is deliberately not imported here: importing this package must not need Slicer.
"""
