"""Real annotated nodules (LIDC-IDRI crops): the bank, pasting and insertion, density calibration, validation."""
