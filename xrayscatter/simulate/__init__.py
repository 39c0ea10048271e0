"""The simulator: synthetic SAXS/WAXS detector images from physics, with their tags.

Pure numpy/scipy (no TensorFlow) so that worker processes start fast; only
``writer.py`` (TFRecords) and ``preview.py`` import heavier libraries.
"""
