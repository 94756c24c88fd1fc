"""``lungscreen bench``: our stages and end-to-end screening against the plain MONAI chain, one process per measure."""
