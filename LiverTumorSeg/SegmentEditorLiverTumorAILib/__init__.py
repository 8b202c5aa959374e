"""The "Liver Tumor AI" Segment Editor effect (``SegmentEditorEffect.py``, loaded by Slicer from its path with
``setPythonSource``, so deliberately not imported here). Everything it uses beyond the effect itself lives in the
module's library, ``LiverTumorSegModuleLib``.
"""
