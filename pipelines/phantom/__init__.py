"""Synthetic chest CT (and MRI) with labelled nodules, and nodule insertion into real CT, for tests and training."""
