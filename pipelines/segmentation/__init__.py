"""Generic 3D CT/MRI segmentation (``lungscreen train-seg`` / ``segment``): plans, data, training, the engine."""
